"""A miniature `muonkit finetune-study` end to end, in process (the study itself is never a
test): two bases, two arms, two-point sweeps; interrupted, then continued by the same call."""

import json
import lzma
import shlex
import shutil
from pathlib import Path

import pytest

from muonlab.cli import build_parser, main
from muonlab.cli.finetune_study import config_from_args
from muonlab.experiments import finetune_study as fs
from muonlab.experiments.runs import StudyInterrupted, run_in_process
from muonlab.report.finetune import build_finetune_report
from muonlab.report.metrics import load_run, read_jsonl
from muonlab.report.records import is_packed, read_predictions
from muonlab.train import gpt

FIELDS = {"base", "arm", "optimizer", "state", "scaling", "momentum_form", "lora_rank", "lr",
          "seed", "role", "accuracy", "n_test", "source_val_loss_before",
          "source_val_loss_after", "predictions", "provenance"}


def config(out, **changes):
    return fs.FinetuneStudyConfig(**{
        **fs.QUICK, "base_steps": 8, "steps": 4, "task_train": 100, "task_test": 6,
        "task_max_tokens": 12, "report_seeds": [1, 2], "out": str(out),
        "arms": ["adamw", "max-dim-only"], **changes})


def run_study(cfg):
    fs.prepare_out(cfg, "muonkit finetune-study (test)")
    fs.FinetuneStudy(cfg, log=lambda _: None).run_all()
    return build_finetune_report(cfg.out)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study, interrupted (Ctrl-C) as its first report-seed run starts, then rerun."""
    out = tmp_path_factory.mktemp("ft") / "study"
    cfg = config(out)
    mp = pytest.MonkeyPatch()
    mp.setattr(fs, "run_isolated", run_in_process)
    train_gpt = gpt.train_gpt

    def ctrl_c_at_a_report_seed(**kwargs):
        if kwargs.get("base") is not None and kwargs["train_config"].seed != cfg.tune_seed:
            raise KeyboardInterrupt
        return train_gpt(**kwargs)

    mp.setattr(gpt, "train_gpt", ctrl_c_at_a_report_seed)
    with pytest.raises(KeyboardInterrupt) as stop:  # (caught: pytest would end the session)
        run_study(cfg)
    assert isinstance(stop.value, StudyInterrupted)
    mp.setattr(gpt, "train_gpt", train_gpt)
    before = {p: p.read_bytes() for p in out.glob("**/metrics.jsonl")}
    paths = run_study(cfg)
    yield out, cfg, before, paths
    mp.undo()


def test_a_rerun_continues_the_interrupted_study_keeping_its_finished_runs(study):
    out, cfg, before, _ = study
    assert before and all(p.read_bytes() == b for p, b in before.items())
    assert all(p.parent.name.endswith("-s0") for p in before)  # stopped at the first report
    sweeps = json.loads((out / "sweeps.json").read_text())
    centers = {"base/adamw": cfg.base_adamw_lr, "base/muon": cfg.base_muon_lr,
               **{f"{b}/{a}": fs.ARMS[a].center for b in fs.BASES for a in cfg.arms}}
    assert set(sweeps) == set(centers)
    for key, sweep in sweeps.items():
        assert sweep["initial"] == fs.factor_grid(centers[key], cfg.grid_points), key


def test_runs_jsonl_has_one_line_per_run_with_what_it_measured(study):
    out, cfg, _, paths = study
    lines = read_jsonl(paths["runs"])
    runs = sorted(out.glob("ft/*/*/*/metrics.jsonl"))
    assert len(lines) == len(runs) == 2 * 2 * (cfg.grid_points + len(cfg.report_seeds))
    sweeps = json.loads((out / "sweeps.json").read_text())
    for line in lines:
        assert FIELDS <= set(line)
        arm = fs.ARMS[line["arm"]]
        assert (line["optimizer"], line["state"], line["lora_rank"]) == (
            arm.optimizer, arm.state, arm.lora_rank)
        assert (line["scaling"], line["momentum_form"]) == (arm.scaling, arm.momentum_form)
        assert line["role"] == ("tune" if line["seed"] == cfg.tune_seed else "report")
        if line["role"] == "report":
            assert line["lr"] == sweeps[f"{line['base']}/{line['arm']}"]["best"]
        # forgetting starts from the base's own final val loss
        base_lr = sweeps[f"base/{line['base']}"]["best"]
        base = load_run(fs.base_dir(out, line["base"], base_lr, cfg.tune_seed) / "metrics.jsonl")
        assert line["source_val_loss_before"] == pytest.approx(base.val[-1]["val_loss"], abs=1e-5)
        predictions = read_predictions(out / line["predictions"])
        assert line["n_test"] == len(predictions) == cfg.task_test
        assert line["accuracy"] == sum(p["correct"] for p in predictions) / cfg.task_test
        assert line["update_rms"] > 0 and line["provenance"]["machine_class"]
        last = load_run(out / line["metrics"]).train[-1]
        assert line["train_loss_curve"][-1] == [last["step"], last["loss"]]
        assert [s for s, _ in line["loss_curve"]] == [0, cfg.steps]  # val: start and end
        # the base's start is not rescored in every run (Task.score_start=False)
        assert not (out / line["metrics"]).with_name("predictions-step0.jsonl").exists()
    # the Muon arm really ran max-dim scaling with the standard momentum
    run = next(r for r in lines if r["arm"] == "max-dim-only")
    options = load_run(out / run["metrics"]).config["config"]["optimizer_options"]
    assert options["lr_scaling"] == "max_dim" and options["momentum_form"] == "standard"


def test_the_study_writes_its_test_problems_once_in_the_scored_order(study):
    """task/test.jsonl lists the problems every run scored, in its predictions' order, with
    their questions and gold (the study's packed predictions take their questions from it)."""
    out, cfg, _, _ = study
    task = [json.loads(x) for x in (out / "task" / "test.jsonl").read_text().splitlines()]
    test = fs.FinetuneStudy(cfg).task.test
    assert task == [{"id": p.id, "question": p.question, "answer": p.answer, "gold": p.gold}
                    for p in test]
    run = next(iter(out.glob("ft/*/*/*/predictions.jsonl")))
    rows = [json.loads(x) for x in run.read_text().splitlines()]
    assert [(r["id"], r["question"], r["gold"]) for r in rows] == [
        (t["id"], t["question"], t["gold"]) for t in task]
    written = (out / "task" / "test.jsonl").stat().st_mtime_ns
    fs.prepare_out(cfg, "muonkit finetune-study (test, again)")  # same content: not rewritten
    assert (out / "task" / "test.jsonl").stat().st_mtime_ns == written


def test_a_thin_packed_study_reports_and_reads_its_predictions_as_written(study, tmp_path):
    """Packed ``--thin`` (a copy), every run's predictions leave their questions out,
    read_predictions gives back the rows the run wrote, and the report (runs.jsonl rewritten
    packed) says what it said of the plain study."""
    out, _, _, paths = study
    copy = tmp_path / "study"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("ckpt.pt"))
    written = {p.relative_to(out): [json.loads(x) for x in p.read_text().splitlines()]
               for p in out.glob("ft/*/*/*/predictions.jsonl")}
    assert main(["results", "pack", "--thin", str(copy)]) == 0
    for name, rows in written.items():
        packed = lzma.decompress((copy / name).with_suffix(".jsonl.xz").read_bytes()).decode()
        assert "question" not in packed and read_predictions(copy / name) == rows
    assert is_packed(copy / "runs.jsonl") and is_packed(copy / "task" / "test.jsonl")
    again = build_finetune_report(copy)
    assert is_packed(copy / "runs.jsonl")
    assert read_jsonl(again["runs"]) == read_jsonl(paths["runs"])


def test_the_report_and_its_figures_are_written(study, capsys):
    out, _, _, paths = study
    assert paths["accuracy_vs_lr"].stat().st_size > 0 and paths["forgetting"].stat().st_size > 0
    text = paths["report"].read_text()
    assert "| adamw | max-dim-only |" in text and "Unfinished: none." in text
    assert f"- `max-dim-only`: {fs.ARMS['max-dim-only'].about}" in text
    # each question's comparison names the arms this study did not run, never guessed
    assert "## Verdict" in text
    assert "| AdamW base | `muon-kj` - `adamw` | unfinished: adamw/muon-kj |" in text
    assert ("| Muon base | `max-dim-only` - `muon-kj` | unfinished: muon/muon-kj |" in text)
    assert "on the Muon base the cause is not stated: unfinished muon/notes-failed" in text
    # each arm's good LR range from its two-point sweep: both points when the other is
    # within 5% of the best's val loss, else the best alone; at the grid's edge either way
    sweeps = json.loads((out / "sweeps.json").read_text())
    for key in (f"{b}/{a}" for b in fs.BASES for a in ("adamw", "max-dim-only")):
        (lo, l_lo), (hi, l_hi) = sorted((float(lr), v) for lr, v in sweeps[key]["losses"].items())
        best = lo if l_lo <= l_hi else hi
        if max(l_lo, l_hi) <= 1.05 * min(l_lo, l_hi):
            cells = f"[{lo:g}, {hi:g}] | >= 2 (reaches the grid's low and high edge)"
        else:
            edge = "low" if best == lo else "high"
            cells = f"[{best:g}, {best:g}] | >= 1 (reaches the grid's {edge} edge)"
        assert f"| {key.replace('/', ' | ')} | {best:g} | {cells} |" in text, key
    assert main(["finetune-study", "--out", str(out), "--report-only"]) == 0
    assert "report.md" in capsys.readouterr().out


def test_a_task_too_small_for_a_batch_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="--batch-size x --block-size"):
        fs.prepare_out(config(tmp_path / "study", task_train=20), "test")
    assert not (tmp_path / "study").exists()


def test_another_study_in_the_same_directory_is_refused(study, capsys):
    out, _, _, _ = study
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune-study", "--quick", "--out", str(out), "--steps", "5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--steps 4 there, 5 given" in err, err


SETTINGS_FIXTURE = Path(__file__).parent / "fixtures" / "finetune_study_settings.json"


def test_the_recorded_settings_are_those_of_the_code_that_started_the_study(tmp_path):
    """study.json for command lines whose record the code of 299ff4b wrote (the fixture) is
    that record, byte for byte, with what was added since (--task-max-number, whose default
    moved from that code's 50 to 10, and the machine class): such a study continues with
    `--task-max-number 50`, and without it is refused naming that flag."""
    recorded = json.loads(SETTINGS_FIXTURE.read_text())
    saved = tmp_path / "study.json"
    for argv, study in recorded.items():
        args = build_parser().parse_args(["finetune-study", *shlex.split(argv),
                                          "--task-max-number", "50"])
        cfg = config_from_args(args)
        now = json.loads(cfg.study_json())
        assert now.pop("task_max_number") == 50
        assert now.pop("machine_class")["threads"] == cfg.threads
        assert json.dumps(now, indent=1) == json.dumps(study, indent=1), argv
        saved.write_text(json.dumps(study, indent=1))
        fs.check_continues(saved, cfg)
        args = build_parser().parse_args(["finetune-study", *shlex.split(argv)])
        cfg = config_from_args(args)
        with pytest.raises(ValueError, match=r"\(--task-max-number 50 there, 10 given\)"):
            fs.check_continues(saved, cfg)


def test_ns_flags_and_qk_clip_reach_every_run_and_are_recorded_only_when_given(tmp_path,
                                                                              monkeypatch):
    """`--ns-*` reach the Muon groups of the Muon base and of every Muon arm (the arm's own
    scaling and momentum form win), `--qk-clip` every run; study.json records them."""
    argv = ["finetune-study", "--quick", "--out", str(tmp_path / "s"), "--ns-steps", "3",
            "--ns-coefficients", "polar_express", "--qk-clip", "40"]
    cfg = config_from_args(build_parser().parse_args(argv))
    study = json.loads(cfg.study_json())
    assert study["muon_options"] == {"ns_steps": 3, "ns_coefficients": "polar_express"}
    assert study["qk_clip"] == 40
    plain = json.loads(config_from_args(build_parser().parse_args(argv[:4])).study_json())
    assert "muon_options" not in plain and "qk_clip" not in plain

    specs = []
    monkeypatch.setattr(fs, "run_isolated", lambda spec, log: specs.append(spec) or 1.0)
    runs = fs.FinetuneStudy(cfg, log=lambda _: None)
    runs.run_base(fs.ADAMW, 4e-3, None)
    runs.run_base(fs.MUON, 0.02, 4e-3)
    runs.bases = {b: tmp_path / b for b in fs.BASES}
    for arm in ("adamw", "muon-kj", "notes-failed"):
        runs.run_ft(fs.MUON, arm, 1e-3, 0, 1e-3)
    assert [s.kwargs["qk_clip"] for s in specs] == [40] * 5
    opts = [s.kwargs["optimizer_options"] for s in specs]
    assert "ns_steps" not in opts[0] and "ns_steps" not in opts[2]  # the AdamW runs
    for o in (opts[1], opts[3], opts[4]):
        assert (o["ns_steps"], o["ns_coefficients"]) == (3, "polar_express")
    assert (opts[4]["lr_scaling"], opts[4]["momentum_form"]) == ("max_dim", "ema")


def test_a_study_continues_only_on_its_machine_class(tmp_path, monkeypatch):
    """study.json pins the machine class (threads included): a continuation at other
    --threads, or on a CPU of other arithmetic, is refused naming it; a study begun before
    the class was pinned continues and is pinned from then on."""
    out = tmp_path / "s"
    fs.prepare_out(config(out), "first")
    assert json.loads((out / "study.json").read_text())["machine_class"]["threads"] == 1
    with pytest.raises(ValueError, match=r"^\S+ holds a study with other settings \(the "
                       r"machine class \(device, CPU or GPU, --threads\) .*'threads': 2"):
        fs.prepare_out(config(out, threads=2), "other threads")
    monkeypatch.setattr(fs.hardware, "cpu_capability", lambda: "NO AVX")
    with pytest.raises(ValueError, match="'cpu_capability': 'NO AVX'"):
        fs.prepare_out(config(out), "other machine")
    old = json.loads((out / "study.json").read_text())
    del old["machine_class"]
    (out / "study.json").write_text(json.dumps(old, indent=1))
    fs.prepare_out(config(out), "an unpinned study continues")
    pinned = json.loads((out / "study.json").read_text())["machine_class"]
    assert pinned["cpu_capability"] == "NO AVX"


def test_a_rerun_with_other_ns_flags_is_refused_naming_each_flag(tmp_path, capsys):
    out = str(tmp_path / "s")
    fs.prepare_out(config(out, muon_options={"ns_steps": 3}), "first")
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune-study", "--quick", "--out", out, "--ns-coefficients", "polar_express",
              "--qk-clip", "40"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--ns-steps 3 there, the default given" in err
    assert "--ns-coefficients the default there, 'polar_express' given" in err
    assert "--qk-clip the default there, 40.0 given" in err


def test_a_clone_without_the_bases_checkpoints_retrains_the_chosen_ones(tmp_path, monkeypatch):
    """git keeps a study's records, not its ckpt.pt: continued without them, the study
    retrains each chosen base, takes its checkpoint (the same weights: its final val loss is
    the recorded one) and gives the same results; a retrained base that ends elsewhere is
    refused in one line and nothing is taken."""
    import torch

    monkeypatch.setattr(fs, "run_isolated", run_in_process)
    cfg = config(tmp_path / "s", arms=["adamw"], report_seeds=[1])
    runs = read_jsonl(run_study(cfg)["runs"])
    checkpoints = sorted((tmp_path / "s" / "bases").glob("*/*/ckpt.pt"))
    assert len(checkpoints) == 2 * cfg.grid_points
    sweeps = json.loads((tmp_path / "s" / "sweeps.json").read_text())
    chosen = {fs.base_dir(tmp_path / "s", b, sweeps[f"base/{b}"]["best"], 0) / "ckpt.pt": None
              for b in fs.BASES}
    chosen = {p: torch.load(p, weights_only=False)["model"] for p in chosen}
    for p in checkpoints:
        p.unlink()
    assert read_jsonl(run_study(cfg)["runs"]) == runs
    kept = sorted((tmp_path / "s" / "bases").glob("*/*/ckpt.pt"))
    assert kept == sorted(chosen) and len(kept) == 2
    for p in kept:
        torch.testing.assert_close(torch.load(p, weights_only=False)["model"], chosen[p],
                                   rtol=0, atol=0)
    assert not (tmp_path / "s" / "regenerated").exists()

    # a base whose record says another loss than the retrained run reaches
    victim = kept[0]
    victim.unlink()
    metrics = victim.parent / "metrics.jsonl"
    lines = read_jsonl(metrics)
    last_val = [r for r in lines if r["kind"] == "val"][-1]
    last_val["val_loss"] *= 1 + 1e-5  # (still the sweep's best)
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ValueError, match="computes differently") as refused:
        run_study(cfg)
    assert "\n" not in str(refused.value) and not victim.exists()
