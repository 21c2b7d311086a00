"""The import rules of docs/DESIGN.md, read from the source (every import, also inside functions).

- The library (optimizers, their math, distributed, hardware) never imports the lab (training
  loop, models, data, experiments, reports, command line).
- The core (single-device optimizers and their math: everything in the library but
  ``muonkit.distributed``) never imports ``muonkit.distributed``; the distributed step plugs in.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "muonkit"

LAB = ("train", "models", "data", "experiments", "report", "cli", "demo", "__main__")
CORE = (
    "muon", "orthogonalize", "scaling", "options", "schedules", "hardware", "hybrid", "variants"
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every muonkit module ``path`` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{a.name}" for a in node.names)
    return {m for m in found if m == "muonkit" or m.startswith("muonkit.")}


def top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def layer_files(tops: tuple[str, ...], inside: bool) -> list[Path]:
    files = [f for f in sorted(PACKAGE.rglob("*.py")) if module_name(f) != "muonkit"]
    return [f for f in files if (top(module_name(f)) in tops) == inside]


def test_the_rules_see_every_module():
    library = layer_files(LAB, inside=False)
    assert PACKAGE / "muon.py" in library
    assert PACKAGE / "distributed" / "muon.py" in library
    assert PACKAGE / "train" / "loop.py" not in library
    # the parser resolves relative imports (a broken resolver would make the rules vacuous)
    assert "muonkit.orthogonalize" in imported_modules(PACKAGE / "muon.py")


def test_library_never_imports_the_lab():
    offenders = {
        module_name(f): sorted(m for m in imported_modules(f) if top(m) in LAB)
        for f in layer_files(LAB, inside=False)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_never_imports_distributed():
    offenders = {
        module_name(f): sorted(m for m in imported_modules(f) if top(m) == "distributed")
        for f in layer_files(CORE, inside=True)
    }
    assert {k: v for k, v in offenders.items() if v} == {}
