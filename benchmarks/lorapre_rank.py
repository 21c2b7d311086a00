"""LoRA-Pre's momentum against dense Muon's, rank by rank, on the tiny GPT (issue 25).

Usage: ``MUONKIT_CPU_NATIVE_BF16=0 python benchmarks/lorapre_rank.py [--steps 300]
[--ranks 1 2 4 8 16]`` (one torch thread; fp32 Newton-Schulz as the variants study ran);
writes ``docs/results/variants/lorapre_rank/<machine>.json`` (the records of
:func:`muonlab.experiments.lorapre_rank.measure` with their provenance and per-rank means)
and ``rank.png`` beside it, and the table of docs/studies/variants.md (:func:`render`).
``python benchmarks/lorapre_rank.py --redraw`` measures nothing: it redraws every records
file's figure and the table from the committed records.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from common import RESULTS, ROOT, provenance
from records import markdown_table, provenance_line, read_records, replace_generated, write_records

from muonlab.experiments.lorapre_rank import RankConfig, measure, summary
from muonlab.report.plots import plot_lorapre_rank

OUT = RESULTS / "variants" / "lorapre_rank"
DOC = ROOT / "docs" / "studies" / "variants.md"
COLUMNS = [  # (header, figure of muonlab.experiments.lorapre_rank)
    ("momentum error ‖BA - M‖ / ‖M‖", "momentum_rel_error"),
    ("best rank-r matrix's error (SVD)", "best_rank_rel_error"),
    ("gradient's share ‖G‖ / ‖update‖", "grad_share"),
    ("orthogonalized update RMS / Muon's", "orth_rms_ratio"),
    ("cosine to Muon's update", "orth_cosine"),
    ("persistence over a window", "persistence"),
    ("window displacement / Muon's", "window_drift_ratio"),
]


def driver_name(config: dict) -> str:
    """Who moved the weights, and LoRA-Pre's factor step where it is not the default."""
    rank, gamma = config.get("driver_rank"), config.get("gamma1")
    return ((f"LoRA-Pre r={rank}" if rank else "dense Muon") + f" at LR {config['muon_lr']}"
            + ("" if gamma is None else f"; LoRA-Pre gamma1={gamma:g}"))


def render(files: list[dict]) -> str:
    """The table of docs/studies/variants.md: per records file, each rank's means after the
    momentum warmup, and the machine it was measured on."""
    out = []
    for f in files:
        rows = [[key if key == "dense" else f"r={key}",
                 *(f"{means[c]:.3f}" if c in means else "-" for _, c in COLUMNS)]
                for key, means in f["means"].items()]
        out.append(markdown_table(["rank", *(h for h, _ in COLUMNS)], rows)
                   + f"\nMeans over steps {f['means_after_step'] + 1}-{f['config']['steps']} of "
                   f"{provenance_line(f['provenance'])}; windows of {f['config']['every']} steps; "
                   f"weights moved by {driver_name(f['config'])}; "
                   f"{f['provenance']['cpu_s']} CPU s.\n")
    return "\n".join(out)


def suffix(config: dict) -> str:
    """The records' and figure's name suffix: who moved the weights, the factor step."""
    driver, gamma = config.get("driver_rank"), config.get("gamma1")
    return (("" if driver is None else f"-driver-r{driver}")
            + ("" if gamma is None else f"-gamma{gamma:g}"))


def draw(config: dict, records: list[dict]) -> Path:
    """``rank<suffix>.png`` of one measurement (its config and records)."""
    return plot_lorapre_rank(
        records, OUT / f"rank{suffix(config)}.png",
        f"LoRA-Pre vs dense Muon momentum on the tiny GPT's gradients (one run, "
        f"{config['steps']} steps, seed {config['seed']}, {driver_name(config)})")


def write_table() -> None:
    DOC.write_text(replace_generated(DOC.read_text(), "benchmarks/lorapre_rank.py",
                                     render(read_records(OUT))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--driver-rank", type=int, default=None,
                        help="LoRA-Pre of this rank moves the weights (default: dense Muon)")
    parser.add_argument("--muon-lr", type=float, default=0.02)
    parser.add_argument("--gamma1", type=float, default=None,
                        help="LoRA-Pre's factor step (default: 1 - sqrt(momentum))")
    parser.add_argument("--redraw", action="store_true",
                        help="measure nothing: redraw the figures and the table from the "
                             "committed records")
    args = parser.parse_args()
    if args.redraw:
        for f in read_records(OUT):
            print(draw(f["config"], f["records"]))
        write_table()
        return
    torch.set_num_threads(1)
    cfg = RankConfig(ranks=args.ranks, steps=args.steps, every=args.every,
                     driver_rank=args.driver_rank, muon_lr=args.muon_lr, gamma1=args.gamma1)
    cpu = time.process_time()
    records = measure(cfg)
    native = os.environ.get("MUONKIT_CPU_NATIVE_BF16")
    command = (f"python benchmarks/lorapre_rank.py --steps {args.steps} --every {args.every} "
               f"--ranks {' '.join(map(str, args.ranks))} --muon-lr {args.muon_lr}"
               + ("" if cfg.driver_rank is None else f" --driver-rank {cfg.driver_rank}")
               + ("" if cfg.gamma1 is None else f" --gamma1 {cfg.gamma1:g}"))
    prov = {**provenance(torch.device("cpu")), "cpu_s": round(time.process_time() - cpu, 1),
            "MUONKIT_CPU_NATIVE_BF16": native,
            "command": f"MUONKIT_CPU_NATIVE_BF16={native} {command}" if native else command}
    after = round(cfg.momentum_warmup_frac * cfg.steps)
    path = write_records(OUT / f"{prov['machine_label']}{suffix(vars(cfg))}.json", prov, records,
                         config=vars(cfg), means_after_step=after,
                         means=summary(records, after=after))
    draw(vars(cfg), records)
    write_table()
    print(path)


if __name__ == "__main__":
    main()
