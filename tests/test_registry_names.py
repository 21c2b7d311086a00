"""The registry is the one place an optimizer is named (issue 23): the MLP variant studies'
arms, the GPT variant study's contenders and the reports read its names; records written
with the former kind names ("lora_pre", "hybrid_kronecker") load as the registry's."""

import json
from pathlib import Path

import pytest
import torch

from muonkit import registry
from muonlab.experiments import variants_gpt
from muonlab.experiments.variant_config import ARM_KINDS, Arm
from muonlab.models.mlp import MLP
from muonlab.report import variant_tuned
from muonlab.report.variants import study_runs, summarize

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "variants"


def test_an_arm_kind_is_a_registry_name_and_a_former_one_reads_as_it():
    assert ARM_KINDS == registry.OPTIMIZER_NAMES
    assert Arm("LoRA-Pre", "lora_pre", 4) == Arm("LoRA-Pre", "lorapre", 4)
    assert Arm("Hybrid", "hybrid_kronecker").kind == "kronecker-hybrid"
    assert Arm("LoRA-Pre", "lora_pre", 4).slug == "lorapre-r4"
    with pytest.raises(ValueError, match="optimizer kind must be one of"):
        Arm("?", "lora-pre")


def test_committed_studies_with_former_kind_names_still_load():
    """The committed MNIST studies name their arms "lora_pre" and "hybrid_kronecker": read
    back, every kind is a registry name, and the tuned study's mixing-vs-compression table
    (which finds the LoRA-Pre arms by their kind) is the committed one."""
    assert "lora_pre" in (RESULTS / "mnist" / "arms.json").read_text()  # the old records
    s = variant_tuned.load_study(RESULTS / "mnist")
    assert {a["kind"] for a in s["arms"]} <= set(registry.OPTIMIZER_NAMES)
    table = variant_tuned.ablation_table(variant_tuned.arm_rows(s), s["groups"],
                                         s["study"]["seeds"][:1], s["arms"])
    assert table.strip() in (RESULTS / "mnist" / "report.md").read_text()
    for study in ("large", "hybrid"):
        kinds = {row["kind"] for row in summarize(study_runs(RESULTS / study))}
        assert kinds <= set(registry.OPTIMIZER_NAMES) and len(kinds) >= 3, kinds


def test_the_gpt_variant_study_has_every_memory_saver_of_the_registry():
    savers = {name for name, spec in registry.OPTIMIZERS.items() if spec.saves_memory}
    contenders = {c.optimizer for c in variants_gpt.CONTENDERS.values()}
    assert savers <= contenders and "lorapre-r4" in variants_gpt.DEFAULT_CONTENDERS


@pytest.mark.parametrize("name", registry.OPTIMIZER_NAMES)
def test_every_registry_optimizer_trains_a_model_of_matrices(name):
    """``build_matrix_optimizer``: the spec's matrix-only class over every parameter (AdamW for
    "adamw"); one step moves every weight."""
    torch.manual_seed(0)
    model = MLP(12, (8,), 4, bias=False)
    spec = registry.get(name)
    options = {"lr": 0.01} | ({"rank": 2} if spec.takes_rank else {})
    opt = registry.build_matrix_optimizer(name, model, **options)
    assert type(opt) is (spec.matrices or torch.optim.AdamW)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(5, 12)).square().mean().backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_a_tuned_study_with_former_slugs_continues_in_its_directories(tmp_path):
    """Continuing a tuned study whose arms.json was written with the former kind names: each
    arm keeps the slug (the run directory) the study gave it, so no finished run is redone."""
    from muonlab.experiments.variant_tuned import keep_former_slugs

    (tmp_path / "arms.json").write_text(json.dumps({"arms": [
        {"label": "LoRA-Pre r=4", "kind": "lora_pre", "rank": 4, "mixing": "momentum_form",
         "slug": "lora_pre-r4"},
        {"label": "Hybrid Kronecker", "kind": "hybrid_kronecker", "rank": None,
         "mixing": "momentum_form", "slug": "hybrid_kronecker"}]}))
    arms = [Arm("LoRA-Pre r=4", "lorapre", 4), Arm("Muon", "muon"),
            Arm("Hybrid Kronecker", "kronecker-hybrid")]
    groups = {"hybrid": ["muon", "kronecker-hybrid", "lorapre-r4"]}
    kept, kept_groups = keep_former_slugs(arms, groups, tmp_path)
    assert [a.slug for a in kept] == ["lora_pre-r4", "muon", "hybrid_kronecker"]
    assert kept_groups == {"hybrid": ["muon", "hybrid_kronecker", "lora_pre-r4"]}
    assert [a.kind for a in kept] == ["lorapre", "muon", "kronecker-hybrid"]
    assert keep_former_slugs(arms, groups, tmp_path / "new") == (arms, groups)
