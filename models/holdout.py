"""Held-out rows: a deterministic split of a corpus by row id, for checks on rows a model never trained on.

Each id is ranked by its blake2b digest (8 bytes of `blake2b(id, person=b"echox-holdout")`; never Python's
`hash()`, which is salted per process), and the lowest-ranked ~5 % are held out: at least `least` rows, at
most `most`, and never every row. The split depends only on the set of ids, so every rank, every resume
and the evaluation after training agree on it; a larger corpus keeps the held-out ids of a smaller one
except where its own lower-ranked ids push the cap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

HOLDOUT_FRACTION = 0.05
"""Share of the rows held out (before the bounds below)."""
HOLDOUT_LEAST = 4
"""At least this many rows are held out (while the corpus has more rows than that)."""
HOLDOUT_MOST = 32
"""At most this many rows are held out (the check after training stays cheap)."""


def id_rank(row_id: str) -> int:
    """The stable rank of a row id: 8 bytes of its personalised blake2b digest as an integer."""
    digest = hashlib.blake2b(str(row_id).encode("utf-8"), digest_size=8, person=b"echox-holdout")
    return int.from_bytes(digest.digest(), "big")


def holdout_ids(ids: Iterable[str], *, fraction: float = HOLDOUT_FRACTION, least: int = HOLDOUT_LEAST,
                most: int = HOLDOUT_MOST) -> frozenset[str]:
    """The held-out ids among `ids`: the lowest-ranked round(fraction · n), clamped to [least, most] and to
    n - 1 (one row always stays for training)."""
    unique = sorted(set(map(str, ids)), key=lambda i: (id_rank(i), i))
    count = min(max(round(fraction * len(unique)), least), most, len(unique) - 1)
    return frozenset(unique[:max(count, 0)])
