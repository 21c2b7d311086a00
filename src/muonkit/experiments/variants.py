"""`muonkit variants <study>`: what the memory-saving Muon variants save, and what they cost.

An MLP classifier (:class:`muonkit.models.mlp.MLP`, no biases, so every parameter is a matrix
and each optimizer trains the whole model) is trained on MNIST or CIFAR-10 with several
optimizers ("arms"), each over several seeds. A study is nothing but its list of arms; one
runner trains them all with the one training loop (:mod:`muonkit.train`) and the report
module turns the metrics files into a table and a figure.

Studies:

* ``large``: AdamW (baseline), dense Muon, LoRAPreMuon (``--rank``), KroneckerMuon.
* ``equal-memory``: KroneckerMuon and LoRAPreMuon at the rank whose measured state is closest
  to Kronecker's (dense Muon as the reference).
* ``rank-sweep``: LoRAPreMuon at each of ``--ranks`` with KroneckerMuon and dense Muon as
  reference lines: final test accuracy against optimizer-state bytes.
* ``hybrid``: HybridKroneckerMuon (Kronecker momentum for the hidden layers, dense for the
  output layer) vs dense Muon vs LoRAPreMuon (``--rank``).

Every Muon-family arm shares ``--lr`` and ``--momentum``; AdamW has ``--adamw-lr``; all use
the loop's cosine LR decay to 10% and no gradient clipping. The table's state bytes are the
loop's measurement at the end of training (every tensor in ``optimizer.state``); each metrics
file also holds a ``state`` record with the bytes per parameter (the variants'
``state_bytes()``; tests check that both agree).

Outputs in ``--out``: ``runs/<NN>-<arm>-s<seed>/metrics.jsonl`` (the metrics files),
``table.md`` and ``<study>.png``.

Defaults are sized for a few minutes per study on 2 CPU cores (MNIST, 784 -> 256 -> 128 ->
10, 3 epochs, 2 seeds). Full-size settings (a GPU or a long CPU run):
``--dataset cifar10 --hidden 4096 2048 --epochs 20 --seeds 0 1 2`` and
``--dataset mnist --hidden 1024 512 --epochs 10 --seeds 0 1 2``.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..checks import check_number
from ..data.vision import ShuffledBatches, load_flat
from ..models.mlp import MLP
from ..muon import Muon
from ..report.metrics import mean_std, read_jsonl
from ..report.tables import fmt_bytes, markdown_table
from ..train import TrainConfig, train
from ..train import optimizer_state_bytes as train_optimizer_state_bytes

STUDIES = ("large", "equal-memory", "rank-sweep", "hybrid")
DATASETS = {"mnist": 784, "cifar10": 3072}
ARM_KINDS = ("adamw", "muon", "lora_pre", "kronecker", "hybrid_kronecker")


STUDY_BOUNDS = {  # numeric StudyConfig fields (lists: each value), None-valued ones skipped
    "hidden": dict(integer=True, ge=1),
    "epochs": dict(integer=True, ge=1),
    "batch_size": dict(integer=True, ge=1),
    "lr": dict(gt=0),
    "adamw_lr": dict(gt=0),
    "momentum": dict(ge=0, lt=1),
    "rank": dict(integer=True, ge=1),
    "ranks": dict(integer=True, ge=1),
    "seeds": dict(integer=True, ge=0),
    "train_limit": dict(integer=True, ge=1),
    "threads": dict(integer=True, ge=1),
}


def _values(value) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


@dataclass
class StudyConfig:
    """Settings of one study run (the CLI flags)."""

    study: str
    dataset: str = "mnist"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (256, 128)
    epochs: int = 3
    batch_size: int = 256
    lr: float = 0.02
    adamw_lr: float = 1e-3
    momentum: float = 0.95
    rank: int = 16
    ranks: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    seeds: tuple[int, ...] = (0, 1)
    train_limit: int | None = None
    device: str = "auto"
    threads: int | None = None
    out: str = ""

    def __post_init__(self):
        for name, valid in (("study", STUDIES), ("dataset", tuple(DATASETS))):
            if getattr(self, name) not in valid:
                raise ValueError(
                    f"{name} must be one of {list(valid)}, got {getattr(self, name)!r}"
                )
        if not self.seeds or not self.ranks or not self.hidden:
            raise ValueError("--seeds, --ranks and --hidden need at least one value")
        for name, bounds in STUDY_BOUNDS.items():
            for value in _values(getattr(self, name)):
                check_number(f"--{name.replace('_', '-')}", value, **bounds)
        self.hidden, self.ranks, self.seeds = (
            tuple(self.hidden),
            tuple(self.ranks),
            tuple(self.seeds),
        )
        self.out = self.out or f"runs/variants/{self.study}"


@dataclass(frozen=True)
class Arm:
    """One optimizer setting of a study."""

    label: str
    kind: str  # one of ARM_KINDS
    rank: int | None = None

    @property
    def slug(self) -> str:
        return self.kind + (f"-r{self.rank}" if self.rank is not None else "")


# ---------------------------------------------------------------------------------------------
# optimizers and their state
# ---------------------------------------------------------------------------------------------


def build_model(cfg: StudyConfig, seed: int) -> MLP:
    torch.manual_seed(seed)
    return MLP(DATASETS[cfg.dataset], cfg.hidden, 10, bias=False)


def build_optimizer(arm: Arm, model: nn.Module, cfg: StudyConfig) -> torch.optim.Optimizer:
    """The optimizer of ``arm`` over all of ``model``'s parameters."""
    params = list(model.parameters())
    if arm.kind == "adamw":
        return torch.optim.AdamW(params, lr=cfg.adamw_lr, weight_decay=0.0)
    if arm.kind == "muon":
        return Muon(params, lr=cfg.lr, momentum=cfg.momentum)
    from .. import variants

    if arm.kind == "lora_pre":
        return variants.LoRAPreMuon(params, lr=cfg.lr, momentum=cfg.momentum, rank=arm.rank)
    if arm.kind == "kronecker":
        return variants.KroneckerMuon(params, lr=cfg.lr, momentum=cfg.momentum)
    if arm.kind == "hybrid_kronecker":
        return variants.HybridKroneckerMuon(model, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"optimizer kind must be one of {list(ARM_KINDS)}, got {arm.kind!r}")


def per_param_state_bytes(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """{parameter name: state bytes}: the optimizer's ``state_bytes()`` (the variants; keys
    that are parameter indices are mapped to names), else the tensors in ``state[p]``."""
    if hasattr(optimizer, "state_bytes"):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        return {
            (names[id(params[k])] if isinstance(k, int) else str(k)): int(v)
            for k, v in optimizer.state_bytes().items()
        }
    return {
        names[id(p)]: sum(v.numel() * v.element_size() for v in s.values() if torch.is_tensor(v))
        for p, s in optimizer.state.items()
        if isinstance(p, torch.Tensor)
    }


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (the loop's measure, used in the tables)."""
    return train_optimizer_state_bytes([optimizer])


def measure_state_bytes(arm: Arm, model: nn.Module, cfg: StudyConfig) -> int:
    """State bytes of ``arm``'s optimizer after one step on random gradients (a copy of
    ``model`` is used; state shapes do not depend on the gradient values)."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer = build_optimizer(arm, model, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank clamping is reported by the real runs
        optimizer.step()
    return optimizer_state_bytes(optimizer)


def equal_memory_rank(model: nn.Module, cfg: StudyConfig) -> tuple[int, int, int]:
    """(rank, LoRA-Pre bytes, Kronecker bytes): the LoRA-Pre rank whose measured state is
    closest to KroneckerMuon's on ``model`` (ties go to the smaller rank; at least 1)."""
    target = measure_state_bytes(Arm("Kronecker", "kronecker"), model, cfg)
    max_rank = max(min(p.shape) for p in model.parameters())
    best = None
    for rank in range(1, max_rank + 1):  # state grows with the rank: stop once past the target
        size = measure_state_bytes(Arm("LoRA-Pre", "lora_pre", rank), model, cfg)
        if best is None or abs(size - target) < abs(best[1] - target):
            best = (rank, size)
        if size >= target:
            break
    return best[0], best[1], target


def study_arms(cfg: StudyConfig, model: nn.Module) -> list[Arm]:
    """The arms of ``cfg.study``. Every study has dense Muon (the reference for savings)."""
    muon, kron = Arm("Muon", "muon"), Arm("Kronecker", "kronecker")
    lora = Arm(f"LoRA-Pre r={cfg.rank}", "lora_pre", cfg.rank)
    if cfg.study == "large":
        return [Arm("AdamW", "adamw"), muon, lora, kron]
    if cfg.study == "equal-memory":
        rank, _, _ = equal_memory_rank(model, cfg)
        return [muon, kron, Arm(f"LoRA-Pre r={rank} (equal memory)", "lora_pre", rank)]
    if cfg.study == "rank-sweep":
        return [muon, kron] + [Arm(f"LoRA-Pre r={r}", "lora_pre", r) for r in cfg.ranks]
    return [muon, Arm("Hybrid Kronecker", "hybrid_kronecker"), lora]


# ---------------------------------------------------------------------------------------------
# training one arm
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096):
    """(accuracy, mean cross-entropy) of ``model`` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        logits = model(xb)
        correct += (logits.argmax(1) == yb).sum().item()
        loss += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
    model.train(was_training)
    return correct / len(x), loss / len(x)


def run_arm(arm: Arm, seed: int, cfg: StudyConfig, data: dict, out_dir: Path) -> Path:
    """Train one (arm, seed) with the training loop; returns its metrics file.

    The loop evaluates once per epoch; ``on_eval`` adds the epoch record (mean training loss
    of the epoch, train and test accuracy, training time of the epoch) and, at the end, a
    ``state`` record with the optimizer's state bytes per parameter.
    """
    model = build_model(cfg, seed)
    optimizer = build_optimizer(arm, model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    batches = ShuffledBatches(*data["train"], cfg.batch_size, seed)
    steps = cfg.epochs * batches.batches_per_epoch
    losses: list[torch.Tensor] = []
    last_elapsed = [0.0]

    def loss_fn(model, batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        if model.training:
            losses.append(loss.detach())
        return loss

    def evaluate(model):
        test_acc, test_loss = accuracy_and_loss(model, *data["test"])
        return {"val_loss": test_loss, "test_acc": test_acc}

    def on_eval(step: int, record: dict, logger) -> None:
        if step == 0:
            return
        train_acc, _ = accuracy_and_loss(model, *data["train"])
        logger.write(
            dict(
                kind="epoch",
                step=step,
                epoch=step // batches.batches_per_epoch,
                train_loss=torch.stack(losses).mean().item(),
                train_acc=train_acc,
                test_acc=record["test_acc"],
                epoch_time_s=record["elapsed_s"] - last_elapsed[0],
            )
        )
        losses.clear()
        last_elapsed[0] = record["elapsed_s"]
        if step == steps:
            logger.write(
                dict(kind="state", step=step, state_bytes=per_param_state_bytes(optimizer, names))
            )

    result = train(
        model,
        optimizer,
        batches,
        loss_fn,
        TrainConfig(
            steps=steps,
            eval_every=batches.batches_per_epoch,
            grad_clip=0.0,
            decay="cosine",
            min_lr_ratio=0.1,
            out_dir=str(out_dir),
            run_name=f"{arm.slug}-s{seed}",
            device=cfg.device,
            progress=False,
            tensorboard=False,
            seed=seed,
        ),
        evaluate=evaluate,
        on_eval=on_eval,
        optimizer_name=arm.label,
        run_config=dict(
            study=asdict(cfg),
            kind=arm.kind,
            rank=arm.rank,
            params=sum(p.numel() for p in model.parameters()),
        ),
    )
    return result.metrics_path


# ---------------------------------------------------------------------------------------------
# the study: run every arm and seed, then table + figure
# ---------------------------------------------------------------------------------------------


def run_study(cfg: StudyConfig, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Train every arm of ``cfg.study`` over every seed; write the metrics files, the table
    and the figure under ``cfg.out``. Returns {"table": path, "figure": path, "runs": dir}."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_flat(cfg.dataset, cfg.data_dir)
    if cfg.train_limit:
        data["train"] = tuple(t[: cfg.train_limit] for t in data["train"])
    out = Path(cfg.out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(runs_dir, ignore_errors=True)  # runs of an earlier call would mix in
    arms = study_arms(cfg, build_model(cfg, cfg.seeds[0]))
    for i, arm in enumerate(arms):
        for seed in cfg.seeds:
            log(f"[{cfg.study}] {arm.label} seed {seed}")
            run_arm(arm, seed, cfg, data, runs_dir / f"{i:02d}-{arm.slug}-s{seed}")
    return write_report(out, cfg.study)


def load_runs(paths) -> list[dict]:
    """Each metrics file as {"config": rec, "train": [...], "epoch": [...], "summary": rec}."""
    runs = []
    for path in paths:
        run: dict = {"train": [], "epoch": [], "val": []}
        for rec in read_jsonl(path):
            if rec["kind"] in ("config", "summary"):
                run[rec["kind"]] = rec
            else:
                run.setdefault(rec["kind"], []).append(rec)
        runs.append(run)
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    """One row per optimizer (arm), in the order the runs first name them: state bytes, savings
    vs dense Muon, final train loss and test accuracy (mean, std over seeds), time per epoch."""
    by_arm: dict[str, list[dict]] = {}
    for run in runs:
        by_arm.setdefault(run["config"]["optimizer"], []).append(run)
    rows = []
    for label, group in by_arm.items():
        last = [r["epoch"][-1] for r in group]
        acc, acc_std = mean_std([e["test_acc"] for e in last])
        loss, loss_std = mean_std([e["train_loss"] for e in last])
        rows.append(
            dict(
                optimizer=label,
                kind=group[0]["config"]["config"]["kind"],
                rank=group[0]["config"]["config"]["rank"],
                seeds=len(group),
                state_bytes=group[0]["summary"]["optimizer_state_bytes"],
                test_acc=acc,
                test_acc_std=acc_std,
                train_loss=loss,
                train_loss_std=loss_std,
                train_acc=mean_std([e["train_acc"] for e in last])[0],
                epoch_time_s=mean_std([e["epoch_time_s"] for r in group for e in r["epoch"]])[0],
            )
        )
    dense = next((r["state_bytes"] for r in rows if r["kind"] == "muon"), None)
    for row in rows:
        row["savings"] = None if not dense else 1 - row["state_bytes"] / dense
    return rows


def markdown_rows(rows: list[dict]) -> str:
    """The study table: one row per optimizer (see :func:`summarize`)."""
    cells = []
    for r in rows:
        if r["savings"] is None:
            savings = "n/a"
        elif r["savings"] < 1:
            savings = f"{100 * r['savings']:.1f}% ({1 / (1 - r['savings']):.1f}x less)"
        else:
            savings = "100%"
        cells.append(
            [
                r["optimizer"],
                f"{r['state_bytes']} ({fmt_bytes(r['state_bytes'])})",
                savings,
                f"{r['train_loss']:.4f}",
                f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_std']:.2f}",
                r["seeds"],
                f"{r['epoch_time_s']:.2f}",
            ]
        )
    headers = [
        "optimizer",
        "state bytes",
        "savings vs dense Muon",
        "final train loss",
        "final test acc % (mean ± std)",
        "seeds",
        "time / epoch (s)",
    ]
    return markdown_table(headers, cells)


def table_caption(runs: list[dict]) -> str:
    """What the table's numbers are, from the runs' own config and summary records."""
    study = runs[0]["config"]["config"]["study"]
    epochs = runs[0]["epoch"][-1]["epoch"]
    sizes = " -> ".join(str(n) for n in (DATASETS[study["dataset"]], *study["hidden"], 10))
    devices = sorted({r["summary"]["device"] for r in runs})
    return (
        f"{study['dataset']}, MLP {sizes} (no biases), {epochs} epochs, batch "
        f"{study['batch_size']}, Muon-family lr {study['lr']} momentum {study['momentum']}, "
        f"AdamW lr {study['adamw_lr']}; cosine decay to 10%. Final = after epoch {epochs}; "
        f"test accuracy: mean ± sample std over seeds. State bytes: every tensor in the "
        f"optimizer's state after training. Time per epoch: training steps only (evaluation "
        f"excluded), mean over epochs and seeds, on {', '.join(devices)}. {timing_note(runs)}"
    )


def timing_note(runs: list[dict]) -> str:
    """Threads, 1-minute load range and CPU timing flags, from the runs' summary records."""
    summaries = [r["summary"] for r in runs]
    threads = sorted({s["threads"] for s in summaries})
    loads = [s[k] for s in summaries for k in ("load_1min_start", "load_1min_end")]
    loads = [x for x in loads if x is not None]
    flags = sorted({f for s in summaries for f in s["cpu_flags"]})
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "unknown"
    return (
        f"Torch threads: {', '.join(map(str, threads))}; 1-minute load average during the runs: "
        f"{load}; CPU timing flags: {', '.join(flags) or 'none'}."
    )


def write_report(out: Path, study: str) -> dict[str, Path]:
    """Table and figure of the metrics files in ``out/runs``."""
    runs = load_runs(sorted((out / "runs").glob("*/metrics.jsonl")))
    rows = summarize(runs)
    (out / "table.md").write_text(markdown_rows(rows) + "\n" + table_caption(runs) + "\n")
    figure = out / f"{study}.png"
    if study == "rank-sweep":
        plot_memory_tradeoff(rows, figure, title=study)
    else:
        plot_curves(runs, rows, figure, title=study)
    return {"table": out / "table.md", "figure": figure, "runs": out / "runs"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: list[dict], rows: list[dict], path: Path, title: str) -> None:
    """Four panels: training loss per step (smoothed), train and test accuracy per epoch
    (mean over seeds, shaded +- std), optimizer-state memory per optimizer."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colors = {r["optimizer"]: f"C{i}" for i, r in enumerate(rows)}
    for row in rows:
        group = [r for r in runs if r["config"]["optimizer"] == row["optimizer"]]
        c = colors[row["optimizer"]]
        losses = torch.tensor([[t["loss"] for t in r["train"]] for r in group]).mean(0)
        steps_per_epoch = len(group[0]["train"]) / len(group[0]["epoch"])
        window = max(1, int(steps_per_epoch // 10))
        smooth = losses.unfold(0, window, 1).mean(1) if len(losses) >= window else losses
        x = (torch.arange(len(smooth)) + window) / steps_per_epoch
        axes[0, 0].plot(x, smooth, color=c, label=row["optimizer"])
        for ax, key in ((axes[0, 1], "train_acc"), (axes[1, 0], "test_acc")):
            vals = torch.tensor([[100 * e[key] for e in r["epoch"]] for r in group])
            epochs = [e["epoch"] for e in group[0]["epoch"]]
            mean = vals.mean(0)
            std = vals.std(0) if len(group) > 1 else torch.zeros_like(mean)
            ax.plot(epochs, mean, "o-", color=c, label=row["optimizer"])
            ax.fill_between(epochs, mean - std, mean + std, color=c, alpha=0.2)
    axes[0, 0].set(
        title="training loss (moving average)", xlabel="epoch", ylabel="loss", yscale="log"
    )
    axes[0, 1].set(title="train accuracy", xlabel="epoch", ylabel="%")
    axes[1, 0].set(title="test accuracy", xlabel="epoch", ylabel="%")
    names = [r["optimizer"] for r in rows]
    sizes = [r["state_bytes"] / 1024 for r in rows]
    bars = axes[1, 1].barh(names, sizes, color=[colors[n] for n in names])
    axes[1, 1].bar_label(bars, labels=[fmt_bytes(r["state_bytes"]) for r in rows], padding=3)
    axes[1, 1].set(title="optimizer state", xlabel="KiB (log)", xscale="log")
    axes[1, 1].invert_yaxis()
    axes[1, 1].set_xlim(right=max(sizes) * 8)
    for ax in axes.flat[:3]:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory_tradeoff(rows: list[dict], path: Path, title: str) -> None:
    """Final test accuracy and train loss against optimizer-state bytes: the LoRA-Pre ranks
    as a curve, every other optimizer as a marked point and a dashed reference line."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    lora = [r for r in rows if r["kind"] == "lora_pre"]
    others = [r for r in rows if r["kind"] != "lora_pre"]
    for ax, key, std_key, scale, label in (
        (axes[0], "test_acc", "test_acc_std", 100, "final test accuracy (%)"),
        (axes[1], "train_loss", "train_loss_std", 1, "final-epoch train loss"),
    ):
        xs = [r["state_bytes"] / 1024 for r in lora]
        ys = [scale * r[key] for r in lora]
        ax.errorbar(
            xs,
            ys,
            yerr=[scale * r[std_key] for r in lora],
            fmt="o-",
            color="C2",
            capsize=3,
            label="LoRA-Pre",
        )
        for r, x, y in zip(lora, xs, ys):
            ax.annotate(
                f"r={r['rank']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        for i, r in enumerate(others):
            c = ("C0", "C1", "C3", "C4")[i % 4]
            ax.axhline(scale * r[key], color=c, ls="--", lw=1)
            ax.errorbar(
                [r["state_bytes"] / 1024],
                [scale * r[key]],
                yerr=[scale * r[std_key]],
                fmt="s",
                color=c,
                capsize=3,
                label=r["optimizer"],
            )
        ax.set(xscale="log", xlabel="optimizer state (KiB, log)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
