"""The one training loop (``loop``) and its GPT client (``gpt``, the ``muonkit train`` command)."""

from .loop import (
    MetricsLogger,
    TrainConfig,
    TrainResult,
    accumulate_gradients,
    autocast_context,
    optimizer_state_bytes,
    resolve_dtype,
    train,
)

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
