"""Exact-match evaluation of a language model on task problems (:mod:`muonlab.data.tasks`).

Each problem's prompt (``"Question: {question}\\nAnswer:"``) is decoded greedily (argmax, no
sampling: the same weights give the same outputs), the output is cut where the answer ends (the
end of its ``####`` line, or a blank line), its answer extracted (the integer after ``####``,
else the last integer) and compared with the gold integer. Every evaluation writes
``predictions.jsonl``, one line per problem (``id, question, output, pred, gold, correct``), so
anyone can re-score a run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..data.tasks import Problem, answer_end, exact_match, extract_answer, prompt
from .files import write_whole

PREDICTIONS = "predictions.jsonl"


def greedy_generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    stop_id: int | None = None,
    stop: Callable[[list[int]], bool] | None = None,
) -> list[int]:
    """Up to ``max_new_tokens`` ids appended greedily (the most likely next token; ties: the
    lowest id) to ``prompt_ids`` by a model mapping ids (1, T) to logits (1, T, V), the context
    cropped to its ``config.block_size``. Generation stops after ``stop_id`` (not returned) or
    once ``stop(new_ids)`` is true. Returns the new ids. The model is run in eval mode and put
    back in the mode it was in. (:func:`greedy_generate_batch` of one prompt.)"""
    return greedy_generate_batch(model, [prompt_ids], max_new_tokens, stop_id, stop)[0]


@torch.no_grad()
def greedy_generate_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_id: int | None = None,
    stop: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """:func:`greedy_generate` of each prompt, decoded together: one forward per new token for
    all rows still decoding (right-padded: causal attention never lets a row read its padding).
    A model with a key/value cache (:meth:`muonlab.models.gpt.GPT.forward_cached`) feeds one
    new token per row while every sequence fits its context; otherwise each step recomputes
    each row's context (its last ``block_size`` ids)."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("greedy_generate needs non-empty prompts")
    seqs = [list(p) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(seqs)))
    longest = max(len(s) for s in seqs) + max_new_tokens - 1
    cached = hasattr(model, "forward_cached") and longest <= model.config.block_size
    was_training = model.training
    model.eval()
    try:
        next_logits = _cached_steps(model, seqs) if cached else _window_steps(model, seqs)
        for _ in range(max_new_tokens):
            if not live:
                break
            tokens = torch.argmax(next_logits(live), dim=-1).tolist()
            still = []
            for row, token in zip(live, tokens, strict=True):
                if token == stop_id:
                    continue
                new[row].append(token)
                seqs[row].append(token)
                if stop is None or not stop(new[row]):
                    still.append(row)
            live = still
    finally:
        model.train(was_training)
    return new


def _right_padded(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` as one (B, longest) tensor padded with id 0 on the right, and their lengths."""
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], device=device)


def _window_steps(model: nn.Module, seqs: list[list[int]]):
    """``next_logits(live)``: each live row's next-token logits from its last ``block_size``
    ids, recomputed: in one padded batch for a GPT, one row at a time for any other model
    (which may map only (1, T) ids)."""
    block_size, device = model.config.block_size, next(model.parameters()).device
    batched = hasattr(model, "forward_cached")

    def next_logits(live: list[int]) -> torch.Tensor:
        windows = [seqs[r][-block_size:] for r in live]
        if not batched:
            return torch.stack([model(torch.tensor([w], device=device))[0, -1] for w in windows])
        ids, lengths = _right_padded(windows, device)
        return model(ids)[torch.arange(len(live), device=device), lengths - 1]

    return next_logits


def _cached_steps(model: nn.Module, seqs: list[list[int]]):
    """``next_logits(live)``: each live row's next-token logits, the first call from its
    prompt (one forward of the padded prompts), each later one from its newest id alone
    through the key/value cache. Rows that ended are fed a dummy id until they are at most
    half of the batch, when the cache drops them."""
    device = next(model.parameters()).device
    slots = list(range(len(seqs)))  # the row each cache slot holds
    cache = model.new_cache(len(seqs))
    lengths = torch.zeros(len(seqs), dtype=torch.long, device=device)  # ids cached per slot

    def next_logits(live: list[int]) -> torch.Tensor:
        nonlocal slots, cache, lengths
        if 2 * len(live) <= len(slots):
            where = {r: i for i, r in enumerate(slots)}
            keep = torch.tensor([where[r] for r in live], device=device)
            slots, lengths = list(live), lengths[keep]
            cache = [(k[keep], v[keep]) for k, v in cache]
        alive, done = set(live), lengths.tolist()
        ids, ends = _right_padded([seqs[r][done[i]:] if r in alive else [0]
                                   for i, r in enumerate(slots)], device)
        logits = model.forward_cached(ids, lengths, cache)
        logits = logits[torch.arange(len(slots), device=device), ends - 1]
        lengths = lengths + ends
        where = {r: i for i, r in enumerate(slots)}
        return logits[[where[r] for r in live]]

    return next_logits


def evaluate_task(
    model: nn.Module,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    problems: Sequence[Problem],
    out_path: str | os.PathLike | None,
    max_new_tokens: int = 256,
    batch_size: int = 64,
) -> dict:
    """Greedy exact-match accuracy of ``model`` on ``problems``; writes one line per problem to
    the file ``out_path`` (None: none; ``id, question, output, pred, gold, correct``; conventionally
    ``RUN_DIR/predictions.jsonl``, :data:`PREDICTIONS`), atomically: through ``out_path.tmp``,
    replacing an earlier file of that name only once all problems are scored. ``encode`` and
    ``decode`` are the model's tokenizer (e.g. ``TokenData.encode`` / ``decode``). Problems are
    decoded ``batch_size`` at a time (:func:`greedy_generate_batch`; by prompt length, so a
    batch pads little), each as it would be alone. Returns ``{"accuracy", "correct", "n"}``."""
    if not problems:
        raise ValueError("evaluate_task needs at least one problem")
    prompts = [encode(prompt(p)) for p in problems]
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i]))
    outputs: dict[int, list[int]] = {}
    for at in range(0, len(order), batch_size):
        rows = order[at:at + batch_size]
        decoded = greedy_generate_batch(model, [prompts[i] for i in rows], max_new_tokens,
                                        stop=lambda new: answer_end(decode(new)) is not None)
        outputs.update(zip(rows, decoded, strict=True))
    lines, correct = [], 0
    for i, problem in enumerate(problems):
        output = decode(outputs[i])
        end = answer_end(output)
        output = output if end is None else output[:end]
        pred, gold = extract_answer(output), problem.gold
        right = exact_match(pred, gold)
        correct += right
        lines.append(json.dumps(dict(
            id=problem.id, question=problem.question, output=output, pred=pred, gold=gold,
            correct=right,
        )))
    if out_path is not None:  # None: score only (the ranks other than 0 under torchrun)
        write_whole(Path(out_path), "\n".join(lines) + "\n")
    return dict(accuracy=correct / len(problems), correct=correct, n=len(problems))
