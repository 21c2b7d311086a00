"""Which submodules of a model are its output head, decided in one place.

A head is a module whose attribute name (the last part of its dotted name) is one of
``HEAD_NAMES``: ``lm_head`` (nanoGPT, Hugging Face), ``head`` (timm), ``output`` (Llama),
``classifier`` (torchvision). A model with no module so named (an ``nn.Sequential``
classifier, a model of the user's own) has its output layer found by :func:`output_layer`:
its last layer with parameters when that is a Linear (the one whose output feeds the loss);
an output layer tied to an embedding is the embedding's weight. The hybrid trains heads with
AdamW (:func:`muonkit.hybrid.classify_params`); HybridKroneckerMuon keeps their momentum dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

HEAD_NAMES = ("lm_head", "head", "output", "classifier")


@dataclass(frozen=True)
class OutputLayer:
    """The output layer :func:`output_layer` found (``name``, ``module``), or None for both,
    with ``reason``: how it was found, or why it could not tell. ``doubt``: it could not
    tell, and a hidden matrix may be the output layer (worth a warning)."""

    name: str | None
    module: nn.Module | None
    reason: str
    doubt: bool = False


def is_transposed_linear(module: nn.Module) -> bool:
    """True for a Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2's attention and MLP
    layers: ``y = x @ W + b`` with W stored ``(in, out)``), or a subclass; found by class name
    and module, so muonkit never imports transformers."""
    return any(
        c.__name__ == "Conv1D" and c.__module__.startswith("transformers.")
        for c in type(module).__mro__
    )


def is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a Hugging Face ``Conv1D`` (:func:`is_transposed_linear`)."""
    return isinstance(module, nn.Linear) or is_transposed_linear(module)


def output_layer(model: nn.Module) -> OutputLayer:
    """The output layer of a model that names no head: its last submodule with parameters of
    its own (registration order: an ``nn.Sequential``'s order of evaluation, so in a
    Sequential classifier the Linear whose output feeds the loss, activations and dropout
    after it aside) when that is a Linear, an attribute of the model itself or of an
    ``nn.Sequential`` (not buried in a block), and not the model's only matrix; a Linear whose
    weight is an embedding's (tied) is named as such. Otherwise ``module`` is None and
    ``reason`` says why it could not tell."""
    layers = [(name, m) for name, m in model.named_modules()
              if name and any(p.requires_grad for p in m.parameters(recurse=False))]
    embeddings = {id(m.weight) for m in model.modules()
                  if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    tied = [(n, m) for n, m in layers if is_linear(m) and id(m.weight) in embeddings]
    if tied:
        name, module = tied[-1]
        return OutputLayer(name, module, "tied to the embedding (trains with it)")
    if not layers:
        return OutputLayer(None, None, "the model has no submodule with parameters")
    name, module = layers[-1]
    matrices = [m for _, m in layers if any(p.ndim >= 2 for p in m.parameters(recurse=False))]
    parents = [model.get_submodule(name.rsplit(".", 1)[0])] if "." in name else []
    nested = [p for p in parents if not isinstance(p, nn.Sequential)]
    if is_linear(module) and len(matrices) > 1 and not nested:
        where = "nn.Sequential" if isinstance(model, nn.Sequential) else "model"
        return OutputLayer(name, module, f"the last Linear of the {where}")
    if is_linear(module) and len(matrices) == 1:
        return OutputLayer(None, None, f"{name} is the model's only matrix (kept on Muon)")
    if is_linear(module):
        reason = (f"its last layer with parameters, {name}, is a Linear inside "
                  f"{type(parents[0]).__name__}, not the model's own nor an nn.Sequential's")
    else:
        reason = (f"its last layer with parameters, {name} ({type(module).__name__}), is not "
                  "a Linear")
    if embeddings:  # the output is most likely the embedding's weight, which is AdamW's already
        return OutputLayer(None, None, reason + "; an output computed from the embedding's "
                           "weight trains with it")
    return OutputLayer(None, None, reason + "; if the output layer is another, name it with "
                       "head_names=(...)", doubt=True)


def head_modules(model: nn.Module, head_names: Sequence[str] = HEAD_NAMES) -> list[nn.Module]:
    """The submodules of ``model`` (not ``model`` itself) named like a head, in module order;
    with none so named, the output layer :func:`output_layer` finds (if any)."""
    named = [
        module
        for name, module in model.named_modules()
        if name and name.rsplit(".", 1)[-1] in head_names
    ]
    if named:
        return named
    found = output_layer(model).module
    return [] if found is None else [found]
