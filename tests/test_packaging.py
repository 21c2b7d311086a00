"""What a user of a clone reads and runs: nothing outside the repository, metadata filled in."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_readme_and_makefile_stay_inside_the_repository():
    for name in ("README.md", "Makefile", "docs/results/variants/README.md"):
        assert "../shared" not in (ROOT / name).read_text(), name


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    "muonkit_data, data_dir", [(None, "data"), ("/srv/datasets", "/srv/datasets")]
)
def test_make_variants_fetches_into_the_users_data_dir(muonkit_data, data_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("MUONKIT_DATA", "DATA_DIR")}
    if muonkit_data:
        env["MUONKIT_DATA"] = muonkit_data
    plan = subprocess.run(["make", "-n", "variants"], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True).stdout
    assert f"muonkit data fetch mnist --data-dir {data_dir}\n" in plan
    assert f"--data-dir {data_dir} " in plan.split("data fetch", 1)[1]


def test_package_metadata_and_cpu_torch_instructions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["authors"] == [{"name": "muonkit developers"}]
    assert project["requires-python"] == ">=3.10"
    assert "License :: OSI Approved :: MIT License" in project["classifiers"]
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme


def test_the_library_needs_torch_alone_and_the_lab_is_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == ["torch>=2.6"]
    assert set(project["optional-dependencies"]["lab"]) == {"numpy", "matplotlib", "tqdm"}
    assert project["scripts"]["muonkit"] == "muonlab.cli:main"
    makefile = (ROOT / "Makefile").read_text()
    assert '".[lab,' in makefile  # make demo / make test install the lab
