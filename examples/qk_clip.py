"""QK-clip's effect on the attention logits, from a short run: the tiny GPT at a high Muon LR
trained twice, without and with ``--qk-clip``, and its max pre-softmax logit vs step drawn
from the runs' records (docs/results/qk_clip).

    python examples/qk_clip.py [OUT]    # OUT: docs/results/qk_clip; minutes on 2 CPU cores

Each run is ``muonkit train FLAGS [--qk-clip TAU] --out OUT/runs/NAME``; a finished run already
there is kept (its records redraw the figure), never trained again.
"""

from __future__ import annotations

import sys
from pathlib import Path

from muonlab.cli import main
from muonlab.report.metrics import read_jsonl
from muonlab.report.qk_clip import plot_max_logits

TAU = 4.0
# Muon at 10x its default LR: the max logit runs away within tens of steps
FLAGS = ["--steps", "40", "--eval-every", "2", "--eval-batches", "1", "--batch-size", "4",
         "--block-size", "32", "--muon-lr", "0.2", "--lr", "0.01", "--warmup", "0",
         "--no-progress", "--tracker", "none"]


def finished(run_dir: Path) -> bool:
    metrics = run_dir / "metrics.jsonl"
    present = metrics.exists() or metrics.with_name(metrics.name + ".xz").exists()
    return present and any(r.get("kind") == "summary" for r in read_jsonl(metrics))


def run(out: str | Path, flags=FLAGS, tau: float = TAU) -> Path:
    """Train the two runs into ``out/runs`` (unless finished) and draw
    ``out/max_logits.png``; returns its path."""
    out = Path(out)
    runs = {"no-clip": ("Muon, no clip", []),
            "qk-clip": (f"Muon, --qk-clip {tau:g}", ["--qk-clip", str(tau)])}
    for name, (_, extra) in runs.items():
        if not finished(out / "runs" / name):
            main(["train", *flags, *extra, "--out", str(out / "runs" / name)])
    muon_lr = flags[flags.index("--muon-lr") + 1]
    return plot_max_logits(
        {label: out / "runs" / name / "metrics.jsonl" for name, (label, _) in runs.items()},
        out / "max_logits.png",
        f"QK-clip on the tiny GPT at --muon-lr {muon_lr}: max logit on the first val batch")


if __name__ == "__main__":
    print(run(sys.argv[1] if len(sys.argv) > 1 else "docs/results/qk_clip"))
