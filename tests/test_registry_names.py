"""The registry is the one place an optimizer is named (issue 23): the MLP variant studies'
arms, the GPT variant study's contenders and the reports read its names; records written
with the former kind names ("lora_pre", "hybrid_kronecker") load as the registry's."""

import ast
import io
import json
import tokenize
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



REGISTRY = Path(registry.__file__).resolve()
SRC = REGISTRY.parents[1]  # the src/ that holds muonkit and muonlab (the one imported)


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring constants of ``tree`` (module, class and function docs)."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return docs


HOMONYM = "not an optimizer name"  # the comment that marks a line's homonym (a module, a role)


def _homonym_lines(source: str) -> set[int]:
    comments = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0] for tok in comments
            if tok.type == tokenize.COMMENT and HOMONYM in tok.string}


def name_literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, value)`` of each string constant of ``source`` equal to one of ``names``:
    docstrings and lines whose comment says the string is a homonym (:data:`HOMONYM`) left
    out."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    homonyms = _homonym_lines(source)
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value in names and id(node) not in skip
                  and node.lineno not in homonyms)


def test_the_scan_finds_a_spelled_name_and_skips_docstrings_comments_and_homonyms():
    source = ('"""Uses "muon"."""\n\ndef f():\n    """muon"""\n    return "muon"  # "muon"\n'
              f'ROLE = "muon"  # {HOMONYM}: a parameter role\nx = ["adamw",\n     "muon"]\n')
    assert name_literals(source, {"muon", "adamw"}) == [(5, "muon"), (7, "adamw"), (8, "muon")]


def test_the_registry_is_the_only_place_an_optimizer_name_is_spelled():
    """Every optimizer name (and former name) in src/ is spelled once, in muonkit/registry.py;
    the CLI, the studies and the reports use its constants (docstrings and comments may
    mention a name)."""
    names = set(registry.OPTIMIZER_NAMES) | set(registry.FORMER_NAMES)
    found = [f"{path.relative_to(SRC.parent)}:{line}: {value!r}"
             for path in sorted(SRC.rglob("*.py")) if path != REGISTRY
             for line, value in name_literals(path.read_text(), names)]
    assert not found, "optimizer names spelled outside the registry:\n" + "\n".join(found)
