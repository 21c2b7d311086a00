"""`muonkit variants gpt`: the memory-saving Muon variants on the tiny GPT, each tuned.

The horizon study's machinery (:mod:`muonlab.experiments.horizon`) at one horizon (``steps``)
with the variant contenders of :data:`CONTENDERS`: AdamW, dense Muon, LoRA-Pre at ranks 1, 4
and 16, Kronecker-factored momentum and the hybrid Kronecker (dense momentum on the last block),
each the Muon part of the same hybrid (:func:`muonlab.train.gpt.gpt_optimizer`:
AdamW on embeddings, head, norms and biases at the LR AdamW's own sweep chose). Every
contender's Muon LR comes from the edge-aware factor-2 sweep (seed ``seeds[0]``, full length,
extended past an edge), then the other seeds run at the chosen LR. Every run records its
optimizer-state bytes (total and Muon part) measured from the state tensors at the end.

Every run is its own process (``jobs`` at a time, ``threads`` torch threads each); a rerun
with the same ``out`` skips finished runs. Layout as the horizon study's
(``OUT/h<steps>/<contender>/lr<lr>-s<seed>/``); :func:`muonlab.report.variants_gpt.build_report`
writes ``report.md`` and the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from muonkit import registry
from muonkit.registry import ADAMW, LORAPRE, MUON

from ..train.settings import setting
from .horizon import CONTENDERS as HORIZON_CONTENDERS
from .horizon import Contender, HorizonConfig

STUDY = "variants-gpt"
NO_WD = {"muon_weight_decay": 0.0}


def _variant(optimizer: str, about: str, momentum_warmup: bool = True, **options) -> Contender:
    return Contender(optimizer, "muon_lr", 0.02, {**NO_WD, **options}, about=about,
                     momentum_warmup=momentum_warmup)


RANKS = (1, 4, 16)  # the ranks of an optimizer that takes one (LoRA-Pre)
# the factor-step ablations' gamma1 (LoRA-Pre's default at momentum 0.95: 0.025)
GAMMAS_FAST = (0.2, 0.5)


def memory_savers() -> dict[str, Contender]:
    """A contender per memory-saving optimizer of the registry (``saves_memory``), one per rank
    of :data:`RANKS` for one that takes a rank: a variant added to the registry joins the
    study."""
    out = {}
    for name, spec in registry.OPTIMIZERS.items():
        if spec.saves_memory and spec.takes_rank:
            out |= {f"{name}-r{r}": _variant(name, f"{spec.summary}, rank {r}", rank=r)
                    for r in RANKS}
        elif spec.saves_memory:
            out[name] = _variant(name, spec.summary)
    return out


CONTENDERS = {
    ADAMW: HORIZON_CONTENDERS[ADAMW],
    MUON: _variant(MUON, "dense Muon hybrid (no weight decay on the Muon matrices)"),
    **memory_savers(),
    # ablations (not run by default): LoRA-Pre's printed mixing g + mu * EMA(g)
    "muon-gradient-heavy": _variant(MUON, "dense Muon, mixing='gradient_heavy' (ablation)",
                                    mixing="gradient_heavy"),
    "lorapre-r16-gradient-heavy": _variant(
        LORAPRE, "LoRA-Pre r=16, mixing='gradient_heavy' (ablation)", rank=16,
        mixing="gradient_heavy"),
    # ablations: the factors track the momentum's subspace gamma / (1 - sqrt(0.95)) ~ 8x and
    # 20x faster than the default gamma1 (does a slowly turning subspace cost the higher rank
    # more?)
    **{f"lorapre-r{r}-gamma{g:g}": _variant(
        LORAPRE, f"LoRA-Pre r={r}, factor step gamma1={g:g} (ablation)", rank=r, gamma1=g)
       for g in GAMMAS_FAST for r in (RANKS[0], RANKS[-1])},
    # ablation: LoRA-Pre's rank -> 0 limit, the update orthogonalizes the gradient alone
    "muon-no-momentum": _variant(MUON, "dense Muon with momentum 0 (ablation: no momentum)",
                                 momentum_warmup=False, momentum=0.0),
}
ABLATIONS = ("gradient-heavy", "-gamma", "no-momentum")
DEFAULT_CONTENDERS = [n for n in CONTENDERS if not any(a in n for a in ABLATIONS)]


@dataclass
class VariantGPTConfig(HorizonConfig):
    """The study's settings: a :class:`HorizonConfig` with one horizon (the run length) and
    the variant contenders; ``study.json`` names the study so that a horizon directory is
    never continued as a variant one."""

    table: ClassVar[dict[str, Contender]] = CONTENDERS
    FLAG_NAMES: ClassVar[dict[str, str]] = {**HorizonConfig.FLAG_NAMES, "horizons": "--steps",
                                            "evals_per_run": "the evaluations per run"}

    out: str = setting("out", default="runs/variants/gpt")
    horizons: list[int] = setting("horizons", default=(800,))
    tune_seed: int | None = setting("tune_seed", default=None)  # seeds[0] tunes and reports
    seeds: list[int] = setting("seeds")
    contenders: list[str] = setting("contenders", default=tuple(DEFAULT_CONTENDERS),
                                    choices=tuple(CONTENDERS))

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.horizons) != 1:
            raise ValueError(f"the variant study runs one length (--steps), got {self.horizons}")

    @property
    def steps(self) -> int:
        return self.horizons[0]

    def study(self) -> dict:
        return {"study": STUDY, **super().study()}
