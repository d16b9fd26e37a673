"""Scoring arithmetic: the edit distance of sequences (units, words) and confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> list[float] | None:
    """The Wilson score interval [low, high] of a proportion correct/n (95 % by default); None when n = 0.

    Unlike p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at 0 or n correct, which is what
    small eval sets (59 questions) give."""
    if n <= 0:
        return None
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact ends: rounding must not exclude p
    high = 1.0 if correct == n else min(1.0, centre + half)
    return [low, high]


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]
