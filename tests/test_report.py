"""The report module against synthetic metrics files whose numbers the test knows."""

import json

import matplotlib.image
import numpy as np
import pytest

from muonlab.cli import main
from muonlab.report.compare import build_compare_report, compare_numbers
from muonlab.report.metrics import find_runs, group_runs, mean_std, steps_to_reach
from muonlab.report.tables import fmt_bytes, markdown_table

STEPS = 100


def val_curve(final: float, seed: int) -> dict[int, float]:
    # exponential-ish decay from 4.0 to `final`, a seed-dependent offset
    return {s: final + (4.0 - final) * np.exp(-s / 25) + 0.01 * seed for s in range(0, 101, 10)}


def write_run(path, optimizer, seed, final, step_time, state_bytes):
    path.mkdir(parents=True)
    val = val_curve(final, seed)
    cfg = {
        "steps": STEPS,
        "grad_accum": 1,
        "warmup_steps": 10,
        "decay": "cosine",
        "min_lr_ratio": 0.1,
        "grad_clip": 1.0,
        "eval_every": 10,
        "preset": "tiny",
        "model": {"block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16},
        "data": {"source": "synthetic"},
        "batch_size": 4,
        "params": 1000,
        "optimizer_options": {"lr": 1e-3},
    }
    lines = [
        {
            "kind": "config",
            "run": f"{optimizer}-s{seed}",
            "optimizer": optimizer,
            "seed": seed,
            "config": cfg,
        }
    ]
    for s in range(1, STEPS + 1):
        lines.append(
            {
                "kind": "train",
                "step": s,
                "loss": val[(s // 10) * 10] + 0.05,
                "lr": 1e-3,
                "tokens": 32 * s,
                "elapsed_s": step_time * s,
                "tokens_per_s": 32 / step_time,
            }
        )
        if s % 10 == 0:
            lines.append({"kind": "val", "step": s, "val_loss": val[s], "elapsed_s": step_time * s})
        if s == 1:
            lines.insert(1, {"kind": "val", "step": 0, "val_loss": val[0], "elapsed_s": 0.0})
    lines.append(
        {
            "kind": "summary",
            "steps": STEPS,
            "final_val_loss": val[STEPS],
            "tokens_per_s": 32 / step_time,
            "step_time_s": step_time,
            "peak_mem_bytes": 300 * 2**20,
            "optimizer_state_bytes": state_bytes,
            "mfu": None,
            "device": "cpu",
        }
    )
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture
def compare_dir(tmp_path):
    for seed in (0, 1, 2):
        write_run(tmp_path / "runs" / f"adamw-s{seed}", "adamw", seed, 2.0, 0.010, 2048)
        write_run(tmp_path / "runs" / f"muon-s{seed}", "muon", seed, 1.8, 0.015, 1024)
    return tmp_path


def test_numbers_come_from_the_files(compare_dir):
    groups = group_runs(find_runs(compare_dir / "runs"))
    numbers = compare_numbers(groups)
    assert numbers["milestones"] == [10, 20, 50, 100]
    finals = [val_curve(2.0, s)[100] for s in (0, 1, 2)]
    m, sd = numbers["optimizers"]["adamw"]["final"]
    assert m == pytest.approx(np.mean(finals)) and sd == pytest.approx(np.std(finals, ddof=1))
    assert numbers["optimizers"]["muon"]["optimizer_state_bytes"] == 1024
    # muon's mean curve crosses adamw's final mean between two evaluations: check by hand
    muon_mean = {s: np.mean([val_curve(1.8, k)[s] for k in (0, 1, 2)]) for s in range(0, 101, 10)}
    target = np.mean(finals)
    crossing = next(s for s in range(0, 101, 10) if muon_mean[s] <= target)
    s0 = crossing - 10
    expected = s0 + (muon_mean[s0] - target) / (muon_mean[s0] - muon_mean[crossing]) * 10
    assert numbers["reach"][("muon", "adamw")] == pytest.approx(expected)
    assert numbers["reach"][("adamw", "muon")] is None


def test_report_files_contents(compare_dir):
    paths = build_compare_report(compare_dir)
    text = paths["report"].read_text()
    finals = [val_curve(1.8, s)[100] for s in (0, 1, 2)]  # no sweep: every seed reports
    half = 4.3027 * np.std(finals, ddof=1) / np.sqrt(3)
    mean = np.mean(finals)
    assert f"muon {mean:.3f} [{mean - half:.3f}, {mean + half:.3f}] (n=3)" in text
    d = np.array(finals) - [val_curve(2.0, s)[100] for s in (0, 1, 2)]
    half = 4.3027 * np.std(d, ddof=1) / np.sqrt(3)
    assert (f"muon - adamw, final val loss (lower is better): {d.mean():+.3f} "
            f"[{d.mean() - half:+.3f}, {d.mean() + half:+.3f}], paired t, n=3: not resolved "
            "(n=3 < 5 report seeds)") in text
    at50 = [val_curve(2.0, s)[50] for s in (0, 1, 2)]
    assert f"| 50 | 50% | {np.mean(at50):.3f} ± {np.std(at50, ddof=1):.3f} |" in text
    assert "adamw never reaches muon's final val loss" in text
    assert "1.50x the wall-clock" in text  # 15 ms vs 10 ms per step
    img = matplotlib.image.imread(paths["curves"])
    assert img.shape[0] > 300 and img.shape[1] > 800
    assert img[..., :3].std() > 0.05  # not a blank canvas
    # the two optimizers' colours are both drawn
    colours = {tuple(np.round(px, 1)) for px in img[..., :3].reshape(-1, 3)[::7]}
    assert len(colours) > 20


def test_report_cli_and_errors(compare_dir, tmp_path_factory, capsys):
    assert main(["report", str(compare_dir)]) == 0
    assert "report.md" in capsys.readouterr().out
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="runs"):
        build_compare_report(empty)
    (empty / "runs").mkdir()
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        build_compare_report(empty)
    bad = empty / "runs" / "x"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"kind": "train"}\n')
    with pytest.raises(ValueError, match="config"):
        build_compare_report(empty)


def test_small_pieces():
    assert mean_std([1.0]) == (1.0, 0.0)
    assert steps_to_reach(np.array([0, 10]), np.array([3.0, 1.0]), 2.0) == 5.0
    assert steps_to_reach(np.array([0, 10]), np.array([3.0, 2.5]), 2.0) is None
    assert fmt_bytes(3 * 2**20) == "3.00 MiB" and fmt_bytes(10) == "10 B"
    assert markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n| --- | --- |\n| 1 | 2 |\n"
    with pytest.raises(ValueError, match="cells"):
        markdown_table(["a"], [[1, 2]])


def test_variant_tables_regenerate_from_the_committed_runs():
    """The report module rebuilds every committed variants table from its committed runs."""
    from pathlib import Path

    from muonlab.report.variants import markdown_rows, study_runs, summarize

    root = Path(__file__).resolve().parents[1] / "docs" / "results" / "variants"
    for study in ("large", "equal-memory", "rank-sweep", "hybrid"):
        runs = study_runs(root / study)  # (packed records)
        assert len(runs) >= 6, study
        assert markdown_rows(summarize(runs)) in (root / study / "table.md").read_text(), study
