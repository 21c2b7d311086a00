"""Which submodules of a model are its output head, decided in one place.

A head is a module whose attribute name (the last part of its dotted name) is one of
``HEAD_NAMES``: ``lm_head`` (nanoGPT, Hugging Face), ``head`` (timm), ``output`` (Llama),
``classifier`` (torchvision). The hybrid trains heads with AdamW
(:func:`muonkit.hybrid.classify_params`); HybridKroneckerMuon keeps their momentum dense.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

HEAD_NAMES = ("lm_head", "head", "output", "classifier")


def head_modules(model: nn.Module, head_names: Sequence[str] = HEAD_NAMES) -> list[nn.Module]:
    """The submodules of ``model`` (not ``model`` itself) named like a head, in module order."""
    return [
        module
        for name, module in model.named_modules()
        if name and name.rsplit(".", 1)[-1] in head_names
    ]
