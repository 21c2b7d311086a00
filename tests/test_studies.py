"""The four variant studies end to end on tiny generated MNIST / CIFAR-10 files.

Each table number is checked against the metrics JSONL, recomputed here with the standard
library (not with the study's own summarize code).
"""

import json
import statistics

import pytest
import torch
from fake_datasets import write_cifar, write_mnist

from muonlab.cli import main
from muonlab.data.paths import DataNotFoundError
from muonlab.experiments.variants import StudyConfig, run_study

TINY = dict(
    hidden=(16, 12), epochs=2, batch_size=16, lr=0.05, seeds=(0, 1), rank=4, ranks=(1, 2, 8)
)
SHAPES = [(16, 784), (12, 16), (10, 12)]  # (out, in) of the tiny MLP's three matrices


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=160, n_test=40)
    write_cifar(root, n_per_batch=16, n_test=40)
    return root


def read_runs(out):
    runs = []
    for path in sorted((out / "runs").glob("*/metrics.jsonl")):
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        runs.append(recs)
    return runs


def table_rows(out):
    lines = [ln for ln in (out / "table.md").read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def check_table_matches_jsonl(out):
    """Every table cell that is a number equals the number recomputed from the JSONL files."""
    runs = read_runs(out)
    by_opt = {}
    for recs in runs:
        config = recs[0]
        assert config["kind"] == "config" and recs[-1]["kind"] == "summary"
        by_opt.setdefault(config["optimizer"], []).append(recs)
    rows = table_rows(out)
    assert [r["optimizer"] for r in rows] == list(by_opt)
    dense = by_opt["Muon"][0][-1]["optimizer_state_bytes"]
    for row in rows:
        group = by_opt[row["optimizer"]]
        state = {recs[-1]["optimizer_state_bytes"] for recs in group}
        assert len(state) == 1  # the same across seeds
        state = state.pop()
        assert int(row["state bytes"].split()[0]) == state
        # the per-parameter state record adds up to the summary's measurement
        per_param = [r for r in group[0] if r["kind"] == "state"][-1]["state_bytes"]
        assert sum(per_param.values()) == state
        assert row["savings vs dense Muon"].startswith(f"{100 * (1 - state / dense):.1f}%")
        last = [[r for r in recs if r["kind"] == "epoch"][-1] for recs in group]
        accs = [100 * e["test_acc"] for e in last]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        assert row["final test acc % (mean ± std)"] == f"{statistics.mean(accs):.2f} ± {std:.2f}"
        losses = [e["train_loss"] for e in last]
        assert row["final train loss"] == f"{statistics.mean(losses):.4f}"
        times = [e["epoch_time_s"] for recs in group for e in recs if e["kind"] == "epoch"]
        assert row["time / epoch (s)"] == f"{statistics.mean(times):.2f}"
        assert int(row["seeds"]) == len(group)
        assert row["Δ test acc vs Muon, pp [95% CI], test, n: verdict"] == (
            "n/a" if row["optimizer"] == "Muon" else acc_difference(group, by_opt["Muon"]))
    return by_opt, rows


def acc_difference(group, muon):
    """Final test accuracy minus dense Muon's in pp, paired by seed, with its 95% interval
    (t quantiles of a printed table) and the verdict (fewer than 5 seeds: not resolved)."""
    def accs(runs):
        return {recs[0]["seed"]: 100 * [r for r in recs if r["kind"] == "epoch"][-1]["test_acc"]
                for recs in runs}
    a, b = accs(group), accs(muon)
    d = [a[s] - b[s] for s in sorted(a)]
    mean = statistics.mean(d)
    if len(d) == 1:
        return f"{mean:+.2f}, paired t, n=1: not resolved (one seed: no interval)"
    half = {2: 12.7062, 3: 4.3027}[len(d)] * statistics.stdev(d) / len(d) ** 0.5
    return (f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}], paired t, n={len(d)}: "
            f"not resolved (n={len(d)} < 5 report seeds)")


def check_epochs(by_opt, epochs, n_train, batch):
    steps_per_epoch = -(-n_train // batch)
    for group in by_opt.values():
        for recs in group:
            epoch_recs = [r for r in recs if r["kind"] == "epoch"]
            assert [e["epoch"] for e in epoch_recs] == list(range(1, epochs + 1))
            train = [r for r in recs if r["kind"] == "train"]
            assert len(train) == epochs * steps_per_epoch
            # the epoch's train_loss is the mean of that epoch's step losses
            first = [t["loss"] for t in train[:steps_per_epoch]]
            assert epoch_recs[0]["train_loss"] == pytest.approx(statistics.mean(first), rel=1e-5)


def lora_bytes(rank):
    """LoRA-Pre state (issue 7): (out + in) * r floats per matrix, r clamped to min(out, in)."""
    return sum((o + i) * min(rank, o, i) * 4 for o, i in SHAPES)


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_large_study_via_cli_on_mnist(data_dir, tmp_path):
    out = tmp_path / "large"
    argv = [
        "variants",
        "large",
        "--dataset",
        "mnist",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--hidden",
        "16",
        "12",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "0.05",
        "--seeds",
        "0",
        "1",
        "--rank",
        "4",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    by_opt, rows = check_table_matches_jsonl(out)
    assert list(by_opt) == ["AdamW", "Muon", "LoRA-Pre r=4", "Kronecker"]
    summary = by_opt["Muon"][0][-1]  # what affects timing is recorded and reported
    threads = torch.get_num_threads()  # set by the command: its --threads default
    assert summary["threads"] == threads
    assert f"torch threads {threads}." in (out / "table.md").read_text()
    check_epochs(by_opt, 2, 160, 16)
    state = {r["optimizer"]: int(r["state bytes"].split()[0]) for r in rows}
    n_params = sum(o * i for o, i in SHAPES)
    assert state["Muon"] == 4 * n_params  # one fp32 momentum buffer per weight
    assert state["AdamW"] >= 8 * n_params  # exp_avg + exp_avg_sq (+ step counters)
    assert state["LoRA-Pre r=4"] == lora_bytes(4)
    assert state["Kronecker"] < state["LoRA-Pre r=4"] < state["Muon"]
    # the generated classes are separable: dense Muon learns well above chance (10%)
    muon_acc = [
        [r for r in recs if r["kind"] == "epoch"][-1]["test_acc"] for recs in by_opt["Muon"]
    ]
    assert min(muon_acc) > 0.5
    assert is_png(out / "large.png")


@pytest.mark.parametrize("study", ["equal-memory", "rank-sweep", "hybrid"])
def test_other_studies_on_mnist(data_dir, tmp_path, study):
    out = tmp_path / study
    paths = run_study(
        StudyConfig(study, data_dir=str(data_dir), out=str(out), device="cpu", **TINY),
        log=lambda s: None,
    )
    by_opt, rows = check_table_matches_jsonl(out)
    assert is_png(paths["figure"]) and paths["figure"].name == f"{study}.png"
    state = {r["optimizer"]: int(r["state bytes"].split()[0]) for r in rows}
    if study == "equal-memory":
        (label,) = [k for k in state if k.startswith("LoRA-Pre")]
        rank = int(label.split("r=")[1].split()[0])
        kron = state["Kronecker"]
        # the chosen rank is the one whose LoRA-Pre state is nearest Kronecker's
        best = min(range(1, 17), key=lambda r: (abs(lora_bytes(r) - kron), r))
        assert rank == best and state[label] == lora_bytes(rank)
    elif study == "rank-sweep":
        assert list(state) == ["Muon", "Kronecker", "LoRA-Pre r=1", "LoRA-Pre r=2", "LoRA-Pre r=8"]
        for r in (1, 2, 8):
            assert state[f"LoRA-Pre r={r}"] == lora_bytes(r)
    else:
        assert list(state) == ["Muon", "Hybrid Kronecker", "LoRA-Pre r=4"]
        # dense momentum for the output layer (10 x 12), Kronecker factors elsewhere
        per_param = [r for r in by_opt["Hybrid Kronecker"][0] if r["kind"] == "state"][-1]
        assert per_param["state_bytes"]["head.weight"] == 10 * 12 * 4
        assert per_param["state_bytes"]["body.0.weight"] < 16 * 784 * 4 / 10
    check_epochs(by_opt, 2, 160, TINY["batch_size"])


def test_cifar10_end_to_end_on_real_pickle_format(data_dir, tmp_path):
    out = tmp_path / "cifar"
    argv = [
        "variants",
        "hybrid",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--hidden",
        "16",
        "12",
        "--epochs",
        "1",
        "--batch-size",
        "40",
        "--seeds",
        "0",
        "--rank",
        "2",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    by_opt, _ = check_table_matches_jsonl(out)
    check_epochs(by_opt, 1, 80, 40)
    config = by_opt["Muon"][0][0]["config"]
    assert config["study"]["dataset"] == "cifar10" and config["params"] == 16 * 3072 + 12 * 16 + 120


def test_missing_data_and_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # a user error: one line, exit code 2
        main(["variants", "large", "--dataset", "cifar10", "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "muonkit data fetch cifar10" in err and len(err.splitlines()) == 1
    with pytest.raises(DataNotFoundError, match="muonkit data fetch cifar10"):
        run_study(StudyConfig("large", dataset="cifar10", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="--epochs"):
        StudyConfig("large", epochs=0)
    with pytest.raises(ValueError, match="study"):
        StudyConfig("tiny")
    with pytest.raises(ValueError, match="momentum"):
        StudyConfig("large", momentum=1.0)
