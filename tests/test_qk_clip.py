"""QK-clip (MuonClip, Kimi K2, arXiv 2507.20534): muonkit.qk_clip against hand computations
on a tiny attention (fused QKV rows per head, biases, RoPE), the hook after an optimizer step,
the GPT runs' logged max logits with and without ``--qk-clip`` at a high LR, and a 2-rank gloo
DDP and FSDP2 run against the single-process run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from example_scripts import load_example

from muonkit import QKClip, qk_clip_
from muonkit.distributed import spawn
from muonkit.qk_clip import clip_factors
from muonlab.models.gpt import GPT, CausalSelfAttention, GPTConfig, apply_rotary, rotary_tables

C, H, D, T = 8, 2, 4, 5  # n_embd, heads, head size, tokens


def attention(bias: bool = True, seed: int = 0) -> CausalSelfAttention:
    torch.manual_seed(seed)
    attn = CausalSelfAttention(GPTConfig(vocab_size=5, block_size=T, n_layer=1, n_head=H,
                                         n_embd=C, bias=bias))
    with torch.no_grad():
        attn.c_attn.weight.normal_(0, 1)
        if bias:
            attn.c_attn.bias.normal_(0, 1)
    return attn


def hand_logits(attn: CausalSelfAttention, x, rotary=None):
    """(B, H, T, T) pre-softmax logits from the rows of c_attn as the layout says by hand:
    head h's queries rows h*D..(h+1)*D, its keys C + h*D..; masked (j > i) entries -inf."""
    W, b = attn.c_attn.weight, attn.c_attn.bias
    out = []
    for h in range(H):
        q_rows, k_rows = slice(h * D, (h + 1) * D), slice(C + h * D, C + (h + 1) * D)
        q = x @ W[q_rows].T + (0 if b is None else b[q_rows])
        k = x @ W[k_rows].T + (0 if b is None else b[k_rows])
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        out.append(q @ k.transpose(-1, -2) / math.sqrt(D))
    s = torch.stack(out, dim=1)
    return s.masked_fill(torch.ones(T, T, dtype=torch.bool).tril().logical_not(), -math.inf)


def recorded_max(attn: CausalSelfAttention, x, rotary=None):
    attn.reset_max_logits()
    attn.record_max_logits = True
    with torch.no_grad():
        attn(x, rotary)
    return attn.max_logits.clone()


def test_clip_factors_touch_only_heads_above_tau():
    assert clip_factors(torch.tensor([2.0, 8.0, 4.0, -3.0]), 4.0).tolist() == [1, 0.5, 1, 1]
    with pytest.raises(ValueError, match="tau must be > 0"):
        clip_factors(torch.ones(2), 0.0)


@pytest.mark.parametrize("rope", [False, True], ids=["learned-positions", "rope"])
def test_fused_qkv_clip_matches_a_hand_computation(rope):
    """The recorded max is the hand computation's per head; clipping between the two heads'
    maxima makes the larger exactly tau (all its logits times gamma: RoPE rotates after the
    projection, a linear map, so it scales them the same), leaves the other head and the
    values alone, and scales the clipped head's q and k rows (weight and bias) by sqrt(gamma)."""
    attn = attention()
    x = torch.randn(2, T, C, generator=torch.Generator().manual_seed(1))
    rotary = rotary_tables(T, D, 10000.0) if rope else None
    with torch.no_grad():
        before = hand_logits(attn, x, rotary)
    maxima = before.amax(dim=(0, 2, 3))
    torch.testing.assert_close(recorded_max(attn, x, rotary), maxima)
    big = int(maxima.argmax())
    tau = float(maxima.min() + maxima.max()) / 2
    W0, b0 = attn.c_attn.weight.detach().clone(), attn.c_attn.bias.detach().clone()

    gamma = qk_clip_(attn.qk_rows(), maxima, tau)

    expected = torch.ones(H)
    expected[big] = tau / maxima[big]
    torch.testing.assert_close(gamma, expected)
    with torch.no_grad():
        after = hand_logits(attn, x, rotary)
    torch.testing.assert_close(after[:, big], before[:, big] * expected[big])
    assert torch.equal(after[:, 1 - big], before[:, 1 - big])
    assert recorded_max(attn, x, rotary)[big] == pytest.approx(tau, rel=1e-5)
    scale = torch.ones(3 * C)
    for offset in (0, C):  # the query rows, then the key rows, of the clipped head
        scale[offset + big * D : offset + (big + 1) * D] = math.sqrt(expected[big])
    torch.testing.assert_close(attn.c_attn.weight.detach(), W0 * scale[:, None])
    torch.testing.assert_close(attn.c_attn.bias.detach(), b0 * scale)
    assert torch.equal(attn.c_attn.weight[2 * C :], W0[2 * C :])  # the values: untouched


def test_lora_adapters_are_clipped_with_the_frozen_rows():
    """With LoRA on c_attn the queries are (W + s B A) x + b: the clip scales W's, b's and
    B's rows of the head, so its logits (the forward's own) are scaled as without LoRA."""
    from muonlab.models.lora import add_lora

    attn = attention()
    add_lora(attn, rank=2, alpha=2.0)
    with torch.no_grad():
        attn.c_attn.lora_B.normal_(0, 1)
    x = torch.randn(2, T, C, generator=torch.Generator().manual_seed(1))
    maxima = recorded_max(attn, x)
    big, tau = int(maxima.argmax()), float(maxima.min() + maxima.max()) / 2
    qk_clip_(attn.qk_rows(), maxima, tau)
    after = recorded_max(attn, x)
    assert after[big] == pytest.approx(tau, rel=1e-5) and after[1 - big] == maxima[1 - big]


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16,
                          bias=True))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.c_attn.weight.mul_(10)  # logits of order 1 from the start
    return model


def lm_step(model, ddp_model, opt, tokens) -> None:
    logits = ddp_model(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_the_hook_clips_after_each_step_by_the_max_the_step_saw():
    model = tiny_gpt()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    clip = QKClip(model, tau=1.0)
    clip.attach(opt)
    tokens = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(2))
    lm_step(model, model, opt, tokens)
    seen = clip.last_max_logits
    assert seen.shape == (2, 2) and float(seen.max()) > 1.0  # the step's forward exceeded tau
    assert all(block.attn.max_logits is None for block in model.blocks)  # cleared
    for block in model.blocks:  # the weights the step ended with: at most tau on those tokens
        block.attn.record_max_logits = True
    with torch.no_grad():
        model(tokens[:, :-1])
    for block in model.blocks:
        assert float(block.attn.max_logits.max()) <= 1.0 + 1e-5
    with pytest.raises(ValueError, match="no attention layer"):
        QKClip(torch.nn.Linear(2, 2), tau=1.0)


class SteppingThroughItsParent(torch.optim.SGD):
    def step(self, closure=None):
        return super().step(closure)


def test_a_step_that_runs_the_hooks_twice_clips_once():
    """torch runs the post-hooks of a subclass's step and of the parent's patched step it
    calls (DistributedMuonWithAuxAdam under DDP): the second call finds no new forward and
    does nothing, the step is not refused."""
    model, tokens = tiny_gpt(), torch.randint(0, 11, (4, 9), generator=torch.Generator())
    torch.optim.SGD(model.parameters(), lr=0.5)  # patches SGD.step, as a first build does
    opt = SteppingThroughItsParent(model.parameters(), lr=0.5)
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    clip = QKClip(model, tau=1.0)
    clip.attach(opt)
    lm_step(model, model, opt, tokens)
    assert len(calls) == 2 and clip.last_max_logits is not None


# --- the runs: logged max logits with and without --qk-clip at a high LR ---

TAU = 4.0
HIGH_LR = ["--steps", "12", "--eval-every", "4", "--eval-batches", "1", "--batch-size", "2",
           "--block-size", "16", "--muon-lr", "0.4", "--lr", "0.02", "--warmup", "0",
           "--no-progress", "--tracker", "none"]


def max_logit_records(out):
    lines = (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
    return [r for r in lines if r["kind"] == "max_logits"]


def test_qk_clip_keeps_the_logged_max_logit_near_tau_where_a_high_lr_exceeds_it(tmp_path):
    """examples/qk_clip.py (docs/results/qk_clip) on fewer steps: its two runs' records, and
    its figure drawn from them."""
    from muonlab.report.qk_clip import max_logit_curve

    figure = load_example("qk_clip").run(tmp_path, flags=HIGH_LR, tau=TAU)
    off, on = (max_logit_records(tmp_path / "runs" / name) for name in ("no-clip", "qk-clip"))
    assert [r["step"] for r in on] == [r["step"] for r in off] == [0, 4, 8, 12]
    assert all(len(r["layers"]) == 4 and r["max_logit"] == max(r["layers"]) for r in on + off)
    assert off[-1]["max_logit"] > 3 * TAU  # without the clip the max logit runs away
    # with it: tau plus one step's growth (the logged batch is not the one the step clipped by)
    assert all(r["max_logit"] <= 2 * TAU and r["tau"] == TAU for r in on)
    assert max(max(r["step_layers"]) for r in on[1:]) > TAU  # the clip had work to do
    config = json.loads((tmp_path / "runs" / "qk-clip" / "metrics.jsonl").read_text()
                        .splitlines()[0])
    assert config["config"]["qk_clip"] == TAU
    assert figure.stat().st_size > 0
    assert max_logit_curve(tmp_path / "runs" / "qk-clip" / "metrics.jsonl") == (
        [0, 4, 8, 12], [r["max_logit"] for r in on], TAU)


def test_qk_clip_flag_errors_are_one_line(capsys, tmp_path):
    from muonlab.cli import main

    for value in ("0", "-1", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", *HIGH_LR, "--qk-clip", value, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err and "--qk-clip" in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


# --- DDP and FSDP2 (2 gloo ranks) against one process on both ranks' batches ---

WORLD, STEPS, DIST_TAU = 2, 2, 1.0


def batches(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randint(0, 11, (2, 9), generator=g) for _ in range(STEPS)]


def dist_worker(rank: int, world: int, out_dir: str) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    for mode in ("ddp", "fsdp2"):
        model = tiny_gpt()
        wrapped = DDP(model) if mode == "ddp" else fully_shard(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        QKClip(model, DIST_TAU).attach(opt)
        for tokens in batches(rank):
            lm_step(model, wrapped, opt, tokens)
        state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                 for k, v in model.state_dict().items()}
        if rank == 0:
            torch.save(state, f"{out_dir}/{mode}.pt")


def test_ddp_and_fsdp2_clip_as_one_process_on_all_the_ranks_batches(tmp_path):
    single = tiny_gpt()
    opt = torch.optim.SGD(single.parameters(), lr=0.5)
    clip = QKClip(single, DIST_TAU)
    clip.attach(opt)
    first_rank_only = tiny_gpt()
    for block in first_rank_only.blocks:
        block.attn.record_max_logits = True
    with torch.no_grad():
        first_rank_only(batches(0)[0][:, :-1])
    for step, (a, b) in enumerate(zip(batches(0), batches(1), strict=True)):
        lm_step(single, single, opt, torch.cat([a, b]))
        if step == 0:  # rank 1's tokens set some head's max: a rank clipping alone would differ
            alone = torch.stack([blk.attn.max_logits for blk in first_rank_only.blocks])
            assert (clip.last_max_logits > DIST_TAU).any()
            assert not torch.equal(alone.clamp(min=DIST_TAU),
                                   clip.last_max_logits.clamp(min=DIST_TAU))
    spawn(dist_worker, WORLD, args=(str(tmp_path),), timeout_s=180)
    for mode in ("ddp", "fsdp2"):
        got = torch.load(tmp_path / f"{mode}.pt")
        for name, value in single.state_dict().items():
            torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-5, msg=mode + name)


# --- the studies: horizon and variants gpt carry --qk-clip to every run ---


class RecordingPool:
    """Stands in for a study's slot pool: keeps each run's train_gpt keywords, trains nothing."""

    def __init__(self):
        self.kwargs = []

    def run(self, priority, fn, spec, log):
        self.kwargs.append(spec.kwargs)
        return 1.0


@pytest.mark.parametrize("command", [["horizon"], ["variants", "gpt"]])
def test_studies_give_qk_clip_to_every_run_and_record_it_only_when_on(command, tmp_path):
    from muonlab.cli import build_parser
    from muonlab.cli.horizon import config_from_args as horizon_config
    from muonlab.cli.variants_gpt import config_from_args as variants_config
    from muonlab.experiments.horizon import Study

    to_config = horizon_config if command == ["horizon"] else variants_config
    out = ["--out", str(tmp_path)]
    cfg = to_config(build_parser().parse_args([*command, *out, "--qk-clip", "3"]))
    assert cfg.qk_clip == 3.0 and cfg.study()["qk_clip"] == 3.0
    # a study begun before the flag (no qk_clip in its study.json) continues without it
    assert "qk_clip" not in to_config(build_parser().parse_args([*command, *out])).study()
    study = Study(cfg)
    study.pool = RecordingPool()
    study.run(cfg.contenders[0], cfg.horizons[0], 0.01, 0, None, 0)
    assert study.pool.kwargs[0]["qk_clip"] == 3.0


def test_the_max_logit_figure_draws_both_muon_runs_in_muons_colour_the_clipped_one_dashed(
        tmp_path, monkeypatch):
    """Each line in its optimizer's palette colour (not matplotlib's cycle, which gave the
    second run muon-wd's orange), the clipped run dashed, and the title says one run each,
    which seed, no interval."""
    from matplotlib.colors import to_hex

    from muonlab.report import plots, qk_clip

    def metrics(name, tau):
        path = tmp_path / name / "metrics.jsonl"
        path.parent.mkdir()
        lines = [{"kind": "config", "optimizer": "muon", "seed": 3}] + [
            {"kind": "max_logits", "step": s, "max_logit": 1.0 + s, "tau": tau} for s in (0, 2)]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return path

    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path, title="", dpi=0: drawn.append(
        (fig, title)) or path)
    qk_clip.plot_max_logits({"no clip": metrics("off", None), "clip": metrics("on", 4.0)},
                            tmp_path / "f.png", "QK-clip")
    ((fig, title),) = drawn
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert [to_hex(lines[k].get_color()) for k in ("no clip", "clip")] == [plots.color("muon")] * 2
    assert lines["no clip"].get_linestyle() == "-" and lines["clip"].get_linestyle() == "--"
    assert lines["tau = 4 (the clip's bound)"].get_ydata()[0] == 4.0
    assert title == "QK-clip (one run each, seed 3, no interval)"
    assert ax.get_legend() is not None and ax.get_xlabel() and ax.get_ylabel()
    plots.plt.close(fig)
