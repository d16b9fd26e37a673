#!/usr/bin/env python3
"""WER of a character-CTC encoder's held-out rows, greedy and with the lexicon decoder at grid points.

Usage: .venv/bin/python tools/lexicon_sweep.py ENCODER_MODEL PRETRAIN_CORPUS [--grid JSON]

ENCODER_MODEL is an `encoder` step's model folder (`OUT/encoder/model`), PRETRAIN_CORPUS the corpus it
trained on (`OUT/pretrain-corpus`; its held-out rows are the ones the step held out). --grid is a JSON
list of preset decoding fields to try (`[{"lexicon_weight": 0.5}, ...]`); the default tries the preset
defaults and a few neighbours. Prints one line per decoder: its settings, WER, question WER, ms per clip.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_GRID = [
    {},
    {"lexicon_weight": 0.2}, {"lexicon_weight": 0.6},
    {"lexicon_word_bonus": 0.0}, {"lexicon_word_bonus": -2.0},
    {"lexicon_oov_penalty": 8.0}, {"lexicon_oov_penalty": 24.0},
    {"lexicon_beam": 32},
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("corpus")
    parser.add_argument("--grid", default=None, help="JSON list of decoding-field dicts")
    args = parser.parse_args(argv)
    from core.errors import EchoxError
    from tasks.encoder_eval import lexicon_sweep

    grid = json.loads(args.grid) if args.grid else DEFAULT_GRID
    try:
        rows = lexicon_sweep(args.model, args.corpus, grid)
    except (EchoxError, ValueError) as err:
        print(f"lexicon_sweep: {err}", file=sys.stderr)
        return 1
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
