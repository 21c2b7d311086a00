"""The one training loop (``loop``: restore, step, after-step; ``config``, ``files``,
``measure``, ``step``, ``provenance`` hold its pieces) and its GPT client (``gpt``)."""

from .config import TrainConfig, TrainResult, resolve_dtype
from .files import MetricsLogger
from .loop import train
from .measure import optimizer_state_bytes
from .step import accumulate_gradients, autocast_context

__all__ = [
    "MetricsLogger",
    "TrainConfig",
    "TrainResult",
    "accumulate_gradients",
    "autocast_context",
    "optimizer_state_bytes",
    "resolve_dtype",
    "train",
]
