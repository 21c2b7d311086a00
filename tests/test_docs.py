"""The documentation stays true: a short README whose links resolve, and a command-line page
that is exactly what the parsers print."""

import re
from pathlib import Path

from muonlab.cli.reference import reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "docs" / "studies").glob("*.md"))]


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) < 150


def test_cli_page_is_generated_from_the_parsers():
    page = (ROOT / "docs" / "cli.md").read_text()
    stale = "docs/cli.md is stale: python -m muonlab.cli.reference > docs/cli.md"
    assert page == reference(), stale
    assert "## `muonkit train`" in page and "--ns-steps" in page


def test_every_relative_link_of_the_pages_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^(https?:|#|mailto:)", target):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
