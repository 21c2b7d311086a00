"""The layers of docs/DESIGN.md, read from the source (every import, also inside functions).

- The folders show the layers: the lab is the subpackages ``cli``, ``data``, ``models``,
  ``train``, ``experiments`` and ``report``; every other module is the library (plus the
  ``__main__`` entry point, which only calls the CLI).
- The library (optimizers, their math, distributed, hardware) never imports the lab (training
  loop, models, data, experiments, reports, command line).
- The core (single-device optimizers and their math: everything in the library but
  ``muonkit.distributed``) never imports ``muonkit.distributed``; the distributed step plugs in.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "muonkit"

LAB = ("train", "models", "data", "experiments", "report", "cli", "__main__")
LIBRARY_PACKAGES = ("variants", "distributed")


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


def test_lab_modules_live_in_lab_folders():
    """Every subpackage is named as lab or library, and a top-level module counts as library
    (so a lab module left at the top fails test_library_never_imports_the_lab)."""
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == set(LAB[:-1]) | set(LIBRARY_PACKAGES)
    entry = imported_modules(PACKAGE / "__main__.py")
    assert entry and {top(m) for m in entry} == {"cli"}


def test_the_rules_see_every_module():
    library = layer_files(LAB, inside=False)
    assert PACKAGE / "muon.py" in library
    assert PACKAGE / "distributed" / "muon.py" in library
    assert PACKAGE / "train" / "loop.py" not in library
    # the parser resolves relative imports (a broken resolver would make the rules vacuous)
    assert "muonkit.orthogonalize" in imported_modules(PACKAGE / "functional.py")


def test_library_never_imports_the_lab():
    offenders = {
        module_name(f): sorted(m for m in imported_modules(f) if top(m) in LAB)
        for f in layer_files(LAB, inside=False)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_never_imports_distributed():
    offenders = {
        module_name(f): sorted(m for m in imported_modules(f) if top(m) == "distributed")
        for f in layer_files(LAB + ("distributed",), inside=False)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_command_line_parses_flags():
    """argparse lives in ``muonkit.cli`` only, and nothing but ``__main__`` imports the CLI:
    experiments take dataclasses, not ``argparse.Namespace`` objects."""
    offenders = {}
    for f in layer_files(("cli", "__main__"), inside=False):
        tree = ast.parse(f.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        bad = sorted(m for m in names | imported_modules(f)
                     if m.split(".")[0] == "argparse" or top(m) == "cli")
        if bad:
            offenders[module_name(f)] = bad
    assert offenders == {}
    assert PACKAGE / "cli" / "train.py" not in layer_files(("cli", "__main__"), inside=False)
