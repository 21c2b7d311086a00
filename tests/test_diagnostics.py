"""Is Muon actually running? muonkit.describe, the set-up warnings, the output layer of models
without a head name, the health of the steps, and what the loop records and prints of them."""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import muonkit
from muonkit import Muon, MuonWarning, MuonWithAuxAdam, describe, hybrid_param_groups
from muonkit.diagnostics import HealthMonitor
from muonkit.heads import output_layer
from muonkit.hybrid import param_roles
from muonlab.cli import main
from muonlab.train import TrainConfig, train


class Net(nn.Module):
    """An embedding, a fused QKV (c_attn, 2 heads), two same-shape matrices, an expert stack, a
    conv kernel and a head."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(10, 8)
        self.c_attn = nn.Linear(8, 24, bias=False)
        self.up = nn.Linear(8, 8, bias=False)
        self.down = nn.Linear(8, 8)
        self.experts = nn.Parameter(torch.randn(3, 4, 8))
        self.conv = nn.Conv1d(8, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8, 10, bias=False)


def messages(record):
    return [str(w.message) for w in record if issubclass(w.category, MuonWarning)]


def test_describe_lists_every_parameter_with_its_group_shape_orthogonalization_lr_and_wd():
    model = Net()
    groups = hybrid_param_groups(model, muon_lr=0.02, adamw_lr=1e-3, muon_weight_decay=0.1,
                                 adamw_weight_decay=0.01, qkv_split=6, experts=["experts"])
    d = describe(MuonWithAuxAdam(groups), model)
    rows = {r.name: r for r in d.rows}
    assert set(rows) == {n for n, _ in model.named_parameters()}
    qkv, up, conv, experts = rows["c_attn.weight"], rows["up.weight"], rows["conv.weight"], \
        rows["experts"]
    assert (qkv.optimizer, qkv.role, qkv.shape) == ("Muon", "muon_qkv", (24, 8))
    assert qkv.orthogonalized == "6 blocks (2 heads x Q, K, V) of (4, 8)"
    assert qkv.lr == pytest.approx(0.02)  # keller: max(1, 4/8) ** 0.5
    assert up.orthogonalized == "(8, 8)" and up.weight_decay == 0.1
    assert conv.orthogonalized == "(8, 24), kernel (8, 8, 3) flattened"
    assert experts.orthogonalized == "3 experts x (4, 8)" and experts.role == "muon_experts"
    assert rows["head.weight"].optimizer == "AdamW" and rows["head.weight"].orthogonalized == ""
    assert (rows["head.weight"].lr, rows["head.weight"].weight_decay) == (1e-3, 0.01)
    assert rows["down.bias"].weight_decay == 0.0
    # up and down are one batched Newton-Schulz call (same shape, same group); conv is alone
    assert list(d.batches.values()) == [["up.weight", "down.weight"]]
    assert up.batch == rows["down.weight"].batch != "" and conv.batch == ""
    muon = [p for g in groups if g["use_muon"] for p in g["params"]]
    adamw = [p for g in groups if not g["use_muon"] for p in g["params"]]
    assert d.totals == {"Muon": {"tensors": len(muon), "numbers": sum(p.numel() for p in muon)},
                        "AdamW": {"tensors": len(adamw),
                                  "numbers": sum(p.numel() for p in adamw)}}
    assert d.warnings == []
    table = str(d)
    assert table.splitlines()[0].split() == ["parameter", "group", "shape", "orthogonalized",
                                             "as", "batch", "lr", "wd"]
    assert "c_attn.weight" in table and "totals: Muon 5 tensors" in table
    json.dumps(d.as_record())


def test_describe_lr_is_the_group_lr_times_the_rule_for_each_shape():
    tall = nn.Parameter(torch.randn(32, 8))
    opt = Muon([tall], lr=0.1, lr_scaling="max_dim")
    assert describe(opt).rows[0].lr == pytest.approx(0.1 * math.sqrt(32))


def test_a_big_model_table_folds_its_layers():
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(40)])
    d = describe(MuonWithAuxAdam(hybrid_param_groups(model)), model)
    short = d.table(max_rows=10).splitlines()
    assert any(line.startswith("*.weight x39") for line in short)
    assert len(short) < 12 and len(str(d).splitlines()) > 80


def test_warnings_name_embeddings_and_the_output_layer_on_muon_once():
    model = Net()
    matrices = [p for n, p in model.named_parameters() if p.ndim == 2]
    opt = Muon(matrices)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = describe(opt, model)
        describe(opt, model)
    said = messages(caught)
    assert len(said) == 2 and said == first.warnings
    assert "embeddings are in a Muon group" in said[0] and "wte.weight" in said[0]
    assert "output layer is in a Muon group" in said[1] and "head.weight" in said[1]


def test_warnings_name_1d_params_and_an_empty_or_missing_muon_group():
    bias = nn.Parameter(torch.zeros(4))
    sgd = torch.optim.SGD([{"params": [bias], "use_muon": True}], lr=0.1)
    with pytest.warns(MuonWarning, match=r"1-D parameters .*: g0\.p0"):
        describe(sgd)
    w = nn.Parameter(torch.randn(4, 4))
    empty = MuonWithAuxAdam([{"params": [], "use_muon": True, "role": "muon"},
                             {"params": [w], "use_muon": False}])
    found = describe(empty, warn=False).warnings
    assert "Muon param group 0 (muon) is empty" in found
    assert any("no parameter is in a Muon group" in m for m in found)
    # every matrix of a linear classifier on an embedding goes to AdamW: Muon does nothing
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    with pytest.warns(MuonWarning, match="no parameter is in a Muon group"):
        describe(MuonWithAuxAdam(hybrid_param_groups(model)), model)


def test_bf16_newton_schulz_on_a_cpu_without_native_bf16_is_warned(monkeypatch):
    w = nn.Parameter(torch.randn(4, 4))
    opt = Muon([w], ns_dtype=torch.bfloat16)
    monkeypatch.setattr("muonkit.precision.cpu_native_bf16", lambda: True)
    assert describe(opt, warn=False).warnings == []
    monkeypatch.setattr("muonkit.precision.cpu_native_bf16", lambda: False)
    with pytest.warns(MuonWarning, match="ns_dtype asks for bf16 on a CPU without native bf16"):
        describe(opt)
    assert describe(Muon([w]), warn=False).warnings == []  # auto: fp32 there


# ------------------------------------------------------------------ the output layer


def test_the_output_layer_of_a_sequential_classifier_goes_to_adamw():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16),
                          nn.ReLU(), nn.Linear(16, 3), nn.Dropout(0.1))
    roles = param_roles(model)
    assert roles["5.weight"] == "head" and roles["1.weight"] == roles["3.weight"] == "muon"
    assert output_layer(model).reason == "the last Linear of the nn.Sequential"
    d = describe(MuonWithAuxAdam(hybrid_param_groups(model)), model, warn=False)
    assert {r.name: r.optimizer for r in d.rows}["5.weight"] == "AdamW" and d.warnings == []


def test_the_output_layer_of_a_model_without_a_head_name():
    class Custom(nn.Module):
        def __init__(self, tied):
            super().__init__()
            self.wte = nn.Embedding(10, 8)
            self.blocks = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
            self.fc_out = nn.Linear(8, 10, bias=False)
            if tied:
                self.fc_out.weight = self.wte.weight

    roles = param_roles(Custom(tied=False))
    assert roles["fc_out.weight"] == "head" and roles["blocks.1.weight"] == "muon"
    tied = Custom(tied=True)
    assert param_roles(tied) == {"wte.weight": "embedding", "blocks.0.weight": "muon",
                                 "blocks.0.bias": "vector", "blocks.1.weight": "muon",
                                 "blocks.1.bias": "vector"}
    assert output_layer(tied).name == "fc_out" and "tied" in output_layer(tied).reason


def test_the_hybrid_says_why_it_could_not_tell_the_output_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 10, 1))
    with pytest.warns(MuonWarning, match=r"could not tell the output layer of Sequential "
                      r"\(its last layer with parameters, 2 \(Conv2d\), is not a Linear"):
        groups = hybrid_param_groups(model)
    assert [len(g["params"]) for g in groups if g["use_muon"]] == [2]


# ------------------------------------------------------------------ health of the steps


def test_health_monitor_counts_muon_steps_and_warns_once_about_params_without_gradients():
    torch.manual_seed(0)
    used, unused = nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(6, 4))
    gain = nn.Parameter(torch.ones(4))
    opt = MuonWithAuxAdam([{"params": [used, unused], "use_muon": True, "role": "muon"},
                           {"params": [gain], "use_muon": False, "role": "vector"}])
    monitor = HealthMonitor(opt, {id(used): "used", id(unused): "unused"}, first_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(6):
            gain.grad = torch.randn(4)
            used.grad = torch.randn(6, 4) if step % 2 == 0 else None  # Muon steps 3 of 6
            opt.step()
    said = messages(caught)
    assert said == ["Muon parameters received no gradient in the first 3 steps (Muon never "
                    "updates them): unused"]
    assert monitor.record() == {"muon_stepped": {"muon": 0.5}}


def test_health_monitor_measures_update_rms_and_ns_error_at_an_armed_step():
    torch.manual_seed(0)
    w, gain = nn.Parameter(torch.randn(16, 8)), nn.Parameter(torch.ones(8))
    opt = MuonWithAuxAdam([{"params": [w], "use_muon": True, "role": "muon", "lr": 0.1,
                            "ns_dtype": torch.float32},
                           {"params": [gain], "use_muon": False, "role": "vector"}])
    monitor = HealthMonitor(opt, {id(w): "w"})
    w.grad, gain.grad = torch.randn(16, 8), torch.randn(8)
    opt.step()
    assert "update_rms" not in monitor.record()  # not armed: nothing copied
    monitor.arm()
    grad = torch.randn(16, 8)
    w.grad, gain.grad = grad.clone(), torch.randn(8)
    before_w, before_gain = w.detach().clone(), gain.detach().clone()
    opt.step()
    record = monitor.record()
    expect_w = (w.detach() - before_w).pow(2).mean().sqrt()
    expect_gain = (gain.detach() - before_gain).pow(2).mean().sqrt()
    assert record["update_rms"]["muon"] == pytest.approx(float(expect_w), rel=1e-5)
    assert record["update_rms"]["vector"] == pytest.approx(float(expect_gain), rel=1e-5)
    # the error of 5 Jordan steps on the gradient against its exact polar factor (SVD)
    U, _, Vh = torch.linalg.svd(grad.double(), full_matrices=False)
    ns = muonkit.newton_schulz(grad, steps=5, dtype=torch.float32).double()
    expected = torch.linalg.matrix_norm(ns - U @ Vh) / torch.linalg.matrix_norm(U @ Vh)
    assert record["ns_error"]["param"] == "w"
    assert record["ns_error"]["value"] == pytest.approx(float(expected), rel=1e-3)
    assert 0.01 < record["ns_error"]["value"] < 0.5  # Jordan's quintic is not exact
    monitor.close()


# ------------------------------------------------------------------ the loop and the CLI


class Source:
    def __init__(self):
        self.gen = torch.Generator().manual_seed(0)

    def next_batch(self):
        return torch.randn(8, 6, generator=self.gen), torch.randint(0, 3, (8,), generator=self.gen)


def classify(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def test_the_run_records_the_param_table_and_health_at_every_eval(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    opt = MuonWithAuxAdam(hybrid_param_groups(model))
    batches = [Source().next_batch()]
    train(model, opt, Source(), classify,
          TrainConfig(steps=4, eval_every=2, trackers=(), out_dir=str(tmp_path)),
          val_batches=batches)
    printed = capsys.readouterr().out
    assert printed.startswith("parameter") and "4.weight" in printed and "totals: Muon 2" in printed
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    table = recs[0]["params"][0]
    assert {r["name"]: r["optimizer"] for r in table["rows"]}["4.weight"] == "AdamW"
    assert table["totals"]["Muon"] == {"tensors": 2, "numbers": 6 * 16 + 16 * 16}
    health = [r for r in recs if r["kind"] == "health"]
    assert [r["step"] for r in health] == [2, 4]
    for r in health:
        assert r["muon_stepped"] == {"muon": 1.0}
        assert set(r["update_rms"]) == {"muon", "head", "vector"}
        assert r["ns_error"]["param"] in ("0.weight", "2.weight")
        assert 0 < r["ns_error"]["value"] < 1.1  # each singular value off by at most ~1
    quiet = tmp_path / "quiet"
    train(model, MuonWithAuxAdam(hybrid_param_groups(model)), Source(), classify,
          TrainConfig(steps=1, progress=False, trackers=(), out_dir=str(quiet)))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("native", [False, True])
def test_bf16_autocast_on_a_cpu_without_native_bf16_gets_one_warning(monkeypatch, capsys,
                                                                      native):
    monkeypatch.setattr("muonkit.precision.cpu_native_bf16", lambda: native)
    model = nn.Linear(6, 3)
    train(model, torch.optim.AdamW(model.parameters()), Source(), classify,
          TrainConfig(steps=2, dtype="bfloat16", progress=False, trackers=()))
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "without native bf16" in line]
    assert len(warned) == (0 if native else 1)
    if not native:
        assert warned[0].startswith("muonkit: warning: --dtype bfloat16 asks for bf16")


def test_train_command_prints_the_param_table(tmp_path, capsys):
    code = main(["train", "--optimizer", "muon", "--preset", "tiny", "--steps", "1",
                 "--batch-size", "2", "--eval-batches", "1", "--tracker", "none",
                 "--out", str(tmp_path / "run")])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("parameter") and "totals: Muon" in out
    assert "blocks.*.mlp.c_fc.weight x4" in out and "wte.weight" in out  # folded: 4 layers


def test_the_readme_and_library_page_show_what_describe_prints_and_warns():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = readme.split("```text\nparameter", 1)[1].split("```", 1)[0]
    model = nn.Sequential(nn.Linear(784, 256, bias=False), nn.ReLU(),
                          nn.Linear(256, 10, bias=False))
    assert "parameter" + shown == str(describe(MuonWithAuxAdam(hybrid_param_groups(model)),
                                               model)) + "\n"
    with pytest.warns(MuonWarning) as said:
        describe(Muon(model.parameters()), model)
    library = (Path(__file__).resolve().parents[1] / "docs" / "library.md").read_text()
    assert " ".join(f"`{said[0].message}`".split()) in " ".join(library.split())


def test_the_loop_says_once_which_muon_params_get_no_gradient_and_what_is_misplaced(capsys):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.spare = nn.Linear(6, 6), nn.Linear(6, 6, bias=False)
            self.out = nn.Linear(6, 3)

        def forward(self, x):
            return self.out(self.hidden(x))  # spare never gets a gradient

    model = Unused()
    opt = Muon([model.hidden.weight, model.spare.weight, model.out.weight])
    aux = torch.optim.AdamW([model.hidden.bias, model.out.bias])
    train(model, [opt, aux], Source(), classify,
          TrainConfig(steps=4, eval_every=2, progress=False, trackers=()))
    said = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert said == [
        "muonkit: warning: the output layer is in a Muon group: train it with AdamW "
        "(muonkit.hybrid_param_groups does): out.weight",
        "muonkit: warning: Muon parameters received no gradient in the first 4 steps (Muon "
        "never updates them): spare.weight",
    ]
