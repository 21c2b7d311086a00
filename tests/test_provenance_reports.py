"""Hardware, precision and CPU time of a study, derived from its run records
(``muonlab.report.provenance``), and every committed report stating exactly that."""

import json
import shlex
from pathlib import Path

import pytest

from muonlab.report import compare, finetune, variant_tuned, variants
from muonlab.report.horizon import load_study
from muonlab.report.metrics import load_run, read_jsonl
from muonlab.report.provenance import (
    SECTION_TITLE,
    Machine,
    commands_text,
    provenance_lines,
    provenance_section,
    run_provenance,
    study_provenance,
)
from muonlab.report.records import find_records

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"

XEON = {"device": "cpu", "device_name": "Xeon 8480", "isa": ["avx2", "amx_bf16"], "threads": 1,
        "dtype": "float32", "ns_dtype": "fp32", "torch": "2.5", "argv": ["muonkit", "train"]}
EPYC = {"device": "cpu", "device_name": "EPYC 7B13", "isa": ["avx2"], "threads": 2,
        "dtype": "float32", "ns_dtype": "auto: fp32 (cpu AVX2, no native bf16)"}


def write_run(root: Path, name: str, records: list[dict], sessions: list[tuple] | None,
              optimizer: str = "muon", config: dict | None = None) -> Path:
    """A run folder: ``records`` after a config line (``records[0]`` may carry provenance
    for it), ``sessions`` as (cpu_s, wall_s, threads) lines of sessions.jsonl."""
    out = root / name
    out.mkdir(parents=True)
    head = {"kind": "config", "optimizer": optimizer, "seed": 0,
            "config": {"dtype": "auto", **(config or {})}}
    lines = [{**head, **records[0]}] + records[1:]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if sessions is not None:
        (out / "sessions.jsonl").write_text("".join(
            json.dumps({"status": "finished", "cpu_s": c, "wall_s": w, "threads": t}) + "\n"
            for c, w, t in sessions))
    return out / "metrics.jsonl"


def train(elapsed: float) -> dict:
    return {"kind": "train", "step": 1, "loss": 1.0, "elapsed_s": elapsed}


@pytest.fixture
def study(tmp_path):
    """Five runs: two CPU classes in the new format (one run resumed on the same class, one
    switching between them), an older GPU run whose first session left no sessions line,
    and an older AdamW run without sessions.jsonl."""
    paths = [
        write_run(tmp_path, "a", [{"provenance": XEON}, train(3000)], [(3600, 3700, 1)]),
        write_run(tmp_path, "b", [{"provenance": EPYC}, train(6000), {"kind": "summary"},
                                  {"kind": "session", "provenance": EPYC}, train(9000)],
                  [(1800, 2000, 2), (5400, 7100, 2)]),
        write_run(tmp_path, "c", [{"provenance": XEON}, train(1000),
                                  {"kind": "session", "provenance": EPYC}, train(4000)],
                  [(1800, 1900, 1), (3600, 4200, 2)]),
        write_run(tmp_path, "d", [{}, train(4600),
                                  {"kind": "summary", "device": "NVIDIA H100 80GB HBM3",
                                   "threads": 2, "cpu_flags": ["avx2"],
                                   "cpu_native_bf16": True}],
                  [(900, 1000, 2)]),
        write_run(tmp_path, "e", [{}, train(100),
                                  {"kind": "summary", "device": "cpu", "threads": 1,
                                   "cpu_flags": ["avx2"], "cpu_native_bf16": False}],
                  None, optimizer="adamw"),
    ]
    return tmp_path, [load_run(p) for p in paths]


def test_runs_read_every_session_in_both_record_formats(study):
    root, runs = study
    a, b, c, d, e = (run_provenance(r, r.path.parent.name) for r in runs)
    xeon = Machine("cpu", "Xeon 8480", ("amx_bf16", "avx2"))
    epyc = Machine("cpu", "EPYC 7B13", ("avx2",))
    assert a.machines == [xeon] and b.machines == [epyc]
    assert c.machines == [xeon, epyc]  # the resumed session found another machine class
    assert d.machines == [Machine("cuda", "NVIDIA H100 80GB HBM3")]
    assert e.machines == [Machine("cpu", "", ("avx2",))]  # older summary: no CPU model
    assert (b.cpu_s, b.sessions, c.cpu_s, c.sessions) == (7200, 2, 5400, 2)
    assert e.cpu_s is None and e.unrecorded_s == 0
    # d trained 4600 s but its one recorded session lasted 1000 s: 3600 s are unrecorded
    assert (a.unrecorded_s, b.unrecorded_s, c.unrecorded_s, d.unrecorded_s) == (0, 0, 0, 3600)
    assert [(s.dtype, s.ns_dtype, s.ns_derived) for s in d.segments] == [
        ("bf16 autocast", "bf16", True)]  # dtype and ns_dtype "auto" on CUDA
    assert [(s.dtype, s.ns_dtype) for s in e.segments] == [("fp32", "not used")]
    assert [s.ns_dtype for s in c.segments] == ["fp32", "fp32"]


def test_study_lines_count_classes_switches_and_every_session(study):
    root, runs = study
    lines = provenance_lines(study_provenance(runs, root))
    assert lines == [
        "- CPU (Xeon 8480; ISA flags amx_bf16 avx2): 2 runs; training fp32; Newton-Schulz fp32 "
        "in 2 runs; torch threads 1.",
        "- CPU (EPYC 7B13; ISA flags avx2): 2 runs; training fp32; Newton-Schulz fp32 in 2 runs;"
        " torch threads 2.",
        "- CUDA GPU NVIDIA H100 80GB HBM3: 1 run; training bf16 autocast; Newton-Schulz bf16 "
        "in 1 run (all resolved from `auto` and the recorded device: the run did not record "
        "it); torch threads 2.",
        "- CPU (model not recorded; ISA flags avx2): 1 run; training fp32; Newton-Schulz not "
        "used in 1 run (AdamW); torch threads 1.",
        "- Runs whose sessions ran on more than one machine class: c (CPU (Xeon 8480; ISA flags "
        "amx_bf16 avx2) -> CPU (EPYC 7B13; ISA flags avx2)).",
        "- Runs that trained outside their recorded sessions (their training time exceeds the "
        "wall time `sessions.jsonl` records, so a session left no record; the machine of that "
        "part is not recorded): d (at least 3,600 s of its 4,600 s of training).",
        # 3600 + (1800 + 5400) + (1800 + 3600) + 900 = 17100 s over 6 sessions; d's 3600
        # unrecorded seconds at its 2 threads add 7200 s: 24300 s
        "- CPU time: 4.75 h over all 6 recorded sessions of 4 runs (`sessions.jsonl`; on a GPU "
        "this is the host process's CPU time; the 1 run that used a GPU took 0.28 h of wall time); "
        "with the training outside the recorded sessions counted at its training time x "
        "threads: about 6.75 h.",
        "- CPU time: not recorded for 1 run (no `sessions.jsonl` nor `session_end` records).",
    ]


def test_the_cpu_time_split_by_group_adds_up_to_the_total(study):
    """Runs a, b (group "x": 3600 + 7200 s over 3 sessions) and c, d ("y": 5400 + 900 s over
    3 sessions); e records no CPU time."""
    root, runs = study
    group = {"a": "x", "b": "x", "c": "y", "d": "y", "e": "y"}
    lines = provenance_lines(
        study_provenance(runs, root, lambda r: group[r.path.parent.name]), cost_by_group=True)
    assert lines[-2].startswith(
        "- CPU time: 4.75 h over all 6 recorded sessions of 4 runs (`sessions.jsonl`; on a GPU "
        "this is the host process's CPU time; the 1 run that used a GPU took 0.28 h of wall "
        "time); by group: x 3.00 h over 3 recorded sessions of 2 runs, y 1.75 h over 3 "
        "recorded sessions of 2 runs; with the training")
    assert "by group" not in provenance_lines(study_provenance(runs, root))[-2]


def test_missing_provenance_keys_say_not_recorded(tmp_path):
    path = write_run(tmp_path, "r", [{"provenance": {"device": "cpu"}}, train(1)], None,
                     config={"dtype": None})
    (r,) = study_provenance([load_run(path)], tmp_path)
    assert r.machines == [Machine("cpu", "", None)]
    assert [(s.dtype, s.ns_dtype, s.threads) for s in r.segments] == [
        ("not recorded", "not recorded", None)]
    assert provenance_lines([r])[0] == (
        "- CPU (model not recorded; ISA flags not recorded): 1 run; training not recorded; "
        "Newton-Schulz not recorded in 1 run; torch threads not recorded.")


def test_session_records_of_the_loop_give_cpu_time_without_sessions_file(tmp_path):
    """A run of `muonkit train` (no sessions.jsonl): its first session's provenance on the
    config line and again on its ``session`` record, a resume on a GPU, and the CPU seconds of
    each ``session_end``; Newton-Schulz per Muon group, none for a run without Muon."""
    gpu = {"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3", "isa": ["avx2"],
           "threads": 4, "dtype": "bfloat16", "ns_dtype": {"0": "auto: bf16 (cuda)"}}
    first = {**EPYC, "ns_dtype": {"0": "auto: fp32 (cpu AVX2, no native bf16)", "1": "fp32"}}
    path = write_run(tmp_path, "m", [
        {"provenance": first}, {"kind": "session", "provenance": first}, train(50),
        {"kind": "session_end", "cpu_s": 900.0, "wall_s": 600.0},
        {"kind": "session", "provenance": gpu}, train(80),
        {"kind": "session_end", "cpu_s": 900.0, "wall_s": 50.0}], None)
    no_muon = write_run(tmp_path, "n", [{"provenance": {**EPYC, "ns_dtype": {}}}, train(1)],
                        None, optimizer="sgd")
    m, n = study_provenance([load_run(path), load_run(no_muon)], tmp_path)
    assert [(s.dtype, s.ns_dtype) for s in m.segments] == [
        ("fp32", "fp32"), ("fp32", "fp32"), ("bf16 autocast", "bf16")]
    assert m.machines == [Machine("cpu", "EPYC 7B13", ("avx2",)),
                          Machine("cuda", "NVIDIA H100 80GB HBM3")]
    assert (m.cpu_s, m.sessions, m.unrecorded_s) == (1800.0, 2, 0.0)
    assert [(s.ns_dtype, s.threads) for s in n.segments] == [("not used", 2)]
    assert provenance_lines([m, n])[-2:] == [
        "- CPU time: 0.50 h over all 2 recorded sessions of 1 run (`session_end`; on a GPU this "
        "is the host process's CPU time; the 1 run that used a GPU took 0.18 h of wall time).",
        "- CPU time: not recorded for 1 run (no `sessions.jsonl` nor `session_end` records)."]


def section_of(path: Path) -> str:
    """The hardware section of a committed report: its title up to the next heading."""
    text = path.read_text()
    start = text.index(SECTION_TITLE)
    end = text.find("\n## ", start + len(SECTION_TITLE))
    return text[start:] if end < 0 else text[start:end]


def compare_section(out: Path) -> str:
    return compare.hardware(*compare.load_compare(out), out)


def variants_section(out: Path) -> str:
    return provenance_section(study_provenance(variants.study_runs(out), out))


@pytest.mark.parametrize("folder, report, derive", [
    ("horizon", "report.md", lambda out: load_study(out).hardware()),
    ("variants/gpt", "report.md", lambda out: load_study(out).hardware()),
    ("variants/mnist", "report.md", variant_tuned.hardware),
    ("compare-tiny", "report.md", compare_section),
    ("compare-tiny-default", "report.md", compare_section),
    ("variants/large", "table.md", variants_section),
    ("variants/equal-memory", "table.md", variants_section),
    ("variants/rank-sweep", "table.md", variants_section),
    ("variants/hybrid", "table.md", variants_section),
    ("finetune", "report.md", lambda out: finetune.hardware(out)),
])
def test_committed_reports_state_the_hardware_their_records_give(folder, report, derive):
    """Each committed report's hardware, precision and CPU-time lines are exactly what the
    reports derive from the committed run records (regenerate with the report commands)."""
    out = RESULTS / folder
    assert section_of(out / report) == derive(out)


def test_the_finetune_report_counts_the_cpu_time_of_every_run_in_its_folder():
    """Every run recorded under the study's folder, the bases' pretraining included, is in
    its CPU time: counted here from the folder's ``sessions.jsonl`` files alone."""
    out = RESULTS / "finetune"
    runs = find_records(out, "**/metrics.jsonl")
    sessions = [s for m in runs for s in read_jsonl(m.parent / "sessions.jsonl")]
    hours = sum(s["cpu_s"] for s in sessions) / 3600
    assert any(m.relative_to(out).parts[0] == "bases" for m in runs)
    assert (f"- CPU time: {hours:.2f} h over all {len(sessions)} recorded sessions of "
            f"{len(runs)} runs") in section_of(out / "report.md")


def test_the_commands_are_the_logged_ones_then_those_only_the_runs_recorded(tmp_path):
    """Run a: started by the logged command, resumed by an unlogged one; b: by that unlogged
    one; c: by another (with a quoted argument); d: before argv was recorded; e: by a Python
    program, not muonkit (shown as recorded)."""
    study = ["/venv/bin/muonkit", "horizon", "--out", "o"]
    other = ["/src/muonkit/__main__.py", "horizon", "--out", "o", "--jobs", "2"]
    third = ["muonkit", "horizon", "--data", "my corpus"]
    paths = [
        write_run(tmp_path, "h1/a", [{"provenance": {"argv": study}},
                                     {"kind": "session", "provenance": {"argv": other}}], None),
        write_run(tmp_path, "h1/b", [{"provenance": {"argv": other}},
                                     {"kind": "session", "provenance": {"argv": other}}], None),
        write_run(tmp_path, "h2/c", [{"provenance": {"argv": third}}], None),
        write_run(tmp_path, "h2/d", [{}], None),
        write_run(tmp_path, "h2/e", [{"provenance": {"argv": ["my_study.py", "-x"]}}], None),
    ]
    runs = [load_run(p) for p in paths]
    assert commands_text(["muonkit horizon --out o"], runs, tmp_path) == (
        "    muonkit horizon --out o\n"
        "\nRecorded by 2 runs (the `argv` of their provenance: h1/a, h1/b), not in "
        "`commands.txt`:\n\n    muonkit horizon --out o --jobs 2\n"
        "\nRecorded by 1 run (the `argv` of their provenance: h2/c), not in `commands.txt`:"
        "\n\n    muonkit horizon --data 'my corpus'\n"
        "\nRecorded by 1 run (the `argv` of their provenance: h2/e), not in `commands.txt`:"
        "\n\n    my_study.py -x\n")
    assert commands_text(["muonkit horizon --out o"], runs[:1] + runs[3:4], tmp_path).count(
        "Recorded by") == 1


@pytest.mark.parametrize("folder", [
    "compare-2d", "compare-heldout", "compare-groups", "horizon-gpu", "horizon",
    "variants/gpt-heldout", "variants/gpt"])
def test_committed_reports_list_every_command_their_runs_recorded(folder):
    """Each command line any session of the study recorded (its provenance's ``argv``, read
    here from the raw records) is in the report's Commands section."""
    out = RESULTS / folder
    text = (out / "report.md").read_text()
    section = text[text.index("## Commands"):]
    recorded = {"muonkit " + shlex.join(r["provenance"]["argv"][1:])
                for m in find_records(out, "**/metrics.jsonl") for r in read_jsonl(m)
                if r.get("provenance", {}).get("argv")}
    assert all(f"    {c}\n" in section for c in recorded), recorded
