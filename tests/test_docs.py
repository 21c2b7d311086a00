"""The documentation stays true: a short README whose links resolve, a command-line page
that is exactly what the parsers print, and module paths (in the pages and in the sources'
docstrings and comments) that name what exists."""

import functools
import importlib
import re
from pathlib import Path

import muonkit
from muonlab.cli.reference import options_page, reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "docs" / "studies").glob("*.md"))]
SRC = ROOT / "src"
DOTTED = re.compile(r"\b(?:muonkit|muonlab)(?:\.[A-Za-z_]\w*)+")
# the old lab paths, named only to say that they moved (muonkit.train -> muonlab.train)
MOVED = {f"muonkit.{name}" for name in muonkit._MOVED_TO_LAB}
# named before they exist, each with the work that brings it (the test fails once it exists)
NOT_YET: dict[str, str] = {}


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) < 150


def test_cli_page_is_generated_from_the_parsers():
    page = (ROOT / "docs" / "cli.md").read_text()
    stale = "docs/cli.md is stale: python -m muonlab.cli.reference > docs/cli.md"
    assert page == reference(), stale
    assert "## `muonkit train`" in page and "--ns-steps" in page


def test_options_page_is_generated_from_the_config_tree():
    page = (ROOT / "docs" / "options.md").read_text()
    assert page == options_page(), "docs/options.md is stale: python -m muonlab.cli.reference"
    for section in ("model", "data", "optimizer", "train", "parallel", "study"):
        assert f"## {section}\n" in page
    assert "| `--steps` | int >= 1 | `demo`: 300; `compare`, `train`, `finetune`: 2000" in page


def test_every_relative_link_of_the_pages_resolves():
    """The pages and every results page (a report, a benchmark's fragment) alike."""
    broken = []
    for page in PAGES + sorted((ROOT / "docs" / "results").rglob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^(https?:|#|mailto:)", target):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


@functools.cache
def resolves(dotted: str) -> bool:
    """``dotted`` is a module of src, or an attribute (of an attribute...) of one; an old lab
    path is not (``muonkit.train`` would import, with a DeprecationWarning)."""
    parts = dotted.split(".")
    if ".".join(parts[:2]) in MOVED:
        return False
    i = next(i for i in range(len(parts), 0, -1)
             if SRC.joinpath(*parts[:i]).with_suffix(".py").exists()
             or SRC.joinpath(*parts[:i], "__init__.py").exists())
    obj = importlib.import_module(".".join(parts[:i]))
    for attr in parts[i:]:
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return True


def test_resolves_tells_modules_and_attributes_from_what_is_not_there():
    assert resolves("muonkit.hybrid.MuonWithAuxAdam.step") and resolves("muonlab.train.loop")
    assert not resolves("muonkit.muon.nesterov_updates")  # it is muonkit.functional's
    assert not resolves("muonkit.train.gpt")  # the lab moved: muonlab.train.gpt


def test_every_module_path_named_exists():
    broken = sorted({
        f"{path.relative_to(ROOT)}: {dotted}"
        for path in [*PAGES, *sorted(SRC.rglob("*.py"))]
        for dotted in DOTTED.findall(path.read_text())
        if dotted not in MOVED | set(NOT_YET) and not resolves(dotted)
    })
    assert broken == []
    assert [d for d in NOT_YET if resolves(d)] == [], "it exists now: drop it from NOT_YET"
