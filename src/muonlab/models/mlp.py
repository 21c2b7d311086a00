"""A multilayer perceptron classifier: flatten -> (Linear -> ReLU) per hidden size -> head.

The variant studies use ``784 -> hidden -> 10`` on MNIST and ``3072 -> 4096 -> 2048 -> 10``
on CIFAR-10 (the full size; the defaults of the studies are smaller, see
:mod:`muonlab.experiments.variants`). The output layer is the attribute ``head``, so
:func:`muonkit.hybrid.classify_params` and HybridKroneckerMuon recognize it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

PRESETS = {
    "mnist": dict(in_features=784, hidden=(1024, 512), num_classes=10),
    "cifar10": dict(in_features=3072, hidden=(4096, 2048), num_classes=10),
}


class MLP(nn.Module):
    """``in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes`` with ReLU between.

    Args:
        in_features: input size; inputs of any shape (N, ...) are flattened to (N, -1).
        hidden: hidden layer widths (may be empty: a linear classifier).
        num_classes: output size.
        bias: give every Linear a bias. The variant studies use ``bias=False`` so every
            parameter is a matrix and each optimizer under study trains the whole model.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (1024, 512),
        num_classes: int = 10,
        bias: bool = True,
    ):
        super().__init__()
        sizes = [in_features, *hidden]
        for name, value in [("in_features", in_features), ("num_classes", num_classes)] + [
            (f"hidden[{i}]", h) for i, h in enumerate(hidden)
        ]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MLP: {name} must be a positive int, got {value!r}")
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out, bias=bias), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], num_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x.flatten(1)))
