"""Grade-school arithmetic word problems in GSM8K's format, and their exact-match scoring.

A problem is a ``question`` and an ``answer`` written as GSM8K writes it (Cobbe et al. 2021,
"Training Verifiers to Solve Math Word Problems"): worked steps, one per line, then a final
line ``#### <integer>``. Two sources give the same records (:class:`Problem`):

* :func:`arithmetic_problems`: generated offline from a seed, 1-4 reasoning steps with
  ``+ - x /`` on non-negative integers (division exact), names, objects and verbs drawn from the
  lists below, difficulty set by a :class:`Difficulty`. Each step line states its arithmetic as
  ``a op b = c`` (GSM8K's ``<<a*b=c>>`` calculator annotations are left out).
  :func:`task_splits` cuts fixed train and test sets from one seeded stream, no question in both.
* :func:`read_gsm8k`: GSM8K's own jsonl (one ``{"question", "answer"}`` object a line), so the
  same scorer runs on the real benchmark when a user has the file.

Scoring (:func:`extract_answer`, :func:`exact_match`): the answer of a text is the integer after
its first ``####``, else its last integer; a prediction is right when it equals the gold answer.
The model sees :func:`prompt` (``"Question: {question}\\nAnswer:"``) and, in fine-tuning,
:func:`example_text` (the prompt, a space, the worked answer, a blank line).
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

NAMES = (
    "Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kofi",
    "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Vera",
    "Wei", "Yara", "Zoe",
)
OBJECTS = (
    "apples", "marbles", "stickers", "pencils", "cookies", "books", "shells", "coins", "stamps",
    "cards", "eggs", "balloons", "crayons", "buttons", "oranges", "beads", "toy cars", "cupcakes",
)
# How the four operations are told: gains (alone or from a giver), losses, growth, sharing.
GAIN_VERBS = ("buys", "finds", "picks up", "wins", "collects")
GIFT_VERBS = ("gives", "hands", "sends")
LOSS_VERBS = ("gives away", "sells", "loses", "uses", "eats")
GROUPS = ("bags", "boxes", "piles", "jars", "baskets")
GROWTHS = (
    "Then {name} ends up with {k} times as many {things} as before.",
    "The number of {things} {name} has grows to {k} times what it was.",
)

ANSWER_MARK = "####"
PROMPT = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class Difficulty:
    """How hard generated problems are: ``min_steps``..``max_steps`` operations (1-4 reasoning
    steps as GSM8K's easier half), starting amounts and added/removed amounts in
    1..``max_number``, multipliers and divisors in 2..``max_factor``."""

    min_steps: int = 1
    max_steps: int = 4
    max_number: int = 50
    max_factor: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"difficulty needs 1 <= min_steps <= max_steps, got {self.min_steps}, "
                f"{self.max_steps}"
            )
        if self.max_number < 2 or self.max_factor < 2:
            raise ValueError(
                f"difficulty needs max_number >= 2 and max_factor >= 2, got {self.max_number}, "
                f"{self.max_factor}"
            )


@dataclass(frozen=True)
class Problem:
    """One task problem: ``id`` (stable: generator seed and index, or file and line),
    ``question``, ``answer`` (worked steps, then ``#### <integer>``)."""

    id: str
    question: str
    answer: str

    @property
    def gold(self) -> int:
        """The integer of the answer's ``####`` line."""
        return extract_answer(self.answer)


def _step(rng: random.Random, name: str, things: str, have: int, d: Difficulty):
    """One operation on ``have`` ``things``: (question sentence, answer line, new amount)."""
    divisors = [k for k in range(2, d.max_factor + 1) if have % k == 0]
    ops = ["+", "x"] + (["-"] if have >= 2 else []) + (["/"] if divisors else [])
    op = rng.choice(ops)
    if op == "+":
        b = rng.randint(1, d.max_number)
        if rng.random() < 0.5:
            said = f"{name} {rng.choice(GAIN_VERBS)} {b} more {things}."
        else:
            giver = rng.choice([other for other in NAMES if other != name])
            said = f"{giver} {rng.choice(GIFT_VERBS)} {name} {b} more {things}."
        new = have + b
    elif op == "-":
        b = rng.randint(1, min(have - 1, d.max_number))
        said = f"{name} {rng.choice(LOSS_VERBS)} {b} of the {things}."
        new = have - b
    elif op == "x":
        b = rng.randint(2, d.max_factor)
        said = rng.choice(GROWTHS).format(name=name, k=b, things=things)
        new = have * b
    else:
        b = rng.choice(divisors)
        said = (f"{name} puts the {things} into {b} {rng.choice(GROUPS)} with the same number "
                "in each and keeps one of them.")
        new = have // b
    return said, f"{name} now has {have} {op} {b} = {new} {things}.", new


def arithmetic_problem(rng: random.Random, difficulty: Difficulty, problem_id: str) -> Problem:
    """One generated word problem, drawn from ``rng``."""
    name, things = rng.choice(NAMES), rng.choice(OBJECTS)
    have = rng.randint(1, difficulty.max_number)
    sentences, lines = [f"{name} has {have} {things}."], []
    for _ in range(rng.randint(difficulty.min_steps, difficulty.max_steps)):
        said, line, have = _step(rng, name, things, have, difficulty)
        sentences.append(said)
        lines.append(line)
    sentences.append(f"How many {things} does {name} have now?")
    answer = "\n".join([*lines, f"{ANSWER_MARK} {have}"])
    return Problem(problem_id, " ".join(sentences), answer)


def arithmetic_problems(
    n: int, seed: int = 0, difficulty: Difficulty = Difficulty()
) -> list[Problem]:
    """``n`` distinct generated problems (no question twice), the same for the same ``seed``
    and ``difficulty``; ids ``arithmetic-{seed}-{i}`` number the stream, repeats skipped.
    ValueError when the difficulty has fewer than ``n`` distinct questions within reach."""
    if n < 0:
        raise ValueError(f"number of problems must be >= 0, got {n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Problem] = []
    draws = 0
    while len(out) < n:
        if draws >= 20 * n + 1000:
            raise ValueError(
                f"only {len(out)} distinct problems found in {draws} draws at {difficulty}; "
                "ask for fewer problems or raise max_number / max_steps"
            )
        problem = arithmetic_problem(rng, difficulty, f"arithmetic-{seed}-{draws}")
        draws += 1
        if problem.question not in seen:
            seen.add(problem.question)
            out.append(problem)
    return out


def task_splits(
    seed: int = 0, n_train: int = 5000, n_test: int = 500, difficulty: Difficulty = Difficulty()
) -> tuple[list[Problem], list[Problem]]:
    """Fixed (train, test) problems: the first ``n_test`` distinct problems of the ``seed``'s
    stream are the test set (so it does not change with ``n_train``), the next ``n_train`` the
    training set; no question is in both."""
    problems = arithmetic_problems(n_test + n_train, seed, difficulty)
    test, train = problems[:n_test], problems[n_test:]
    shared = {p.question for p in test} & {p.question for p in train}
    assert not shared, f"{len(shared)} questions in both splits"
    return train, test


def read_gsm8k(path: str | os.PathLike) -> list[Problem]:
    """GSM8K's jsonl (``question`` and ``answer`` strings a line; blank lines skipped) as
    :class:`Problem` records with ids ``{file name}:{line}``. A line that is not such an object,
    or whose answer has no ``#### <integer>``, is a ValueError naming the file and the line."""
    path = Path(path)
    problems = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {number} is not JSON ({e.msg})") from None
            if not isinstance(record, dict) or not all(
                isinstance(record.get(key), str) for key in ("question", "answer")
            ):
                raise ValueError(
                    f"{path}: line {number} is not an object with 'question' and 'answer' strings"
                )
            if _after_mark(record["answer"]) is None:
                raise ValueError(
                    f"{path}: line {number}: the answer has no final '{ANSWER_MARK} <integer>'"
                )
            problems.append(Problem(f"{path.name}:{number}", record["question"], record["answer"]))
    if not problems:
        raise ValueError(f"{path} holds no problems")
    return problems


# A number: thousands commas ("1,234"), a sign ("-5", not the minus of "7-5"), and decimals, so
# that "2.5" is read as one non-integer rather than as 2 and 5.
NUMBER = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w,]*\d)"
NUMBERS = re.compile(NUMBER)
MARKED = re.compile(re.escape(ANSWER_MARK) + r"[ \t]*(" + NUMBER + ")")


def _integer(token: str) -> int | None:
    """The integer a NUMBER match writes, or None for a non-integer such as 2.5 (2.0 is 2)."""
    whole, _, fraction = token.replace(",", "").partition(".")
    return int(whole) if fraction.strip("0") == "" else None


def _after_mark(text: str) -> int | None:
    """The integer right after the first ``####`` of ``text`` (spaces allowed), if any."""
    mark = text.find(ANSWER_MARK)
    match = MARKED.match(text, mark) if mark >= 0 else None
    return _integer(match.group(1)) if match else None


def extract_answer(text: str) -> int | None:
    """The answer a text gives: the integer after its first ``####`` ("1,234" is 1234, "-5"
    is -5), else the last integer in it, else None."""
    marked = _after_mark(text)
    if marked is not None:
        return marked
    integers = [v for v in (_integer(m.group()) for m in NUMBERS.finditer(text)) if v is not None]
    return integers[-1] if integers else None


def exact_match(pred: int | None, gold: int) -> bool:
    """True when the extracted prediction is the gold integer (None never matches)."""
    return pred is not None and pred == gold


def prompt(problem: Problem) -> str:
    """What the model is given: ``"Question: {question}\\nAnswer:"``."""
    return PROMPT.format(question=problem.question)


def example_text(problem: Problem) -> str:
    """A training example: the prompt, a space, the worked answer, then a blank line (where a
    generated answer ends, :func:`answer_end`)."""
    return f"{prompt(problem)} {problem.answer}\n\n"


def answer_end(text: str) -> int | None:
    """Where a generated answer ends: after the line holding its first ``####``, or at its
    first blank line, whichever comes first; None while it has not ended."""
    ends = []
    mark = text.find(ANSWER_MARK)
    if mark >= 0 and "\n" in text[mark:]:
        ends.append(text.index("\n", mark))
    if "\n\n" in text:
        ends.append(text.index("\n\n"))
    return min(ends) if ends else None
