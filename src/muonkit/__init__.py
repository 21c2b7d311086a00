"""muonkit: the Muon optimizer, its AdamW hybrid, distributed and memory-saving variants (the
library; torch alone). The experiments that compare them with AdamW, the training loop and the
``muonkit`` command are the lab, :mod:`muonlab` (``pip install 'muonkit[lab]'``).

(``orthogonalize`` is not re-exported here: ``muonkit.orthogonalize`` is the module.)"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from . import muon as _muon
from . import variants as _variants  # noqa: F401 (registers their options with the hybrid)
from .diagnostics import MuonWarning, describe
from .hybrid import MuonWithAuxAdam, hybrid_param_groups, split_params
from .migrate import migrate_adamw_state
from .muon import Muon, NonFiniteGradientError
from .options import MuonOptions
from .orthogonalize import newton_schulz, polar
from .qk_clip import QKClip, QKRows, qk_clip_
from .scaling import lr_scale


def _distributed_step(params):
    """The distributed step strategy for a group holding DTensors (FSDP2, HSDP, TP, EP),
    imported only when one appears, so the core never imports ``muonkit.distributed``."""
    from .functional import any_dtensor

    if not any_dtensor(params):
        return None
    from .distributed.muon import ShardedStep

    return ShardedStep()


_muon.register_step_strategy(_distributed_step)

_MOVED_TO_LAB = ("cli", "train", "models", "data", "experiments", "report")


class _MovedToLab(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``muonkit.train`` (and ``cli``, ``models``, ``data``, ``experiments``, ``report``, with
    their submodules) moved to :mod:`muonlab`: an old import path still gives the lab module,
    with a DeprecationWarning naming the new path. Nothing is imported until a user imports an
    old path, so the library itself never loads the lab."""

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if parts[0] != "muonkit" or len(parts) < 2 or parts[1] not in _MOVED_TO_LAB:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = "muonlab" + spec.name[len("muonkit"):]
        if spec.name.count(".") == 1:
            warnings.warn(f"{spec.name} moved to {new}; import it from there",
                          DeprecationWarning, stacklevel=3)
        module = importlib.import_module(new)
        self._specs = getattr(self, "_specs", {})
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):  # the lab module, already run: give its own spec back
        module.__spec__ = self._specs.pop(module.__spec__.name)


sys.meta_path.insert(0, _MovedToLab())

__all__ = [
    "Muon",
    "MuonOptions",
    "MuonWarning",
    "MuonWithAuxAdam",
    "NonFiniteGradientError",
    "QKClip",
    "QKRows",
    "describe",
    "hybrid_param_groups",
    "lr_scale",
    "migrate_adamw_state",
    "newton_schulz",
    "polar",
    "qk_clip_",
    "split_params",
]
__version__ = "0.1.0"
