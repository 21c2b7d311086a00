import inspect
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from torch import nn

from muonkit import Muon, MuonOptions, MuonWithAuxAdam, hybrid_param_groups
from muonkit.muon import MUON_DEFAULTS
from muonkit.options import MuonOptionValues, options_table
from muonkit.variants import HybridKroneckerMuon, KroneckerMuon, LoRAPreMuon, NorMuon

# Option defaults a class documents as its own (the variants' momentum follows their papers).
OWN_DEFAULTS = {Muon: {}, LoRAPreMuon: {"momentum": 0.9}, KroneckerMuon: {"momentum": 0.9}}
# A value other than the default for every option (all valid).
OTHER_VALUES = dict(
    momentum=0.5,
    nesterov=False,
    momentum_form="ema",
    weight_decay=0.1,
    ns_steps=3,
    ns_coefficients="polar_express",
    ns_dtype=torch.float64,
    lr_scaling="mup",
    ns_split=2,
    ns_gram=False,
    ns_precondition="aol",
    ns_compile=True,
    ns_batch_dims=1,
    maximize=True,
    mixing="gradient_heavy",
    transposed=True,
)


def test_other_values_cover_every_option():
    assert set(OTHER_VALUES) == set(MuonOptions.names())
    assert all(OTHER_VALUES[k] != v for k, v in MuonOptions.defaults().items())


@pytest.mark.parametrize("cls", [*OWN_DEFAULTS, NorMuon])
def test_class_signatures_agree_with_muon_options(cls):
    signature = inspect.signature(cls).parameters
    expected = {**MuonOptions.defaults(), **OWN_DEFAULTS.get(cls, {})}
    got = {n: signature[n].default for n in MuonOptions.names() if n in signature}
    assert got == expected  # a missing keyword or a different default fails here
    positional = [n for n, p in signature.items() if p.kind is not p.KEYWORD_ONLY]
    assert positional == ["params", "lr"]  # keyword-only past lr, as torch.optim


def test_option_values_type_lists_every_field_with_its_type():
    # the TypedDict behind **option_values (IDE completion, type checkers) is the fields
    typed = {n: t.__forward_arg__ for n, t in MuonOptionValues.__annotations__.items()}
    assert typed == {f.name: f.type for f in fields(MuonOptions)}


POSITIONAL_CALLS = {
    "Muon": lambda p: Muon(p, 0.02, 0.95),
    "NorMuon": lambda p: NorMuon(p, 0.02, 0.95),
    "LoRAPreMuon": lambda p: LoRAPreMuon(p, 0.02, 0.9),
    "KroneckerMuon": lambda p: KroneckerMuon(p, 0.02, 0.9),
    "MuonWithAuxAdam": lambda p: MuonWithAuxAdam([dict(params=p, use_muon=True)], "skip"),
    "HybridKroneckerMuon": lambda p: HybridKroneckerMuon(nn.Linear(4, 4, bias=False), ["0"]),
}


@pytest.mark.parametrize("name", sorted(POSITIONAL_CALLS))
def test_options_past_lr_are_keyword_only(name):
    with pytest.raises(TypeError, match="positional argument"):
        POSITIONAL_CALLS[name]([nn.Parameter(torch.randn(4, 4))])


@pytest.mark.parametrize("cls, typo, closest", [
    (Muon, "ns_step", "ns_steps"), (NorMuon, "beta", "beta2"), (LoRAPreMuon, "rnak", "rank"),
    (KroneckerMuon, "momentun", "momentum"),
])
def test_an_unknown_keyword_is_a_type_error_naming_the_closest(cls, typo, closest):
    with pytest.raises(TypeError, match=rf"{cls.__name__}\(\) got an unexpected keyword "
                       rf"argument '{typo}'; did you mean {closest}\b"):
        cls([nn.Parameter(torch.randn(4, 4))], lr=0.1, **{typo: 3})


def test_help_lists_every_option_from_its_declaration():
    for cls in (MuonOptions, Muon, LoRAPreMuon):
        for f in fields(MuonOptions):
            summary = f.metadata["summary"].replace("`", "")
            assert f"{f.name} (" in cls.__doc__ and summary in cls.__doc__
    assert "momentum (0.9): momentum coefficient" in LoRAPreMuon.__doc__


def test_library_page_options_table_is_the_declared_one():
    readme = (Path(__file__).parents[1] / "docs" / "library.md").read_text()
    missing = [row for row in options_table().splitlines() if row not in readme.splitlines()]
    assert not missing, (
        "docs/library.md's options table differs from MuonOptions' declarations; paste the rows of "
        "`python -c 'from muonkit.options import options_table; print(options_table())'`")


def test_ns_dtype_by_name_is_the_dtype():
    assert MuonOptions(ns_dtype="float32") == MuonOptions(ns_dtype=torch.float32)
    assert MuonOptions(ns_dtype="bfloat16").ns_dtype is torch.bfloat16


@pytest.mark.parametrize("name, word, value", [
    ("ns_steps", "3", 3), ("ns_coefficients", "polar_express", "polar_express"),
    ("ns_dtype", "float64", "float64"), ("ns_gram", "auto", None), ("ns_gram", "false", False),
    ("ns_precondition", "aol", "aol"),
])
def test_options_read_from_words(name, word, value):
    assert MuonOptions.from_word(name, word) == value
    assert MuonOptions.word_of(name, value) == word


@pytest.mark.parametrize("name, word, match", [
    ("ns_steps", "-1", "ns_steps must be an int >= 0"), ("ns_steps", "2.5", "an integer"),
    ("ns_dtype", "fp32", "invalid choice 'fp32'"), ("ns_gram", "yes", "invalid choice"),
    ("ns_precondition", "AOL", "invalid choice 'AOL'"),
])
def test_bad_words_are_refused(name, word, match):
    with pytest.raises(ValueError, match=match):
        MuonOptions.from_word(name, word)


def test_muon_defaults_are_the_options_defaults():
    assert MUON_DEFAULTS == dict(lr=0.02, **MuonOptions.defaults(), use_muon=True)
    opt = MuonWithAuxAdam([dict(params=[nn.Parameter(torch.randn(4, 4))], use_muon=True)])
    assert MuonOptions.from_group(opt.param_groups[0]) == MuonOptions()


@pytest.mark.parametrize("name", sorted(OTHER_VALUES))
@pytest.mark.parametrize("cls", [Muon, LoRAPreMuon, KroneckerMuon])
def test_keyword_and_options_object_give_the_same_groups(cls, name):
    if cls is not Muon and name in ("ns_split", "momentum_form", "ns_batch_dims", "transposed"):
        pytest.skip("checked by the variants' own validation")
    shape = (2, 16, 16) if name == "ns_batch_dims" else (16, 16)
    params = [nn.Parameter(torch.randn(shape))]
    by_keyword = cls(params, lr=0.1, **{name: OTHER_VALUES[name]})
    by_object = cls(params, lr=0.1, options=MuonOptions(**{name: OTHER_VALUES[name]}))
    group_kw, group_obj = by_keyword.param_groups[0], by_object.param_groups[0]
    assert group_kw[name] == group_obj[name] == OTHER_VALUES[name]
    assert MuonOptions.from_group(group_obj).replace(momentum=group_kw["momentum"]) == (
        MuonOptions.from_group(group_kw)
    )


def test_options_and_the_same_keyword_together_are_refused():
    params = [nn.Parameter(torch.randn(4, 4))]
    with pytest.raises(ValueError, match=r"\['momentum'\].*not both"):
        Muon(params, momentum=0.5, options=MuonOptions(momentum=0.9))
    with pytest.raises(ValueError, match="MuonOptions"):
        Muon(params, options=dict(momentum=0.5))


def test_a_group_may_carry_an_options_object():
    a, b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(6, 4))
    opt = Muon([dict(params=[a]), dict(params=[b], options=MuonOptions(ns_split=2))], lr=0.1)
    assert opt.param_groups[1]["ns_split"] == 2 and "options" not in opt.param_groups[1]
    with pytest.raises(ValueError, match="both as keys and in options"):
        opt.add_param_group(
            dict(params=[nn.Parameter(torch.randn(2, 2))], momentum=0.1, options=MuonOptions())
        )


def test_hybrid_groups_take_an_options_object():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 4))
    options = MuonOptions(momentum_form="ema", weight_decay=0.01)
    opt = MuonWithAuxAdam(hybrid_param_groups(model, options=options))
    muon_group = next(g for g in opt.param_groups if g["use_muon"])
    assert MuonOptions.from_group(muon_group) == options
    with pytest.raises(ValueError, match="weight_decay"):
        hybrid_param_groups(model, options=options, muon_weight_decay=0.1)
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Linear(8, 4, bias=False))
    kron = HybridKroneckerMuon(model, options=MuonOptions(nesterov=False))
    assert kron.param_groups[0]["nesterov"] is False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (dict(nesterov="yes"), "nesterov"),
        (dict(momentum_form="adam"), "momentum_form.*standard"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(ns_steps=2.0), "ns_steps"),
        (dict(ns_steps=True), "ns_steps"),
        (dict(ns_coefficients="cubic"), "ns_coefficients.*jordan"),
        (dict(ns_dtype="bf16"), "ns_dtype"),
        (dict(lr_scaling="sqrt"), "lr_scaling"),
        (dict(ns_split=0), "ns_split"),
        (dict(ns_gram="auto"), "ns_gram"),
        (dict(ns_compile=None), "ns_compile"),
        (dict(transposed="yes"), "transposed"),
    ],
)
def test_options_validate_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MuonOptions(**kwargs)


def test_from_group_fills_missing_options_with_defaults():
    # a param group saved before an option existed loads with that option's default
    old_group = dict(lr=0.1, momentum=0.8, nesterov=False, params=[0])
    assert MuonOptions.from_group(old_group) == MuonOptions(momentum=0.8, nesterov=False)
