"""`muonkit demo`: a one-minute check that Muon trains: a character-level MLP language model
on the bundled tinyshakespeare, Muon on its hidden matrices and AdamW on the rest."""

from __future__ import annotations

import torch
from torch import nn

from muonkit.hybrid import MuonWithAuxAdam, hybrid_param_groups
from muonkit.schedules import apply_schedules, lr_multiplier, muon_momentum

from ..data.text import load_text
from ..train.checks import check_number


class CharMLP(nn.Module):
    """Predict the next character from the previous ``context`` ones (Bengio et al. 2003)."""

    def __init__(self, vocab: int, context: int = 8, embed: int = 32, hidden: int = 256):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.body = nn.Sequential(
            nn.Linear(context * embed, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embedding(idx).flatten(1)))


def run(steps: int = 300, batch: int = 256, context: int = 8, seed: int = 0,
        muon_options: dict | None = None) -> list[float]:
    """Train the demo model (``muon_options``: :class:`muonkit.MuonOptions` of its Muon group,
    the ``--ns-*`` flags); returns the training loss of every step."""
    for name, value in (("steps", steps), ("batch", batch), ("context", context)):
        check_number(name, value, integer=True, ge=1)
    torch.manual_seed(seed)
    tokens = load_text()
    data = torch.from_numpy(tokens.train.astype("int64"))
    model = CharMLP(tokens.vocab_size, context)
    optimizer = MuonWithAuxAdam(
        hybrid_param_groups(model, muon_lr=0.02, adamw_lr=3e-3, **(muon_options or {})))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        starts = torch.randint(len(data) - context - 1, (batch,), generator=generator)
        window = data[starts[:, None] + torch.arange(context + 1)]
        loss = nn.functional.cross_entropy(model(window[:, :-1]), window[:, -1])
        model.zero_grad(set_to_none=True)
        loss.backward()
        apply_schedules(
            optimizer,
            step,
            lr_mult=lr_multiplier(step, total_steps=steps, warmup_steps=steps // 10),
            muon_momentum=muon_momentum(step, warmup_steps=steps // 3),
        )
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}", flush=True)
    return losses


def print_summary(losses: list[float]) -> None:
    """Mean training loss of the first and of the last (up to) 20 steps."""
    n = min(20, len(losses))
    first, last = sum(losses[:n]) / n, sum(losses[-n:]) / n
    print(f"mean loss of the first {n} steps {first:.3f} -> last {n} steps {last:.3f}")
