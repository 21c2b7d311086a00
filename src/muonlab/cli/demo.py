"""`muonkit demo`: the one-minute check that Muon trains (:mod:`muonlab.experiments.demo`)."""

from __future__ import annotations

from ..experiments.demo import print_summary, run
from .common import (
    add_command,
    add_muon_option_flags,
    add_tree_settings,
    muon_options_from_args,
)


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "demo",
        help="train a small char-level model with Muon (1 min)",
        description="A one-minute check that Muon trains: a character-level MLP on the bundled "
        "tinyshakespeare, Muon on its hidden matrices and AdamW on the rest; prints the loss "
        "every 50 steps and the mean loss of the first and last 20 steps.",
    )
    add_tree_settings(p, ("steps", "seed"), {"steps": 300})
    add_muon_option_flags(p)
    p.set_defaults(func=lambda a: print_summary(
        run(steps=a.steps, seed=a.seed, muon_options=muon_options_from_args(a))))
