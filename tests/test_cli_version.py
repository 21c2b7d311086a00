"""`muonkit --version` names the installed version (the one pyproject.toml declares) and torch's."""

import re
from pathlib import Path

import pytest
import torch

from muonlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag_prints_the_package_and_torch_versions(capsys):
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"muonkit {declared} (torch {torch.__version__})\n"
