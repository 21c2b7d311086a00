"""The lab's one config tree: every setting a ``muonkit`` command takes, declared once.

A :class:`Setting` says what a value is (its section of the tree: model, data, optimizer,
train, parallel or study), its type, default, bounds, choices and help. From these come

- the configs' fields: ``GPTRunConfig``, ``HorizonConfig``, ``StudyConfig``, ... declare a
  field with :func:`setting` (``steps: int = setting("steps")``), taking its default from here
  (a config whose default differs says so: ``setting("device", default="cpu")``);
- the configs' range checks: :func:`check_settings`, one message per bad value that names the
  flag (``--steps must be >= 1, got 0``), the same at the command line and in Python;
- the command-line flags (:func:`muonlab.cli.common.add_setting`: type, bounds, choices,
  default, help) and the generated pages ``docs/cli.md`` and ``docs/options.md``
  (:mod:`muonlab.cli.reference`).

Choices that a study owns (its contenders, its kinds) are added where the study declares the
field (``setting("contenders", choices=...)``), so the tree imports no experiment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from muonkit.registry import ADAMW, MUON, OPTIMIZER_NAMES, OPTIMIZERS, PARALLEL_MODES
from muonkit.schedules import DECAYS

from ..data.text import BUNDLED, TOKENIZERS
from ..models.gpt import PRESETS
from .checks import check_number, describe_range
from .config import DTYPES, RESUME_KEY
from .finetune import STATES, TASKS

# the AdamW groups --group-lrs tunes, and how a study's run directories label them
GROUP_LABELS = {"embedding": "emb", "head": "head", "vector": "vec"}
SECTIONS = ("model", "data", "optimizer", "train", "parallel", "study")
SETTING_KEY = "setting"  # dataclass field metadata: the field's Setting


@dataclass(frozen=True)
class Setting:
    """One setting. ``kind``: int, float, str or bool (an on/off flag; ``flag`` "--no-x" turns
    a default-on one off); ``bounds``: ``ge``/``gt``/``le``/``lt`` of
    :func:`muonlab.train.checks.check_number`; ``many``: a list of values (each checked);
    ``none_means``: what a None default stands for (shown as the default); ``loop``: the
    :class:`muonlab.train.config.TrainConfig` field a GPT run's value goes to; ``flag``: the
    flag when it is not ``--`` + the field name with dashes."""

    section: str
    help: str
    default: Any = None
    kind: type = str
    bounds: dict = field(default_factory=dict)
    choices: tuple | None = None
    many: bool = False
    none_means: str | None = None
    loop: str | None = None
    flag: str | None = None
    metavar: str | None = None

    def flag_of(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")

    def check(self, name: str, value) -> None:
        """ValueError naming the flag when ``value`` (each one when ``many``) is out of bounds
        or not one of the choices; None stands for the default and passes."""
        values = value if self.many and isinstance(value, (list, tuple)) else [value]
        if self.many and value is not None and not values:
            raise ValueError(f"{self.flag_of(name)} needs at least one value")
        for v in values:
            if v is None:
                continue
            if self.kind in (int, float):
                check_number(self.flag_of(name), v, integer=self.kind is int, **self.bounds)
            if self.choices is not None and v not in self.choices:
                raise ValueError(f"{self.flag_of(name)} must be one of "
                                 f"{', '.join(map(str, self.choices))}, got {v!r}")

    def describe_type(self) -> str:
        """``int >= 1``, ``float in [0, 1)``, ``one of a, b``, ``on/off``, ``text``."""
        if self.kind is bool:
            return "on/off"
        if self.choices is not None:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.kind in (int, float):
            text = f"{self.kind.__name__} {describe_range(**self.bounds)}"
        else:
            text = "text"
        return text + (", one or more" if self.many else "")


def show(value) -> str:
    """A default as help shows it: numbers rounded (``%g``), lists as Python writes them."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) if isinstance(v, float) else repr(v)
                               for v in value) + "]"
    return str(value)


def shown_default(s: Setting, default) -> str | None:
    """The default as help states it once (None for an on/off flag: its default is off)."""
    if s.kind is bool:
        return None
    if default is None:
        return s.none_means or "none"
    return show(default)


def _int(section, help, default=None, ge=None, **more) -> Setting:
    return Setting(section, help, default, int, {"ge": ge} if ge is not None else {}, **more)


def _float(section, help, default=None, **more) -> Setting:
    bounds = {k: more.pop(k) for k in ("ge", "gt", "le", "lt") if k in more}
    return Setting(section, help, default, float, bounds, **more)


def _flag(section, help, default=False, **more) -> Setting:
    return Setting(section, help, default, bool, **more)


MUON_FAMILY = "every Muon-family optimizer"
LOW_RANK = " or ".join(n for n, s in OPTIMIZERS.items() if s.takes_rank)

# The tree: every setting of every command, by the name of its config field. Settings with the
# same flag but another meaning (the MLP study's --lr) have their own key.
SETTINGS: dict[str, Setting] = {
    # model
    "preset": Setting("model", "GPT size", "tiny", choices=tuple(sorted(PRESETS))),
    "block_size": _int("model", "context length", ge=1, none_means="the preset's"),
    "dropout": _float("model", "dropout probability", ge=0, lt=1,
                      none_means="the preset's, 0"),
    "rope": _flag("model", "rotary instead of learned positions"),
    "untied": _flag("model", "separate lm_head and wte weights"),
    "lora_rank": _int("model", "train LoRA adapters of this rank on the attention and MLP "
                      "projections, the rest frozen (0: off); Muon or AdamW trains them as "
                      "--optimizer says", 0, ge=0),
    "lora_alpha": _float("model", "LoRA scale alpha (the update is alpha / rank * B A x)",
                         gt=0, none_means="the rank"),
    "hidden": _int("model", "hidden widths of the MLP", (256, 128), ge=1, many=True),
    # data
    "data": Setting("data", f"'{BUNDLED}' (bundled), a text file, or a dir with "
                    "train.bin/val.bin", BUNDLED),
    "tokenizer": Setting("data", "char-level, byte-level (UTF-8 bytes, 256 ids: reads any "
                         "text), or GPT-2 BPE via tiktoken (for text files)", "char",
                         choices=TOKENIZERS),
    "batch_size": _int("data", "sequences (MLP: examples) per micro-batch", 12, ge=1),
    "eval_batches": _int("data", "fixed val batches", 20, ge=1),
    "dataset": Setting("data", "dataset", "mnist"),
    "data_dir": Setting("data", "folder holding mnist/ or cifar-10-batches-py/",
                        none_means="$MUONKIT_DATA, else ./data"),
    "train_limit": _int("data", "use only the first N training examples", ge=1,
                        none_means="all"),
    "val_size": _int("data", "training examples held out to choose the LRs (tuned)", 10_000,
                     ge=1),
    "task": Setting("data", "train on a question-answering task's training problems "
                    "(instead of --data) and score greedy exact-match accuracy on its test "
                    "problems at step 0 and at the end (OUT/predictions.jsonl)", choices=TASKS),
    "task_data": Setting("data", "--task gsm8k: a directory with GSM8K's train.jsonl and "
                         "test.jsonl"),
    "task_seed": _int("data", "--task arithmetic: the seed of its fixed train/test split", 0,
                      ge=0),
    "task_train": _int("data", "training problems", 5000, ge=1),
    "task_test": _int("data", "test problems scored", 500, ge=1),
    "task_max_tokens": _int("data", "longest greedy answer, in tokens", 128, ge=1),
    "task_max_steps": _int("data", "--task arithmetic: most reasoning steps of a word problem",
                           4, ge=1),
    "task_max_number": _int("data", "--task arithmetic: largest starting or added amount "
                            "(multipliers and divisors stay in 2..5)", 50, ge=2),
    # optimizer
    "optimizer": Setting("optimizer", "optimizer", MUON, choices=OPTIMIZER_NAMES),
    "lr": _float("optimizer", "AdamW lr (the baseline, and the hybrid's AdamW groups)", 6e-4,
                 gt=0),
    "beta2": _float("optimizer", "AdamW beta2", 0.95, ge=0, lt=1),
    "weight_decay": _float("optimizer", "AdamW weight decay", 0.1, ge=0),
    "muon_lr": _float("optimizer", "Muon lr (hidden matrices)", 0.02, gt=0),
    **{f"{role}_lr": _float("optimizer", f"AdamW lr of the {what} (every optimizer)", gt=0,
                            none_means="--lr")
       for role, what in (("embedding", "embeddings"), ("head", "untied output head"),
                          ("vector", "vectors: norm gains and biases"))},
    "muon_momentum": _float("optimizer", "Muon momentum", 0.95, ge=0, lt=1,
                            loop="momentum_end"),
    "momentum_warmup": _int("optimizer", "Muon momentum 0.85 -> --muon-momentum over N "
                            "steps (0: off)", 300, ge=0),
    "muon_weight_decay": _float("optimizer", "Muon decoupled weight decay", 0.0, ge=0),
    "qkv_split": _flag("optimizer", "orthogonalize the fused QKV weight as 3 blocks"),
    "rank": _int("optimizer", f"rank of the low-rank momentum (--optimizer {LOW_RANK}; the "
                 "variant studies' LoRA-Pre arms)", 16, ge=1),
    "mlp_lr": _float("optimizer", f"LR of {MUON_FAMILY} (tuned: the centre of their grids)",
                     0.02, gt=0, flag="--lr"),
    "adamw_lr": _float("optimizer", "AdamW's LR (tuned: the centre of its grid)", gt=0,
                       none_means="1e-3, tuned 8e-3"),
    "momentum": _float("optimizer", f"momentum of {MUON_FAMILY}", 0.95, ge=0, lt=1),
    "qk_clip": _float("optimizer", "QK-clip (MuonClip, Kimi K2): after each step, scale the "
                      "query and key rows of every attention head whose max pre-softmax logit "
                      "exceeded TAU so that it is TAU", gt=0, none_means="off", metavar="TAU"),
    "state": Setting("optimizer", "optimizer state to start from: fresh (empty), carry (the "
                     "base's, same optimizer kind), from-adamw (Muon momentum from an AdamW "
                     "base's moments)", "fresh", choices=STATES),
    # train
    "steps": _int("train", "training steps", 2000, ge=1, loop="steps"),
    "epochs": _int("train", "training epochs", 3, ge=1),
    "grad_accum": _int("train", "micro-batches per step", 1, ge=1, loop="grad_accum"),
    "warmup": _int("train", "LR warmup steps", 100, ge=0, loop="warmup_steps"),
    "decay": Setting("train", "LR decay after warmup", "cosine", choices=DECAYS,
                     loop="decay"),
    "min_lr_ratio": _float("train", "final LR / peak LR", 0.1, ge=0, le=1,
                           loop="min_lr_ratio"),
    "grad_clip": _float("train", "max grad norm (0: off)", 1.0, ge=0, loop="grad_clip"),
    "eval_every": _int("train", "val loss every N steps (0: at the start and the end only)",
                       100, ge=0, loop="eval_every"),
    "device": Setting("train", "auto (cuda if available), cpu, cuda, cuda:N", "auto",
                      loop="device"),
    "dtype": Setting("train", "auto: bf16 autocast on CUDA, fp32 on CPU", "auto",
                     choices=tuple(sorted(DTYPES)), loop="dtype"),
    "compile": _flag("train", "torch.compile the model", loop="compile"),
    "peak_flops": _float("train", "device peak FLOP/s for MFU", gt=0,
                         none_means="known GPUs' bf16 peak, else no MFU", loop="peak_flops"),
    "progress": _flag("train", "no tqdm bar", True, flag="--no-progress", loop="progress"),
    "threads": _int("train", "torch intra-op threads per run (never the load, so a rerun "
                    "computes the same bits)", ge=1,
                    none_means="this machine's cores shared among the runs or ranks at once"),
    "base_steps": _int("train", "pretraining steps of each base", 600, ge=1),
    "seed": _int("train", "init and batch-order seed", 0, ge=0),
    "out": Setting("train", "output directory (a rerun of a study continues it)"),
    "overwrite": _flag("train", "replace what OUT already holds (a run: its metrics, "
                       "checkpoint, tb, wandb; a study: its runs, table and figure)"),
    "checkpoint_every": _int("train", "write OUT/ckpt.pt every N steps (0: never)", 0, ge=0),
    "sample": _int("train", "print N sampled tokens at the end", 0, ge=0),
    "init_from": Setting("train", "the base run's output directory (a finished run with a "
                         "checkpoint)"),
    # parallel
    "parallel": Setting("parallel", "under torchrun: DDP, FSDP2 or HSDP data parallelism "
                        "(gloo on CPU)", "none", choices=PARALLEL_MODES),
    "replicate": _int("parallel", "--parallel hsdp: replica groups (FSDP2 shards over W / N "
                      "ranks in each)", 1, ge=1),
    "jobs": _int("parallel", "runs at once", 1, ge=1),
    "isolate": _flag("parallel", "run in this process (no progress lines; peak memory is "
                     "then the max so far)", True, flag="--no-isolate"),
    # study
    "seeds": _int("study", "seeds (init and batch order; a tuned study's first one chooses "
                  "the LRs); every optimizer trains once per seed", (0, 1, 2), ge=0,
                  many=True),
    "optimizers": Setting("study", "optimizers to compare", (ADAMW, MUON),
                          choices=OPTIMIZER_NAMES, many=True),
    "contenders": Setting("study", "optimizer settings to compare", many=True),
    "horizons": _int("study", "steps per run", (250, 800, 2500), ge=1, many=True),
    "tokens_per_param": _float("study", "horizons as training tokens per model parameter, "
                               "e.g. 2,5,20,50,200 (steps = T x parameters / (batch x block "
                               "size))", gt=0, many=True, none_means="--horizons are the steps"),
    "tune_seed": _int("study", "the seed of the LR sweeps (not reported)", 0, ge=0,
                      none_means="the first of --seeds, also reported"),
    "plan": _flag("study", "print the runs and their estimated CPU time (a few steps of each "
                  "optimizer timed here), then stop; nothing is written"),
    "lr_sweep": _flag("study", "tune each optimizer's LR on shorter runs first"),
    "sweep_steps": _int("study", "steps of a sweep run", ge=1, none_means="--steps / 4"),
    "adamw_lrs": _float("study", "AdamW LR grid (factor-2 spaced)", (2.5e-3, 5e-3, 1e-2),
                        gt=0, many=True),
    "muon_lrs": _float("study", "the hybrid's Muon (matrix) LR grid (factor-2 spaced)",
                       (0.01, 0.02, 0.04), gt=0, many=True),
    "aux_lr": _float("study", "LR of the hybrid's AdamW groups", gt=0,
                     none_means="AdamW's, the swept one with --lr-sweep"),
    "aux_lrs": _float("study", "also sweep the aux LR over this grid (at the chosen Muon LR)",
                      gt=0, many=True, none_means="no aux sweep"),
    "sweep_extend": _int("study", "max points added past each edge of a grid when the best "
                         "LR sits there", 2, ge=0),
    "sweep_refine": _int("study", "refinement rounds once a sweep's best LR is inside its "
                         "grid: the best's neighbours at a factor sqrt(2), then 2^(1/4), ..., "
                         "the best of all points chosen; each sweep's note also gives a "
                         "quadratic fit in log-LR (information) (0: off)", 0, ge=0),
    "wd_grid": _float("study", "sweep each tuned Muon contender over LR x these values of its "
                      "muon_weight_decay (its own value replaced; an edge value is reported, "
                      "and extended only where the values are geometric)", ge=0, many=True,
                      none_means="each contender's own, not swept", metavar="W[,W...]"),
    "beta2_grid": _float("study", "sweep AdamW over LR x these values of its beta2 (an edge "
                         "value is reported, and extended below 1 only where the values are "
                         "geometric; the hybrids' AdamW groups keep 0.95)", ge=0, lt=1,
                         many=True, none_means="0.95, not swept", metavar="B[,B...]"),
    "group_lrs": Setting("study", "after each tuned contender's LR sweep, sweep the LR of "
                         "these AdamW groups one at a time, in this order (a multiplier of the "
                         "LR the group takes: AdamW's, or the hybrid's aux LR; a factor-2 grid "
                         "around 1, at later horizons around the last one's choice, edge-aware "
                         "and refined like the LR), the others at their "
                         "chosen multipliers", many=True, choices=tuple(GROUP_LABELS),
                         none_means="each group at the LR it takes, not swept"),
    "sweep_full_topk": _int("study", "rerun the best K settings at full length and choose "
                            "from those", 0, ge=0),
    "grid_points": _int("study", "factor-2 LR grid size (around the previous horizon's best)",
                        3, ge=1),
    "evals_per_run": _int("study", "val loss evaluations per run", 10, ge=1),
    "ranks": _int("study", "rank-sweep ranks", (4, 8, 16, 32, 64, 128), ge=1, many=True),
    "arms": Setting("study", "fine-tuning setups (adamw always runs: the hybrids take its LR)",
                    many=True),
    "report_seeds": _int("study", "seeds trained at each arm's chosen LR (the reported "
                         "results)", (1, 2, 3, 4, 5), ge=0, many=True),
    "base_adamw_lr": _float("study", "centre of the AdamW base's LR sweep", 4e-3, gt=0),
    "base_muon_lr": _float("study", "centre of the Muon base's LR sweep (its --muon-lr)", 0.02,
                           gt=0),
    "quick": _flag("study", "a minutes-long smoke study: a 1-layer model, few steps and "
                   "problems (its sizes replace those of the size flags left at their "
                   "defaults)"),
    "study": Setting("study", "which study"),
    "report_only": _flag("study", "only redraw the report of --out (other flags are ignored)"),
    "warmup_frac": _float("study", "LR warmup, a fraction of each run", 0.05, ge=0, le=1),
    "momentum_warmup_frac": _float("study", "Muon momentum warmup, a fraction of each run",
                                   0.15, ge=0, le=1),
}


def setting(key: str, *, default=dataclasses.MISSING, resume: str | None = None, **refine):
    """A config field declared by ``SETTINGS[key]``: its default (or ``default``), and the
    setting (``refine`` replaces some of its parts, e.g. a study's ``choices``) in the field's
    metadata; ``resume``: why ``--resume`` may change it
    (:func:`muonlab.train.config.may_differ_on_resume`)."""
    declared = dataclasses.replace(SETTINGS[key], **refine)
    if default is dataclasses.MISSING:
        default = declared.default
    metadata = {SETTING_KEY: declared, **({RESUME_KEY: resume} if resume else {})}
    if isinstance(default, (list, tuple)) and declared.many:
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def settings_of(config_class) -> dict[str, Setting]:
    """{field name: Setting} of the dataclass ``config_class``'s fields declared by
    :func:`setting`, in field order."""
    return {f.name: f.metadata[SETTING_KEY] for f in dataclasses.fields(config_class)
            if SETTING_KEY in f.metadata}


def check_settings(config) -> None:
    """Check every field of ``config`` declared by :func:`setting` (bounds, choices); the
    error names the flag."""
    for name, s in settings_of(type(config)).items():
        s.check(name, getattr(config, name))


def changed_from_default(config, names) -> list[str]:
    """The fields of ``names`` whose value in the dataclass ``config`` differs from the
    field's default (a flag given: a setting that may do nothing where it is given)."""
    fields = {f.name: f for f in dataclasses.fields(config)}

    def default(name: str):
        f = fields[name]
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    return [name for name in names if getattr(config, name) != default(name)]


def drop_unset(values: dict, unset: dict) -> dict:
    """``values`` without each setting of ``unset`` whose value is the one ``unset`` gives
    for it (what a study records only when given, so a study begun before the setting
    existed records, and continues, as it did)."""
    return {k: v for k, v in values.items() if not (k in unset and v == unset[k])}


def flag_names(config_class) -> dict[str, str]:
    """{field name: flag} of the fields whose flag is not ``--`` + their name, and
    {TrainConfig field: flag} of the loop settings they feed under another name: how a
    message names a recorded setting (:func:`muonlab.train.files.setting_name`)."""
    out = {}
    for name, s in settings_of(config_class).items():
        if s.flag:
            out[name] = s.flag
        if s.loop and s.loop != name:
            out[s.loop] = s.flag_of(name)
    return out
