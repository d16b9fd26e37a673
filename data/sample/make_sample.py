"""Regenerate the arithmetic (`ar-`) records of the bundled sample QA set, seeded and deterministic.

The committed JSONL files are the source of truth. The general-knowledge (`gk-`) and definition
(`df-`) records in them were written by hand and are kept exactly as they are; this script only
replaces every `ar-` record, so running it twice gives byte-identical files.

Usage: python data/sample/make_sample.py [--seed 13] [--count 120] [--out-dir data/sample]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

TRAIN_FILE = "qa_train.jsonl"
EVAL_FILE = "qa_eval.jsonl"
EVAL_EVERY = 8  # every 8th record of a category is held out, as for the hand-written part
PREFIX_ORDER = ("gk", "ar", "df")
# How many problems of each kind make up the arithmetic part (scaled to --count).
MIX = {"add": 32, "sub": 30, "mul": 28, "div": 20, "half": 5, "double": 5}

_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")

_QUESTIONS = {
    "add": (
        "What is {a} plus {b}?",
        "How much is {a} plus {b}?",
        "What do you get if you add {a} and {b}?",
        "What is the sum of {a} and {b}?",
    ),
    "sub": (
        "What is {a} minus {b}?",
        "How much is {a} minus {b}?",
        "What is {a} take away {b}?",
        "What do you get if you subtract {b} from {a}?",
    ),
    "mul": (
        "What is {a} times {b}?",
        "How much is {a} times {b}?",
        "What is {a} multiplied by {b}?",
        "What is the product of {a} and {b}?",
    ),
    "div": (
        "What is {a} divided by {b}?",
        "How much is {a} divided by {b}?",
        "What do you get if you divide {a} by {b}?",
    ),
    "half": ("What is half of {a}?", "How much is half of {a}?"),
    "double": ("What is double {a}?", "What do you get if you double {a}?"),
}
# One fixed answer shape per operation: regular targets are easier for a tiny model to learn.
_ANSWERS = {
    "add": "{a} plus {b} is {c}.",
    "sub": "{a} minus {b} is {c}.",
    "mul": "{a} times {b} is {c}.",
    "div": "{a} divided by {b} is {c}.",
    "half": "Half of {a} is {c}.",
    "double": "Double {a} is {c}.",
}


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem over small whole numbers (every result is below 100)."""

    op: str
    a: int
    b: int
    result: int

    def key(self) -> tuple[str, int, int]:
        """Canonical form, so that 3 + 5 and 5 + 3 (or half of 8 and 8 / 2) count as one problem."""
        if self.op in ("add", "mul", "double"):
            return ("add" if self.op == "add" else "mul", *sorted((self.a, self.b)))
        if self.op == "half":
            return ("div", self.a, 2)
        return (self.op, self.a, self.b)


def number_words(n: int) -> str:
    """Spell a whole number from 0 to 99 the way a speaker says it ("forty-two")."""
    if not 0 <= n < 100:
        raise ValueError(f"number_words covers 0..99, got {n}")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] if ones == 0 else f"{_TENS[tens]}-{_ONES[ones]}"


def number_aliases(n: int) -> list[str]:
    """Digits, words, and the unhyphenated spelling (a normaliser may drop the hyphen)."""
    words = number_words(n)
    spaced = words.replace("-", " ")
    return [str(n), words] if spaced == words else [str(n), words, spaced]


def draw_problem(op: str, rng: random.Random) -> Problem:
    """Draw one problem of kind `op` with small operands and a result below 100."""
    if op == "add":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        return Problem(op, a, b, a + b)
    if op == "sub":
        a = rng.randint(5, 30)
        b = rng.randint(1, a - 1)
        return Problem(op, a, b, a - b)
    if op == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        return Problem(op, a, b, a * b) if a * b < 100 else draw_problem(op, rng)
    if op == "div":
        b, c = rng.randint(2, 9), rng.randint(2, 11)
        return Problem(op, b * c, b, c)
    if op == "half":
        c = rng.randint(3, 25)
        return Problem(op, 2 * c, 2, c)
    if op == "double":
        a = rng.randint(3, 45)
        return Problem(op, a, 2, 2 * a)
    raise ValueError(f"unknown operation {op!r}")


def echoes_result(p: Problem) -> bool:
    """True if the result is said inside the operands ("twenty-eight minus twenty is eight").

    Alias matching would then credit a response that merely repeats the question.
    """
    operands = f" {number_words(p.a)} {number_words(p.b)} ".replace("-", " ")
    return p.result in (p.a, p.b) or f" {number_words(p.result).replace('-', ' ')} " in operands


def draw_problems(counts: dict[str, int], rng: random.Random) -> list[Problem]:
    """Draw distinct problems (by canonical key) in the given numbers per kind, then shuffle."""
    seen: set[tuple[str, int, int]] = set()
    problems: list[Problem] = []
    for op, count in counts.items():
        drawn = 0
        while drawn < count:
            p = draw_problem(op, rng)
            if p.key() not in seen and not echoes_result(p):
                seen.add(p.key())
                problems.append(p)
                drawn += 1
    rng.shuffle(problems)
    return problems


def phrase(p: Problem, rng: random.Random) -> tuple[str, str]:
    """Question (operands as digits or as words, at random) and the spoken answer, all in words."""
    render = str if rng.random() < 0.5 else number_words
    question = rng.choice(_QUESTIONS[p.op]).format(a=render(p.a), b=render(p.b))
    answer = _ANSWERS[p.op].format(a=number_words(p.a), b=number_words(p.b), c=number_words(p.result))
    return question, answer[0].upper() + answer[1:]


def scaled_mix(count: int) -> dict[str, int]:
    """Scale MIX to `count` problems in total, keeping its proportions."""
    total = sum(MIX.values())
    counts = {op: n * count // total for op, n in MIX.items()}
    counts["add"] += count - sum(counts.values())
    return counts


def arithmetic_records(seed: int, count: int) -> tuple[list[dict], list[dict]]:
    """Build (train, eval) arithmetic records; every EVAL_EVERY-th one is held out."""
    rng = random.Random(seed)
    train: list[dict] = []
    held_out: list[dict] = []
    for i, p in enumerate(draw_problems(scaled_mix(count), rng)):
        question, answer = phrase(p, rng)
        rec = {
            "id": f"ar-{i + 1:04d}",
            "question": question,
            "answer": answer,
            "aliases": number_aliases(p.result),
            "category": "arithmetic",
        }
        (held_out if i % EVAL_EVERY == EVAL_EVERY - 1 else train).append(rec)
    return train, held_out


def read_jsonl(path: Path) -> list[dict]:
    """Read one JSON object per non-blank line (an absent file reads as empty)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sort_key(rec: dict) -> tuple[int, str]:
    """Order records by category prefix (gk, ar, df), then by id."""
    return PREFIX_ORDER.index(rec["id"].split("-", 1)[0]), rec["id"]


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write records atomically: to a temporary name first, then rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def merge(path: Path, new_arithmetic: list[dict]) -> list[dict]:
    """Keep the file's hand-written records, replace its arithmetic ones."""
    kept = [r for r in read_jsonl(path) if not r["id"].startswith("ar-")]
    return sorted(kept + new_arithmetic, key=sort_key)


def main(argv: list[str] | None = None) -> None:
    """Regenerate the arithmetic records of both sample files in place."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=13, help="random seed for the arithmetic part")
    parser.add_argument("--count", type=int, default=120, help="number of arithmetic records in total")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    train, held_out = arithmetic_records(args.seed, args.count)
    for name, recs in ((TRAIN_FILE, train), (EVAL_FILE, held_out)):
        path = args.out_dir / name
        write_jsonl(path, merge(path, recs))
        print(f"{path}: {len(recs)} arithmetic records")


if __name__ == "__main__":
    main()
