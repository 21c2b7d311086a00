"""The memory-saving variants as the Muon part of the GPT hybrid (``lorapre``, ``kronecker``,
``kronecker-hybrid``), their state bytes, and the GPT variant study."""

import copy
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from muonkit.hybrid import param_roles
from muonkit.variants import (
    KroneckerMuon,
    KroneckerMuonWithAuxAdam,
    LoRAPreMuon,
    LoRAPreMuonWithAuxAdam,
    kronecker_shapes,
)
from muonlab.cli import main
from muonlab.experiments import horizon
from muonlab.experiments.horizon import HorizonConfig, Study, prepare_out
from muonlab.experiments.runs import run_in_process
from muonlab.experiments.sweep import factor_grid
from muonlab.experiments.variants_gpt import CONTENDERS as VARIANTS
from muonlab.experiments.variants_gpt import VariantGPTConfig
from muonlab.models.gpt import GPT, preset_config
from muonlab.report.metrics import load_run, read_jsonl
from muonlab.report.provenance import ns_label
from muonlab.report.tables import fmt_bytes
from muonlab.train.gpt import gpt_optimizer, train_gpt
from muonlab.train.loop import METRICS, TrainConfig
from muonlab.train.measure import muon_state_bytes, optimizer_state_bytes

VOCAB = 11
OPTS = dict(lr=3e-3, muon_lr=0.03, weight_decay=0.1, betas=(0.9, 0.95))


def tiny_gpt(seed=0, n_layer=2):
    torch.manual_seed(seed)
    return GPT(preset_config("tiny", vocab_size=VOCAB, n_layer=n_layer, n_embd=16, n_head=2,
                             block_size=8))


def set_grads(model, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def reference(model, kind, rank=None):
    """The variant alone on the hidden matrices plus torch's AdamW on the rest (weight decay
    on the embedding, none on vectors): what the hybrid must do."""
    roles = param_roles(model)
    named = dict(model.named_parameters())
    muon = [named[n] for n, r in roles.items() if r == "muon"]
    common = dict(lr=OPTS["muon_lr"], momentum=0.95)
    if kind == "lorapre":
        variant = LoRAPreMuon(muon, rank=rank, **common)
    else:
        last = set(map(id, model.blocks[-1].parameters())) if kind == "kronecker-hybrid" else ()
        variant = KroneckerMuon(muon, dense=[p for p in muon if id(p) in last], **common)
    adamw = torch.optim.AdamW(
        [{"params": [named[n] for n, r in roles.items() if r == "embedding"]},
         {"params": [named[n] for n, r in roles.items() if r == "vector"], "weight_decay": 0.0}],
        lr=OPTS["lr"], betas=OPTS["betas"], weight_decay=OPTS["weight_decay"])
    return variant, adamw


@pytest.mark.parametrize("kind,rank", [("lorapre", 3), ("kronecker", None),
                                       ("kronecker-hybrid", None)])
def test_variant_hybrid_is_the_variant_plus_adamw(kind, rank):
    model, ref_model = tiny_gpt(), tiny_gpt()
    extra = {"rank": rank} if rank else {}
    opt = gpt_optimizer(model, kind, **OPTS, **extra)
    variant, adamw = reference(ref_model, kind, rank)
    for step in range(4):
        set_grads(model, step)
        set_grads(ref_model, step)
        opt.step()
        variant.step()
        adamw.step()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert optimizer_state_bytes([opt]) == optimizer_state_bytes([variant, adamw])
    assert muon_state_bytes([opt]) == optimizer_state_bytes([variant])


def test_kronecker_hybrid_keeps_dense_momentum_on_the_last_block_only():
    model = tiny_gpt()
    opt = gpt_optimizer(model, "kronecker-hybrid", **OPTS)
    set_grads(model, 0)
    opt.step()
    last = set(map(id, model.blocks[-1].parameters()))
    for name, role in param_roles(model).items():
        if role != "muon":
            continue
        p = dict(model.named_parameters())[name]
        keys = set(opt.state[p])
        assert keys == ({"momentum_buffer"} if id(p) in last else {"kron_f1", "kron_f2"}), name


def test_kronecker_hybrid_resumes_from_its_state_dict():
    """A loaded state dict (AdamW groups have no ``dense_momentum``) continues exactly."""
    model, copy_model = tiny_gpt(), tiny_gpt()
    opt = gpt_optimizer(model, "kronecker-hybrid", **OPTS)
    set_grads(model, 0)
    opt.step()
    copy_model.load_state_dict(model.state_dict())
    resumed = gpt_optimizer(copy_model, "kronecker-hybrid", **OPTS)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch would share tensors
    for m, o in ((model, opt), (copy_model, resumed)):
        set_grads(m, 1)
        o.step()
    for p, q in zip(model.parameters(), copy_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("cls,variant", [(LoRAPreMuonWithAuxAdam, LoRAPreMuon),
                                         (KroneckerMuonWithAuxAdam, KroneckerMuon)])
def test_variant_defaults_are_the_variants_own(cls, variant):
    signature = inspect.signature(variant.__init__).parameters
    assert cls.variant_defaults == {k: signature[k].default for k in cls.variant_defaults}


def test_state_bytes_are_those_of_the_state_tensors():
    """Muon part and total against the formulas: dense out*in, LoRA-Pre (out+in)*r,
    Kronecker m1 n1 + m2 n2 floats per hidden matrix; AdamW 2 moments + a step per tensor."""
    model = tiny_gpt()
    roles = param_roles(model)
    named = dict(model.named_parameters())
    shapes = [tuple(named[n].shape) for n, r in roles.items() if r == "muon"]
    aux = [named[n] for n, r in roles.items() if r != "muon"]
    aux_bytes = sum(2 * 4 * p.numel() + 4 for p in aux)
    expected = {
        "muon": sum(o * i for o, i in shapes),
        "lorapre": sum((o + i) * 2 for o, i in shapes),
        "kronecker": sum(a * b + c * d for (a, b), (c, d) in map(kronecker_shapes, *zip(*shapes))),
    }
    for kind, floats in expected.items():
        opt = gpt_optimizer(model, kind, **OPTS, **({"rank": 2} if kind == "lorapre" else {}))
        set_grads(model, 0)
        opt.step()
        assert muon_state_bytes([opt]) == 4 * floats, kind
        assert optimizer_state_bytes([opt]) == 4 * floats + aux_bytes, kind
    adamw = gpt_optimizer(model, "adamw", **OPTS)
    adamw.step()
    assert muon_state_bytes([adamw]) == 0


def test_rank_is_refused_for_other_kinds():
    with pytest.raises(ValueError, match="rank"):
        gpt_optimizer(tiny_gpt(), "kronecker", rank=4)


@pytest.mark.parametrize("kind", ["lorapre", "kronecker", "kronecker-hybrid"])
def test_variants_train_the_gpt(kind, tmp_path):
    cfg = TrainConfig(steps=30, warmup_steps=0, eval_every=30, out_dir=str(tmp_path),
                      progress=False, device="cpu", seed=0)
    train_gpt(kind, batch_size=4, block_size=16, eval_batches=2,
              model_overrides={"n_layer": 1, "n_embd": 32, "n_head": 2},
              optimizer_options={"lr": 3e-3, "muon_lr": 0.03}, train_config=cfg)
    run = load_run(tmp_path / METRICS)
    assert run.optimizer == kind
    assert run.val[-1]["val_loss"] < run.val[0]["val_loss"] - 0.3
    assert 0 < run.summary["muon_state_bytes"] < run.summary["optimizer_state_bytes"]


# --- the study (in process; the study itself is never a test) --------------------------------


def sessions(out):
    return sum(len(read_jsonl(p)) for p in out.rglob("sessions.jsonl"))


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("variants-gpt")
    cfg = VariantGPTConfig(out=str(out), horizons=[8], seeds=[0, 1],
                           contenders=["muon", "lorapre-r1", "kronecker-hybrid"], batch_size=2,
                           block_size=8, eval_batches=1, evals_per_run=2,
                           model_overrides={"n_layer": 1}, grid_points=2, sweep_extend=1)
    mp = pytest.MonkeyPatch()
    mp.setattr(horizon, "run_isolated", run_in_process)
    prepare_out(cfg, "muonkit variants gpt (test)")
    Study(cfg, log=lambda _: None).run_all()
    yield out, cfg
    mp.undo()


def cell_finals(out, name, lr, seeds=(0, 1), steps=8):
    return [load_run(out / f"h{steps}" / name / f"lr{lr:g}-s{s}" / METRICS).val[-1]["val_loss"]
            for s in seeds]


def test_study_tunes_each_variant_with_the_edge_aware_sweep(study_dir):
    out, cfg = study_dir
    sweeps = json.loads((out / "sweeps.json").read_text())["8"]
    assert set(sweeps) == {"adamw", "muon", "lorapre-r1", "kronecker-hybrid"}  # AdamW added
    for name, entry in sweeps.items():
        center = VARIANTS[name].center
        assert entry["initial"] == factor_grid(center, 2)
        assert len(entry["added"]) == 1  # a 2-point grid's best sits at an edge: extended
        losses = {float(k): v for k, v in entry["losses"].items()}
        assert entry["best"] == min(losses, key=losses.get)
        run = load_run(out / "h8" / name / f"lr{entry['best']:g}-s1" / METRICS)
        options = run.config["config"]["optimizer_options"]
        assert run.optimizer == VARIANTS[name].optimizer
        if name != "adamw":
            assert options["muon_lr"] == entry["best"]
            assert options["lr"] == entry["aux_lr"] == sweeps["adamw"]["best"]
    rank = load_run(next((out / "h8" / "lorapre-r1").glob("*/" + METRICS)))
    assert rank.config["config"]["optimizer_options"]["rank"] == 1


def test_study_resumes_and_refuses_other_settings(study_dir, monkeypatch):
    out, cfg = study_dir
    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    before = sessions(out)
    Study(cfg, log=lambda _: None).run_all()
    assert sessions(out) == before
    with pytest.raises(ValueError, match="study"):  # a horizon study is not continued
        prepare_out(HorizonConfig(**{**cfg.__dict__, "contenders": ["muon"]}), "x")
    with pytest.raises(ValueError, match="one length"):
        VariantGPTConfig(horizons=[800, 1600])


def test_a_continuation_adds_report_seeds_and_changes_nothing_else(tmp_path, monkeypatch):
    """A study continued with seeds after its own runs only the new seeds' runs (at each
    contender's chosen LR, the sweeps reused) and records every seed; any other change, a seed
    dropped or another tuning seed, is refused in one line."""
    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    cfg = VariantGPTConfig(out=str(tmp_path / "s"), horizons=[4], seeds=[0, 1],
                           contenders=["muon"], batch_size=2, block_size=8, eval_batches=1,
                           evals_per_run=2, model_overrides={"n_layer": 1}, grid_points=2,
                           sweep_extend=0)
    prepare_out(cfg, "first")
    Study(cfg, log=lambda _: None).run_all()
    out = tmp_path / "s"
    before = {p.parent: p.read_text() for p in out.rglob("sessions.jsonl")}
    more = VariantGPTConfig(**{**cfg.__dict__, "seeds": [0, 1, 2]})
    prepare_out(more, "more seeds")
    Study(more, log=lambda _: None).run_all()
    after = {p.parent: p.read_text() for p in out.rglob("sessions.jsonl")}
    sweeps = json.loads((out / "sweeps.json").read_text())["4"]
    assert {p: after[p] for p in before} == before  # no earlier run ran again
    assert sorted(p.relative_to(out) for p in set(after) - set(before)) == [
        Path("h4") / name / f"lr{sweeps[name]['best']:g}-s2" for name in ("adamw", "muon")]
    assert json.loads((out / "study.json").read_text())["seeds"] == [0, 1, 2]
    assert (out / "commands.txt").read_text().splitlines() == ["first", "more seeds"]
    for seeds, also, named in (([0, 2], {}, "--seeds"), ([1, 0, 2], {}, "--seeds"),
                               ([0, 1, 2, 3], {"grid_points": 3}, "--grid-points")):
        other = VariantGPTConfig(**{**more.__dict__, "seeds": seeds, **also})
        with pytest.raises(ValueError) as refused:
            prepare_out(other, "x")
        message = str(refused.value)
        assert "\n" not in message and named in message and "more --seeds" in message
        differing = message.split("; rerun")[0]  # added seeds are no change
        assert ("--seeds" in differing) == (named == "--seeds")
    assert json.loads((out / "study.json").read_text())["seeds"] == [0, 1, 2]


def test_the_difference_to_dense_muon_is_over_the_report_seeds_when_another_seed_tuned(
        tmp_path, monkeypatch):
    """With ``--tune-seed 0 --seeds 1 2`` the sweeps run on seed 0 and seeds 1 and 2 report:
    the comparison with dense Muon is over seeds 1 and 2, paired by seed (the first report
    seed stays in)."""
    from muonlab.report.horizon import load_study as load_report_study
    from muonlab.report.variants_gpt import versus_dense

    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    out = tmp_path / "s"
    cfg = VariantGPTConfig(out=str(out), horizons=[4], seeds=[1, 2], tune_seed=0,
                           contenders=["muon", "lorapre-r1"], batch_size=2, block_size=8,
                           eval_batches=1, evals_per_run=2, model_overrides={"n_layer": 1},
                           grid_points=2, sweep_extend=0)
    prepare_out(cfg, "tune seed 0")
    Study(cfg, log=lambda _: None).run_all()
    study = load_report_study(out)
    dense, cell = study.ready(4, "muon"), study.ready(4, "lorapre-r1")
    assert {r.seed for r in cell.runs} == {1, 2}
    sweeps = json.loads((out / "sweeps.json").read_text())["4"]
    finals = {name: cell_finals(out, name, sweeps[name]["best"], (1, 2), steps=4)
              for name in ("lorapre-r1", "muon")}
    comparison = versus_dense(study, cell, dense)
    assert comparison.n == 2 and comparison.test == "paired t"
    assert comparison.diff == pytest.approx(np.mean(finals["lorapre-r1"]) - np.mean(finals["muon"]))


def test_report_has_the_table_and_figures_from_the_runs(study_dir, capsys):
    out, _ = study_dir
    assert main(["variants", "gpt", "--report-only", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    sweeps = json.loads((out / "sweeps.json").read_text())["8"]
    dense = cell_finals(out, "muon", sweeps["muon"]["best"])
    row = {}
    table = text.split("## Final validation loss")[1].split("##")[0]
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith(("| contender", "| ---")):
            row[line.split("|")[1].strip()] = [c.strip() for c in line.split("|")[2:-1]]
    assert set(row) == {"adamw", "muon", "lorapre-r1", "kronecker-hybrid"}
    assert [r for r in row.values() if "edge" in r[1]]  # 8 steps: some best sits at an edge
    for name in row:
        assert ("edge" in row[name][1]) == (sweeps[name]["edge"] is not None)
        finals = cell_finals(out, name, sweeps[name]["best"])
        assert row[name][2] == f"{np.mean(finals):.3f} ± {np.std(finals, ddof=1):.3f}"
        summary = load_run(out / "h8" / name / f"lr{sweeps[name]['best']:g}-s0" / METRICS).summary
        assert row[name][4] == fmt_bytes(summary["optimizer_state_bytes"])
        if name == "adamw":
            assert row[name][3] == "-"
        else:
            assert row[name][3] == fmt_bytes(summary["muon_state_bytes"])
        if name != "muon":  # seed 0 tuned the LRs: seed 1 alone is compared
            d = finals[1] - dense[1]
            assert row[name][5] == f"{d:+.3f}, paired t, n=1: not resolved (one seed: no interval)"
    assert "Status: complete" in text and "muonkit variants gpt (test)" in text
    precision = load_run(out / "h8" / "muon" / f"lr{sweeps['muon']['best']:g}-s0" / METRICS)
    assert f"Newton-Schulz {ns_label(precision.config['config']['ns_precision']['0'])} in" in text
    assert (out / "memory.png").stat().st_size > 0 and (out / "curves.png").exists()
    assert "memory.png" in capsys.readouterr().out


def test_gpt_study_checks_the_device_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exit_info:
        main(["variants", "gpt", "--device", "foo", "--out", str(out)])
    assert exit_info.value.code == 2 and "unknown device" in capsys.readouterr().err
    assert not out.exists()


def test_the_no_momentum_ablation_runs_muon_at_momentum_zero_from_the_first_step(tmp_path,
                                                                                monkeypatch):
    """``muon-no-momentum`` (LoRA-Pre's rank -> 0 limit): its runs hold momentum 0 with no
    momentum warmup (which would set 0.85 -> 0.95); the dense hybrid's keep the warmup."""
    monkeypatch.setattr(horizon, "run_isolated", run_in_process)
    cfg = VariantGPTConfig(out=str(tmp_path / "s"), horizons=[4], seeds=[0],
                           contenders=["muon", "muon-no-momentum"], batch_size=2, block_size=8,
                           eval_batches=1, evals_per_run=2, model_overrides={"n_layer": 1},
                           grid_points=1, sweep_extend=0)
    out = prepare_out(cfg, "muonkit variants gpt (test)")
    Study(cfg, log=lambda _: None).run_all()
    plain = load_run(out / "h4" / "muon" / "lr0.02-s0" / METRICS).config["config"]
    none = load_run(out / "h4" / "muon-no-momentum" / "lr0.02-s0" / METRICS).config["config"]
    assert none["optimizer_options"]["momentum"] == 0.0 and none["momentum_warmup_steps"] == 0
    assert "momentum" not in plain["optimizer_options"] and plain["momentum_warmup_steps"] > 0
