"""`muonkit compare`: AdamW vs the Muon hybrid on the same GPT, data order and token budget.

1. Optionally (``--lr-sweep``) each optimizer is tuned on a shorter run of seed ``seeds[0]``:
   AdamW over ``--adamw-lrs``; then the Muon hybrid over ``--muon-lrs`` (its matrix LR), its
   AdamW groups using the AdamW LR the first sweep chose.
2. For every seed, both optimizers train the same model (same initial weights), on the same
   training batches in the same order, for the same number of steps, through
   :func:`muonkit.train.gpt.train_gpt` (the one loop).
3. :func:`muonkit.report.compare.build_compare_report` writes ``report.md`` and
   ``curves.png`` from the runs' ``metrics.jsonl``.

By default each run is its own (spawned) process, so the peak memory reported is that run's
own; ``--no-isolate`` runs them in this process (faster start, peak memory then cumulative).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shlex
import shutil
import sys
import traceback
from pathlib import Path

import torch

from ..report.compare import build_compare_report
from ..report.metrics import load_run
from ..train.gpt import add_gpt_arguments, train_config_from, train_gpt, train_gpt_kwargs

OPTIMIZERS = ("adamw", "muon")
ERROR_FILE = "error.txt"


def _train_in_child(kwargs: dict, out_dir: str) -> None:
    try:
        torch.set_num_threads(kwargs.pop("threads"))
        train_gpt(**kwargs)
    except BaseException:
        Path(out_dir, ERROR_FILE).write_text(traceback.format_exc())
        raise SystemExit(1) from None


def run_one(args: argparse.Namespace, optimizer: str, out_dir: Path, seed: int, **changes) -> float:
    """Train one run (in a fresh process with ``--isolate``); returns its final val loss,
    read back from the run's metrics file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = train_config_from(
        args, optimizer, str(out_dir), seed, tensorboard=not args.no_tensorboard, **changes
    )
    kwargs = train_gpt_kwargs(args, optimizer, cfg)
    if not args.isolate:
        train_gpt(**kwargs)
        return load_run(out_dir / "metrics.jsonl").val[-1]["val_loss"]
    kwargs["threads"] = torch.get_num_threads()
    child = multiprocessing.get_context("spawn").Process(
        target=_train_in_child, args=(kwargs, str(out_dir))
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        error = Path(out_dir, ERROR_FILE)
        detail = error.read_text() if error.exists() else f"exit code {child.exitcode}"
        raise RuntimeError(f"training run {out_dir} failed:\n{detail}")
    return load_run(out_dir / "metrics.jsonl").val[-1]["val_loss"]


def sweep(args: argparse.Namespace, out: Path, log) -> dict[str, float]:
    """Tune each optimizer's LR on ``--sweep-steps``; returns the chosen LRs."""
    chosen = {}
    steps = args.sweep_steps or max(1, args.steps // 4)
    grids = {"adamw": ("lr", args.adamw_lrs), "muon": ("muon_lr", args.muon_lrs)}
    for optimizer in sorted(args.optimizers):  # adamw first: the hybrid reuses its LR
        attr, grid = grids[optimizer]
        results = []
        for lr in grid:
            trial = argparse.Namespace(**vars(args))
            setattr(trial, attr, lr)
            if optimizer == "muon" and "adamw" in chosen:
                trial.lr = chosen["adamw"]
            loss = run_one(
                trial,
                optimizer,
                out / "sweep" / f"{optimizer}-lr{lr:g}",
                args.seeds[0],
                steps=steps,
                eval_every=steps,
            )
            log(f"sweep {optimizer} lr={lr:g}: val loss {loss:.4f} after {steps} steps")
            results.append((loss, lr))
        chosen[optimizer] = min(results)[1]
    return chosen


def run_compare(args: argparse.Namespace, log=print) -> dict[str, Path]:
    """The whole experiment; returns the report's paths."""
    out = Path(args.out)
    for sub in ("runs", "sweep"):
        shutil.rmtree(out / sub, ignore_errors=True)  # never mix in a previous experiment
    out.mkdir(parents=True, exist_ok=True)
    chosen = {"adamw": args.lr, "muon": args.muon_lr}
    if args.lr_sweep:
        chosen.update(sweep(args, out, log))
    final = argparse.Namespace(**vars(args))
    final.lr, final.muon_lr = chosen["adamw"], chosen["muon"]
    settings = {
        "command": "muonkit " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "",
        "chosen_lr": {k: chosen[k] for k in args.optimizers},
        "environment": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}",
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }
    (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    for seed in args.seeds:
        for optimizer in args.optimizers:
            loss = run_one(final, optimizer, out / "runs" / f"{optimizer}-s{seed}", seed)
            log(f"{optimizer} seed {seed}: final val loss {loss:.4f}")
    return build_compare_report(out)


def _command(args: argparse.Namespace) -> int:
    if args.lr_sweep and args.sweep_steps is not None and args.sweep_steps <= args.warmup:
        raise SystemExit("--sweep-steps must be larger than --warmup")
    paths = run_compare(args)
    print(f"report: {paths['report']}\ncurves: {paths['curves']}")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    paths = build_compare_report(args.dir)
    print(f"report: {paths['report']}\ncurves: {paths['curves']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="AdamW vs the Muon hybrid on the same GPT, data and budget",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", default="runs/compare", help="output directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    p.add_argument(
        "--lr-sweep", action="store_true", help="tune each optimizer's LR on a shorter run first"
    )
    p.add_argument("--sweep-steps", type=int, default=None, help="default: --steps / 4")
    p.add_argument("--adamw-lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
    p.add_argument("--muon-lrs", type=float, nargs="+", default=[0.01, 0.02, 0.04, 0.08])
    p.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="run in this process (peak memory is then the max so far)",
    )
    add_gpt_arguments(p)
    p.set_defaults(func=_command, no_progress=True)

    r = subparsers.add_parser("report", help="redraw a compare directory's report and plots")
    r.add_argument("dir", help="output directory of `muonkit compare`")
    r.set_defaults(func=_report_command)
