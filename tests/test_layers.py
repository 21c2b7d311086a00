"""The two houses of docs/DESIGN.md, read from the source (every import, also inside functions).

- ``muonkit`` is the library (optimizers, their math, distributed step, hardware facts, the
  registry) and needs torch alone; ``muonlab`` is the lab (training loop, models, data,
  experiments, reports, the command line).
- The library never imports the lab (``muonkit/__main__.py``, ``python -m muonkit``, only
  hands over to the lab's command line), and ``import muonkit`` loads nothing but torch's
  own imports.
- The core (single-device optimizers and their math: the library but ``muonkit.distributed``)
  never imports ``muonkit.distributed``; the distributed step plugs in (the package
  ``__init__`` imports it lazily, when a DTensor appears).
- argparse lives in ``muonlab.cli``, which nothing but the entry points imports.
- The models are plain torch modules: ``muonlab.models`` imports no optimizer of ``muonkit``
  (its registry, hybrid, Muon, variants, distributed step): optimizers are built by
  ``muonkit.registry.build_optimizer``, never by a model.
- No import circles among all these modules.
"""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LIBRARY, LAB = SRC / "muonkit", SRC / "muonlab"
ENTRY_POINTS = (LIBRARY / "__main__.py", LAB / "__main__.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every muonkit/muonlab module ``path`` imports, relative imports resolved."""
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
    return {m for m in found if m.split(".")[0] in ("muonkit", "muonlab")}


def files(package: Path) -> list[Path]:
    return [f for f in sorted(package.rglob("*.py")) if f not in ENTRY_POINTS]


def test_the_rules_see_every_module():
    assert LIBRARY / "muon.py" in files(LIBRARY)
    assert LAB / "train" / "loop.py" in files(LAB)
    # the parser resolves relative imports (a broken resolver would make the rules vacuous)
    assert "muonkit.orthogonalize" in imported_modules(LIBRARY / "functional.py")
    assert "muonlab.train.config" in imported_modules(LAB / "train" / "loop.py")
    assert imported_modules(LIBRARY / "__main__.py") == {"muonlab.cli", "muonlab.cli.main"}


def test_library_never_imports_the_lab():
    offenders = {
        module_name(f): sorted(m for m in imported_modules(f) if m.startswith("muonlab"))
        for f in files(LIBRARY)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_muonkit_loads_no_lab_dependency():
    """Beyond what ``import torch`` itself loads: no numpy, matplotlib, tqdm or muonlab."""
    code = ("import sys, torch; before = set(sys.modules); import muonkit, muonkit.variants, "
            "muonkit.registry; new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new & {'numpy', 'matplotlib', 'tqdm', 'muonlab', 'argparse'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": ""}, check=True).stdout
    assert out.strip() == "[]"


def test_core_never_imports_distributed():
    core = [f for f in files(LIBRARY) if "distributed" not in f.relative_to(LIBRARY).parts
            and f != LIBRARY / "__init__.py"]  # (registers the distributed step, lazily)
    offenders = {
        module_name(f): sorted(m for m in imported_modules(f)
                               if m.startswith("muonkit.distributed"))
        for f in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_command_line_parses_flags():
    """argparse lives in ``muonlab.cli`` only, and nothing but the entry points imports the
    CLI: experiments take dataclasses, not ``argparse.Namespace`` objects."""
    offenders = {}
    for f in files(LIBRARY) + files(LAB):
        if "cli" in f.relative_to(SRC).parts[1:2]:
            continue
        tree = ast.parse(f.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        bad = sorted(m for m in names | imported_modules(f)
                     if m.split(".")[0] == "argparse" or m.startswith("muonlab.cli"))
        if bad:
            offenders[module_name(f)] = bad
    assert offenders == {}


def test_old_lab_paths_still_import_with_a_deprecation_warning():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    import muonkit.train.gpt\nexcept DeprecationWarning as e: print(e)\n"
            "warnings.simplefilter('ignore')\nfrom muonkit.train.gpt import GPTRunConfig\n"
            "import muonlab.train.gpt as new; print(GPTRunConfig is new.GPTRunConfig)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": ""}, check=True).stdout
    assert "muonkit.train moved to muonlab.train" in out and out.strip().endswith("True")


OPTIMIZER_CODE = tuple(f"muonkit.{m}" for m in ("registry", "hybrid", "muon", "variants",
                                                  "distributed", "functional"))


def test_models_import_no_optimizer_code():
    offenders = {module_name(f): sorted(m for m in imported_modules(f)
                                        if m == "muonkit" or m.startswith(OPTIMIZER_CODE))
                 for f in files(LAB / "models")}
    assert LAB / "models" / "gpt.py" in files(LAB / "models")
    assert {k: v for k, v in offenders.items() if v} == {}


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of src it imports (anywhere in it), each with its parent
    packages (importing ``a.b.c`` runs ``a.b``'s ``__init__``), less its own parents."""
    modules = {module_name(f) for f in files(LIBRARY) + files(LAB)}

    def parents(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    graph = {}
    for f in files(LIBRARY) + files(LAB):
        name = module_name(f)
        targets = {t for m in imported_modules(f) for t in {m} | parents(m)}
        graph[name] = {t for t in targets & modules if t != name and t not in parents(name)}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_import_cycles_are_found():
    # the finder itself: a cycle through a package's __init__ counts, a chain does not
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    assert "muonkit.muon" in import_graph()["muonkit.hybrid"]


def test_no_import_cycles():
    """Two modules that import each other (even inside a function) are one module in two
    files: the lower one must not know the higher (pass it what it needs, or move the shared
    piece down)."""
    assert import_cycles(import_graph()) == []
