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


@torch.no_grad()
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
    back in the mode it was in."""
    if not prompt_ids:
        raise ValueError("greedy_generate needs a non-empty prompt")
    block_size = model.config.block_size
    device = next(model.parameters()).device
    idx = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    new: list[int] = []
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits = model(idx[:, -block_size:])[0, -1]
            token = int(torch.argmax(logits))
            if token == stop_id:
                break
            new.append(token)
            if stop is not None and stop(new):
                break
            idx = torch.cat((idx, idx.new_tensor([[token]])), dim=1)
    finally:
        model.train(was_training)
    return new


def evaluate_task(
    model: nn.Module,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    problems: Sequence[Problem],
    out_path: str | os.PathLike,
    max_new_tokens: int = 256,
) -> dict:
    """Greedy exact-match accuracy of ``model`` on ``problems``; writes one line per problem to
    the file ``out_path`` (``id, question, output, pred, gold, correct``; conventionally
    ``RUN_DIR/predictions.jsonl``, :data:`PREDICTIONS`), atomically: through ``out_path.tmp``,
    replacing an earlier file of that name only once all problems are scored. ``encode`` and
    ``decode`` are the model's tokenizer (e.g. ``TokenData.encode`` / ``decode``). Returns
    ``{"accuracy", "correct", "n"}``."""
    if not problems:
        raise ValueError("evaluate_task needs at least one problem")
    lines, correct = [], 0
    for problem in problems:
        ids = greedy_generate(
            model, encode(prompt(problem)), max_new_tokens,
            stop=lambda new: answer_end(decode(new)) is not None,
        )
        output = decode(ids)
        end = answer_end(output)
        output = output if end is None else output[:end]
        pred, gold = extract_answer(output), problem.gold
        right = exact_match(pred, gold)
        correct += right
        lines.append(json.dumps(dict(
            id=problem.id, question=problem.question, output=output, pred=pred, gold=gold,
            correct=right,
        )))
    write_whole(Path(out_path), "\n".join(lines) + "\n")
    return dict(accuracy=correct / len(problems), correct=correct, n=len(problems))
