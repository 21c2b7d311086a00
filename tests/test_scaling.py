import math

import pytest

from muonkit.scaling import lr_scale


@pytest.mark.parametrize(
    "rule, shape, expected",
    [
        ("keller", (1024, 256), 2.0),  # max(1, 4) ** 0.5
        ("keller", (256, 1024), 1.0),  # max(1, 1/4) ** 0.5
        ("max_dim", (256, 1024), 32.0),
        ("mup", (256, 1024), 0.5),
        ("mup", (1024, 256), 2.0),
        ("moonlight", (768, 3072), 0.2 * math.sqrt(3072)),
        ("none", (3, 5), 1.0),
    ],
)
def test_rule_values(rule, shape, expected):
    assert lr_scale(rule, shape) == pytest.approx(expected, rel=1e-12)


def test_uses_last_two_dims_and_callables():
    assert lr_scale("keller", (7, 400, 100)) == pytest.approx(2.0)
    assert lr_scale(lambda s: s[0] / s[1], (6, 3)) == 2.0


def test_unknown_rule_lists_the_valid_ones():
    with pytest.raises(ValueError, match="keller.*max_dim|max_dim.*keller"):
        lr_scale("sqrt", (4, 4))
