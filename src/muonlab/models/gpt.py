"""A nanoGPT-style GPT: the model the AdamW-vs-Muon comparison trains.

Architecture as in Karpathy's nanoGPT ``model.py`` (itself GPT-2, Radford et al. 2019): token
embeddings plus learned position embeddings (or rotary position embeddings on q and k, Su et
al., "RoFormer", 2021), ``n_layer`` pre-norm blocks ``x + attn(ln(x))``, ``x + mlp(ln(x))``,
causal self-attention through ``F.scaled_dot_product_attention`` (fused QKV projection), a GELU
MLP of width ``4 * n_embd``, a final LayerNorm and a linear head ``lm_head`` whose weight is
tied to the token embedding by default (Press & Wolf 2017).

Initialisation follows GPT-2: normal(0, 0.02) for linear and embedding weights, zero biases,
and the residual projections (``c_proj``) scaled by ``1 / sqrt(2 * n_layer)``.

A plain torch module: its optimizer is built by name outside it
(:func:`muonkit.registry.build_optimizer`; for the GPT, :func:`muonlab.train.gpt.gpt_optimizer`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from muonkit.options import unexpected_keyword
from muonkit.qk_clip import QKRows


@dataclass
class GPTConfig:
    """Shape and options of a :class:`GPT`.

    ``bias``: biases in Linear and LayerNorm layers (GPT-2 has them; nanoGPT's default is
    False, slightly better and faster). ``tie_weights``: ``lm_head.weight is wte.weight``.
    ``rope``: rotary position embeddings instead of the learned ``wpe`` table.
    """

    vocab_size: int = 50304
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    tie_weights: bool = True
    rope: bool = False
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.rope and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rope needs an even head size, got {self.n_embd // self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")


# tiny: nanoGPT's CPU run of config/train_shakespeare_char.py (README: --n_layer=4 --n_head=4
# --n_embd=128 --block_size=64 --dropout=0.0). small: that config's GPU size (6/6/384, block
# 256). gpt2-124m: GPT-2 small, vocabulary 50257 padded to 50304 (a multiple of 64) as nanoGPT.
# micro: a twelfth of tiny's parameters (67,824 with byte tokens, tiny 820,352), so a CPU
# trains it to hundreds of tokens per parameter (`muonkit horizon`) in minutes per run.
PRESETS: dict[str, dict] = {
    "micro": dict(n_layer=2, n_head=2, n_embd=48, block_size=64, dropout=0.0),
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.0),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
}


def preset_config(name: str, **overrides) -> GPTConfig:
    """The :class:`GPTConfig` of preset ``name``, with ``overrides`` (e.g. ``vocab_size``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown GPT preset {name!r}; valid presets: {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    for key in overrides:
        if key not in fields:
            raise unexpected_keyword("preset_config", key, fields)
    return GPTConfig(**{**PRESETS[name], **overrides})


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin of shape (seq_len, head_dim // 2) for rotary embeddings (RoFormer eq. 34)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (first half, second half) of the last dim of x (B, H, T, D) by position."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


def max_causal_logits(q: Tensor, k: Tensor) -> Tensor:
    """The largest pre-softmax logit ``q_i . k_j / sqrt(d)`` (j <= i) of each head over the
    batch, for q and k of shape (B, H, T, D): shape (H,), fp32. One sequence at a time, so it
    holds H * T * T scores at once."""
    T = q.shape[-2]
    allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    per_sequence = [
        (qb.float() @ kb.float().transpose(-2, -1)).div_(math.sqrt(q.shape[-1]))
        .masked_fill_(~allowed, float("-inf")).amax(dim=(1, 2))
        for qb, kb in zip(q, k, strict=True)
    ]
    return torch.stack(per_sequence).amax(dim=0)


class CausalSelfAttention(nn.Module):
    """Causal self-attention with a fused QKV projection ``c_attn`` (an ``nn.Linear``, weight
    (3C, C): rows [0, C) the queries, [C, 2C) the keys, [2C, 3C) the values; head h owns rows
    h*D to (h+1)*D of each, D = C / n_head, the order of the ``view`` in :meth:`_heads`).

    A QK-clip layer (:mod:`muonkit.qk_clip`): while ``record_max_logits`` is True, each forward
    adds its largest pre-softmax logit per head (after the rotary embedding, as the softmax
    sees it) to the running max ``max_logits`` (:func:`max_causal_logits`: one more QK^T
    product per layer, in fp32, outside the fused attention kernel, which hides its scores);
    ``reset_max_logits()`` clears it, ``qk_rows()`` says where the query and key rows are.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.record_max_logits = False
        self.max_logits: Tensor | None = None

    def qk_rows(self) -> QKRows:
        """The query rows [0, C) and key rows [C, 2C) of ``c_attn``: its weight, bias, and
        LoRA up-projection ``lora_B`` (:mod:`muonlab.models.lora`), so the sum is scaled."""
        c = self.c_attn
        n_embd = c.in_features
        tensors = tuple(t for t in (c.weight, c.bias, getattr(c, "lora_B", None))
                        if t is not None)
        return QKRows(q=tensors, k=tensors, head_dim=n_embd // self.n_head,
                      q_offset=0, k_offset=n_embd)

    def reset_max_logits(self) -> None:
        self.max_logits = None

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        q, k, v = self._heads(x, rotary)
        if self.record_max_logits:
            with torch.no_grad():
                seen = max_causal_logits(q, k)
            self.max_logits = seen if self.max_logits is None else self.max_logits.maximum(seen)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self._merge(y)

    def forward_cached(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None, pos: Tensor,
                       layer: tuple[Tensor, Tensor]) -> Tensor:
        """:meth:`forward` (eval mode) of tokens at positions ``pos`` (B, T), attending to
        the keys and values of every earlier position in ``layer`` (B, H, block_size, D),
        where theirs are written (decoding: nothing is recorded for QK-clip)."""
        q, k, v = self._heads(x, rotary)
        keys, values = layer
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        keys[rows, :, pos], values[rows, :, pos] = k.transpose(1, 2), v.transpose(1, 2)
        seen = torch.arange(keys.shape[2], device=x.device) <= pos[..., None]  # (B, T, S)
        return self._merge(F.scaled_dot_product_attention(q, keys, values,
                                                          attn_mask=seen[:, None]))

    def _heads(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None):
        """Queries, keys, values (B, H, T, D) of ``x`` (B, T, C), rotated if ``rotary``."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        return q, k, v

    def _merge(self, y: Tensor) -> Tensor:
        B, H, T, D = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, H * D)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), rotary)
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: Tensor, rotary, pos: Tensor, layer) -> Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), rotary, pos, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer; ``forward(idx)`` maps token ids (B, T) to logits (B, T, V)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = None if config.rope else nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        if config.rope:
            cos, sin = rotary_tables(
                config.block_size, config.n_embd // config.n_head, config.rope_base
            )
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(
                f"sequence length {T} exceeds block_size {self.config.block_size}; "
                "pass shorter sequences or build the model with a larger block_size"
            )
        x = self.wte(idx)
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        else:
            rotary = (self.rope_cos[:T], self.rope_sin[:T])
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rotary)
        return self.lm_head(self.ln_f(x))

    def new_cache(self, batch: int) -> list[tuple[Tensor, Tensor]]:
        """An empty key/value cache for :meth:`forward_cached`: per layer, keys and values
        (batch, n_head, block_size, head_dim) on the model's device, in its dtype."""
        c, p = self.config, self.wte.weight
        shape = (batch, c.n_head, c.block_size, c.n_embd // c.n_head)
        return [(p.new_zeros(shape), p.new_zeros(shape)) for _ in self.blocks]

    def forward_cached(self, idx: Tensor, start: Tensor, cache: list[tuple[Tensor, Tensor]]
                       ) -> Tensor:
        """Logits (B, T, V) of ``idx`` (B, T) placed at positions ``start[b]`` ..
        ``start[b] + T - 1`` of each row's sequence, whose earlier positions' keys and values
        ``cache`` (:meth:`new_cache`) holds; theirs are written to it. In eval mode this is
        :meth:`forward` of the whole sequences, computed incrementally (greedy decoding:
        :mod:`muonlab.train.task_eval`); positions must stay below ``block_size``.
        A row's keys past its own positions are never read, so rows of different lengths
        share a batch right-padded."""
        pos = start[:, None] + torch.arange(idx.shape[1], device=idx.device)
        if int(pos.max()) >= self.config.block_size:
            raise ValueError(f"position {int(pos.max())} is past block_size "
                             f"{self.config.block_size}; the cache holds one context")
        x = self.wte(idx)
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe(pos)
        else:
            rotary = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])
        x = self.drop(x)
        for block, layer in zip(self.blocks, cache, strict=True):
            x = block.forward_cached(x, rotary, pos, layer)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T), cropping the context to
        ``block_size``; ``top_k`` keeps only the k most likely tokens (nanoGPT's sample.py)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size :])[:, -1, :].float() / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters counted once (tied head = embedding); without ``wpe`` if non_embedding.

        As nanoGPT's ``get_num_params``: the token embedding stays in the count because, tied,
        it is also the head's matmul weight.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def estimate_flops_per_token(self) -> float:
        """Training FLOPs per token: ``6 N + 12 L C T`` (PaLM, Chowdhery et al. 2022, app. B).

        6N for the forward and backward matmuls of N parameters, plus attention's QK^T and AV
        (2 * 2 * T * C per layer forward, times 3 with backward) at the full context T.
        """
        c = self.config
        return 6.0 * self.num_params() + 12.0 * c.n_layer * c.n_embd * c.block_size
