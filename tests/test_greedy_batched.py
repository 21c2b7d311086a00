"""Batched, key/value-cached greedy decoding gives what one-prompt-at-a-time decoding without a
cache gives (the reference below is the plain loop: the whole cropped context every step)."""

import json

import pytest
import torch

from muonlab.data.tasks import answer_end, arithmetic_problems, exact_match, extract_answer, prompt
from muonlab.models.gpt import GPT, preset_config
from muonlab.train.task_eval import evaluate_task, greedy_generate, greedy_generate_batch


def reference_greedy(model, prompt_ids, max_new_tokens, stop_id=None, stop=None):
    """The uncached loop: argmax of the last position of the last block_size ids."""
    idx, new = list(prompt_ids), []
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([idx[-model.config.block_size:]]))[0, -1]
            token = int(torch.argmax(logits))
            if token == stop_id:
                break
            new.append(token)
            if stop is not None and stop(new):
                break
            idx.append(token)
    return new


def random_model(rope: bool, block_size: int = 48, vocab: int = 11, seed: int = 0,
                 scale: float = 8.0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(preset_config("tiny", vocab_size=vocab, n_layer=2, n_embd=32, n_head=4,
                              block_size=block_size, rope=rope))
    with torch.no_grad():  # decisive logits: a random model at init is nearly uniform
        for p in model.parameters():
            p.mul_(scale)
    return model


def prompts(n: int, seed: int = 1, vocab: int = 11, longest: int = 20) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest + 1, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lengths]


@pytest.mark.parametrize("rope", [False, True])
def test_cached_forward_is_the_forward_of_the_whole_sequence(rope):
    model = random_model(rope, scale=1.0).eval()
    ids = torch.randint(0, 11, (3, 30))
    whole = model(ids)
    cache = model.new_cache(3)
    first = model.forward_cached(ids[:, :17], torch.zeros(3, dtype=torch.long), cache)
    rest = [model.forward_cached(ids[:, t:t + 1], torch.full((3,), t), cache)
            for t in range(17, 30)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("max_new", [12, 40])  # 40: past block_size, the cropped-context path
def test_batched_cached_greedy_equals_uncached_greedy_token_for_token(rope, max_new):
    model = random_model(rope)
    batch = prompts(9)
    stop = lambda new: len(new) >= 3 and new[-1] == 5  # noqa: E731 - rows end at other steps
    got = greedy_generate_batch(model, batch, max_new, stop_id=7, stop=stop)
    want = [reference_greedy(model, p, max_new, stop_id=7, stop=stop) for p in batch]
    assert got == want
    assert len({len(g) for g in got}) > 1  # rows ended at different steps
    model.train()
    assert greedy_generate(model, batch[0], max_new, 7, stop) == want[0]
    assert model.training  # put back in the mode it was in


def test_batched_evaluation_writes_the_predictions_of_one_at_a_time_decoding(tmp_path):
    """Problems decoded 4 at a time, grouped by prompt length, give the file that decoding
    each alone with the uncached loop gives (byte ids, a model that reads the task's text)."""
    model = random_model(rope=False, block_size=256, vocab=256, seed=3)
    problems = arithmetic_problems(10, seed=2)
    encode = lambda text: list(text.encode())  # noqa: E731
    decode = lambda ids: bytes(ids).decode(errors="replace")  # noqa: E731
    result = evaluate_task(model, encode, decode, problems, tmp_path / "p.jsonl", 24,
                           batch_size=4)
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [p.id for p in problems]
    for line, problem in zip(lines, problems):
        ids = reference_greedy(model, encode(prompt(problem)), 24,
                               stop=lambda new: answer_end(decode(new)) is not None)
        output = decode(ids)
        end = answer_end(output)
        output = output if end is None else output[:end]
        assert line["output"] == output
        assert line["pred"] == extract_answer(output)
        assert line["correct"] == exact_match(extract_answer(output), problem.gold)
    assert result["n"] == 10
