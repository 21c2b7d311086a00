"""Benchmark figures carry their provenance, and the docs' tables are generated from them."""

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import records  # noqa: E402

# every generated table: (the name in its markers, its records, its renderer)
GENERATED = {
    "benchmarks/aol.py": (records.RESULTS / "aol", "*.json", "aol", "render"),
    "benchmarks/compiled_step.py": (records.RESULTS / "compiled_step", "*.json",
                                    "compiled_step", "render"),
    "benchmarks/step_time.py": (records.RESULTS / "bench", "step_time-*.json", "step_time",
                                "render_summary"),
}
PER_FIGURE = ["benchmarks/aol.py", "benchmarks/compiled_step.py"]  # the records.py format


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_docs_table_is_the_one_generated_from_the_records(name):
    folder, pattern, module, function = GENERATED[name]
    render = getattr(__import__(module), function)
    doc = records.BENCHMARKS_DOC.read_text()
    assert records.generated(doc, name) == render(records.read_records(folder, pattern)), (
        f"docs/benchmarks.md's table of {name} differs from its records; rerun {name}")


@pytest.mark.parametrize("name", PER_FIGURE)
def test_every_figure_names_machine_threads_dtype_and_load(name):
    folder, pattern, _, _ = GENERATED[name]
    runs = records.read_records(folder, pattern)
    assert runs, f"no records in {folder}"
    for run in runs:
        p = run["provenance"]
        assert {"name", "device"} <= set(p["machine_class"])
        assert p["threads"] >= 1 and isinstance(p["cpu_flags"], list)
        for r in run["records"]:
            assert r["dtype"]
            before, after = r["load_1min"]
            assert before >= 0 and after >= 0


def test_generated_part_is_replaced_between_its_markers_only():
    begin, end = records.markers("x")
    text = f"intro\n{begin}\nold\n{end}\noutro\n"
    new = records.replace_generated(text, "x", "| new |\n")
    assert new == f"intro\n{begin}\n| new |\n{end}\noutro\n"
    assert records.generated(new, "x") == "| new |\n"
    with pytest.raises(ValueError, match="markers of y are missing"):
        records.replace_generated(text, "y", "t")


def test_the_index_is_the_fragments_with_their_links_rebased_to_resolve_from_it():
    """A fragment's figure link resolves from ``bench/`` (beside it), the same link in the
    index ``docs/results/benchmarks.md`` from there; the committed index is the rebuilt one."""
    import common

    fragment = "![a figure](fig.png) [a page](../other.md) [web](https://x.org/a.png) [top](#t)"
    assert common.rebase_links(fragment, "bench") == (
        "![a figure](bench/fig.png) [a page](bench/../other.md) [web](https://x.org/a.png) "
        "[top](#t)")
    assert common.index_text() == (common.RESULTS / "benchmarks.md").read_text()
