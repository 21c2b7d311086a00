"""The offline GSM8K-like task: generated problems whose worked steps recompute their answer,
fixed disjoint splits, GSM8K's jsonl, the exact-match scorer, greedy evaluation."""

import json
import re

import pytest
import torch
from torch import nn

from muonlab.data import tasks
from muonlab.data.text import byte_decode, byte_encode
from muonlab.models.gpt import GPT, GPTConfig
from muonlab.train.task_eval import evaluate_task, greedy_generate

STEP = re.compile(r"now has (\d+) ([-+x/]) (\d+) = (\d+) ")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b}


def recompute(problem: tasks.Problem) -> tuple[int, list[str]]:
    """The final amount of a generated problem, evaluated from its worked steps by hand (each
    step starts from the previous result, the first from the question's amount)."""
    *steps, final = problem.answer.split("\n")
    have = int(re.match(r"\w+ has (\d+) ", problem.question).group(1))
    ops = []
    for line in steps:
        a, op, b, c = STEP.search(line).groups()
        a, b, c = int(a), int(b), int(c)
        assert a == have, line
        if op == "/":
            assert a % b == 0, f"inexact division: {line}"
            value = a // b
        else:
            value = OPS[op](a, b)
        assert value == c >= 0, line
        have = c
        ops.append(op)
    assert final == f"#### {have}"
    return have, ops


def test_every_answer_is_what_its_steps_compute():
    problems = tasks.arithmetic_problems(300, seed=1)
    all_ops, lengths = set(), set()
    for p in problems:
        value, ops = recompute(p)
        assert p.gold == value
        all_ops |= set(ops)
        lengths.add(len(ops))
    assert all_ops == {"+", "-", "x", "/"} and lengths == {1, 2, 3, 4}
    assert len({p.question.split()[0] for p in problems}) > 10  # names vary
    assert len({p.question.split(".")[0].split()[-1] for p in problems}) > 10  # objects vary


def test_difficulty_bounds_steps_and_numbers(monkeypatch):
    easy = tasks.Difficulty(max_steps=2, max_number=9, max_factor=3)
    for p in tasks.arithmetic_problems(100, seed=2, difficulty=easy):
        _, ops = recompute(p)
        assert 1 <= len(ops) <= 2
        assert int(re.match(r"\w+ has (\d+) ", p.question).group(1)) <= 9
        for _, op, b, _ in STEP.findall(p.answer):
            assert int(b) <= (9 if op in "+-" else 3)
    with pytest.raises(ValueError, match="min_steps <= max_steps"):
        tasks.Difficulty(min_steps=3, max_steps=2)
    monkeypatch.setattr(tasks, "NAMES", ("Ava", "Ben"))  # under 100 distinct questions
    monkeypatch.setattr(tasks, "OBJECTS", ("apples",))
    tiny = tasks.Difficulty(max_steps=1, max_number=2, max_factor=2)
    assert len(tasks.arithmetic_problems(50, difficulty=tiny)) == 50
    with pytest.raises(ValueError, match="only .* distinct problems found"):
        tasks.arithmetic_problems(200, difficulty=tiny)


def test_splits_are_seeded_fixed_and_disjoint():
    train, test = tasks.task_splits(seed=0, n_train=300)
    assert len(test) == 500 and len(train) == 300
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.question for p in train + test}) == 800
    again_train, again_test = tasks.task_splits(seed=0, n_train=50)
    assert again_test == test and again_train == train[:50]  # test does not move with n_train
    _, other = tasks.task_splits(seed=1, n_train=0)
    assert len({p.question for p in other} & {p.question for p in test}) < 50


@pytest.mark.parametrize("text, expected", [
    ("She has 3 + 4 = 7 apples.\n#### 7", 7),
    ("#### 1,234", 1234),
    ("step 5 = 5\n####   -12\nthen 9", -12),
    ("first #### 3 then #### 4", 3),
    ("no mark: 3 apples, then 7-5 = 2 pears", 2),
    ("the total is 1,200.", 1200),
    ("2.5 kg, 4.0 kg, then 3.5", 4),
    ("#### none here, but 8 later", 8),
    ("no integer at all", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert tasks.extract_answer(text) == expected


def test_exact_match():
    assert tasks.exact_match(72, 72) and not tasks.exact_match(71, 72)
    assert not tasks.exact_match(None, 0)


NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                "many clips to her friends in May. How many clips did Natalia sell altogether "
                "in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
              "<<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def test_read_gsm8k(tmp_path):
    path = tmp_path / "test.jsonl"
    second = {"question": "How many?", "answer": "1,000 + 234 = 1,234\n#### 1,234"}
    path.write_text(json.dumps(NATALIA) + "\n\n" + json.dumps(second) + "\n")
    problems = tasks.read_gsm8k(path)
    assert [(p.question, p.answer) for p in problems] == [
        (NATALIA["question"], NATALIA["answer"]), (second["question"], second["answer"])]
    assert [p.gold for p in problems] == [72, 1234]
    assert [p.id for p in problems] == ["test.jsonl:1", "test.jsonl:3"]


@pytest.mark.parametrize("bad, message", [
    ('{"question": "q", "answer": ', "line 2 is not JSON"),
    ('{"question": "q"}', "line 2 is not an object with 'question' and 'answer'"),
    ('["q", "a"]', "line 2 is not an object"),
    ('{"question": "q", "answer": "7 apples"}', "line 2: the answer has no final '####"),
])
def test_read_gsm8k_names_the_bad_line(tmp_path, bad, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(NATALIA) + "\n" + bad + "\n")
    with pytest.raises(ValueError, match=re.escape(f"bad.jsonl: {message}")):
        tasks.read_gsm8k(path)


def tiny_gpt(seed=0, block_size=32):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=256, block_size=block_size, n_layer=1, n_head=2, n_embd=16))


def test_greedy_generate_is_top1_decoding_with_a_cropped_context():
    model = tiny_gpt()
    prompt_ids = byte_encode("Question: a prompt longer than the block size\nAnswer:").tolist()
    new = greedy_generate(model, prompt_ids, 12)
    reference = model.generate(torch.tensor([prompt_ids]), 12, top_k=1)[0, len(prompt_ids):]
    assert new == reference.tolist() and model.training  # mode given back
    stop_at = new[3]
    assert greedy_generate(model, prompt_ids, 12, stop_id=stop_at) == new[:new.index(stop_at)]
    assert greedy_generate(model, prompt_ids, 12, stop=lambda ids: len(ids) == 5) == new[:5]


class Scripted(nn.Module):
    """A 'model' whose greedy output after the prompt's last "Answer:" is ``replies[question]``
    byte by byte (then newlines): checks cutting and scoring without training anything."""

    def __init__(self, replies: dict[str, str]):
        super().__init__()
        self.config = GPTConfig(vocab_size=256, block_size=4096, n_layer=1, n_head=1, n_embd=1)
        self.weight = nn.Parameter(torch.zeros(1))
        self.replies = replies

    def forward(self, idx):
        text = byte_decode(idx[0].tolist())
        question = text[len("Question: "):text.index("\nAnswer:")]
        said = text[text.index("\nAnswer:") + len("\nAnswer:"):]
        reply = self.replies[question] + "\n" * 100
        logits = torch.zeros(1, idx.shape[1], 256)
        logits[0, -1, reply.encode()[len(said.encode())]] = 1.0
        return logits


def test_evaluate_task_cuts_scores_and_writes_predictions(tmp_path):
    problems = tasks.arithmetic_problems(3, seed=5)
    right, wrong = problems[0], problems[1]
    replies = {
        right.question: " " + right.answer + "\nQuestion: more text after the answer",
        wrong.question: f" I think #### {wrong.gold + 1}\n\nnoise",
        problems[2].question: " no number at all",
    }
    result = evaluate_task(Scripted(replies), lambda s: byte_encode(s).tolist(), byte_decode,
                           problems, tmp_path / "predictions.jsonl", max_new_tokens=300)
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert result == {"accuracy": 1 / 3, "correct": 1, "n": 3}
    assert [list(x) for x in lines] == [["id", "question", "output", "pred", "gold", "correct"]] * 3
    assert [x["output"] for x in lines] == [
        " " + right.answer, f" I think #### {wrong.gold + 1}", " no number at all"]
    assert [(x["pred"], x["gold"], x["correct"]) for x in lines] == [
        (right.gold, right.gold, True), (wrong.gold + 1, wrong.gold, False),
        (None, problems[2].gold, False)]
    assert [x["id"] for x in lines] == [p.id for p in problems]


def test_evaluate_task_on_an_untrained_gpt_is_deterministic(tmp_path):
    model = tiny_gpt(seed=3)
    problems = tasks.task_splits(seed=0, n_train=0, n_test=500)[1][:4]
    encode, decode = (lambda s: byte_encode(s).tolist()), byte_decode
    first = evaluate_task(model, encode, decode, problems, tmp_path / "a.jsonl", 16)
    second = evaluate_task(tiny_gpt(seed=3), encode, decode, problems, tmp_path / "b.jsonl", 16)
    assert first == second and first["n"] == 4
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [x["question"] for x in lines] == [p.question for p in problems]
    for x in lines:
        assert x["pred"] == tasks.extract_answer(x["output"]) and x["correct"] == (
            x["pred"] == x["gold"])
    assert not list(tmp_path.glob("*.tmp"))
