"""A tiny end-to-end `muonkit compare`: real training runs, report numbers equal the JSONL."""

import json

import numpy as np
import pytest

from muonkit.cli import main
from muonkit.report.metrics import load_run


def test_tiny_compare_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--preset",
        "tiny",
        "--steps",
        "12",
        "--seeds",
        "0",
        "1",
        "--warmup",
        "2",
        "--eval-every",
        "6",
        "--eval-batches",
        "2",
        "--batch-size",
        "4",
        "--block-size",
        "16",
        "--lr-sweep",
        "--sweep-steps",
        "4",
        "--adamw-lrs",
        "1e-3",
        "3e-3",
        "--muon-lrs",
        "0.02",
        "--no-tensorboard",
        "--no-isolate",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "report.md" in capsys.readouterr().out
    runs = {p.parent.name: load_run(p) for p in (out / "runs").glob("*/metrics.jsonl")}
    assert sorted(runs) == ["adamw-s0", "adamw-s1", "muon-s0", "muon-s1"]
    # same data order and initial weights per seed: identical val loss at step 0
    assert runs["adamw-s0"].val[0]["val_loss"] == runs["muon-s0"].val[0]["val_loss"]
    settings = json.loads((out / "settings.json").read_text())
    chosen = settings["chosen_lr"]
    sweep = {p.parent.name: load_run(p) for p in (out / "sweep").glob("*/metrics.jsonl")}
    best_adamw = min(
        (r.val[-1]["val_loss"], r.config["config"]["optimizer_options"]["lr"])
        for n, r in sweep.items()
        if n.startswith("adamw")
    )[1]
    assert chosen["adamw"] == best_adamw
    assert runs["muon-s0"].config["config"]["optimizer_options"]["lr"] == best_adamw
    text = (out / "report.md").read_text()
    for opt in ("adamw", "muon"):
        finals = [runs[f"{opt}-s{s}"].val[-1]["val_loss"] for s in (0, 1)]
        assert f"{opt} {np.mean(finals):.3f} ± {np.std(finals, ddof=1):.3f}" in text
    assert (out / "curves.png").stat().st_size > 10_000


def test_compare_bad_input(tmp_path):
    with pytest.raises(SystemExit):
        main(["compare", "--preset", "huge", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["compare", "--optimizers", "sgd", "--out", str(tmp_path)])
    with pytest.raises(RuntimeError, match="does not exist"):
        main(
            [
                "compare",
                "--steps",
                "2",
                "--seeds",
                "0",
                "--optimizers",
                "adamw",
                "--data",
                str(tmp_path / "missing.txt"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
