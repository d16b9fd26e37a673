#!/usr/bin/env python3
"""An eval set whose questions are written as a speech model's LLM reads them when every character is heard.

Usage: .venv/bin/python tools/heard_eval_set.py EVAL_SET OUT.jsonl [--preset P] [--set FIELD=VALUE ...]

Each valid question becomes the character CTC's transcript of it heard without error (lower case, the
CTC's alphabet), written back as the preset's lexicon decoder writes it (`lexicon_cased`, on by default;
`--set lexicon_cased=false` keeps lower case); the written question is kept as `written_question`. Then
`echox evaluate --mode text --preset P --eval-set OUT.jsonl --out R` measures what the transcript's form
alone costs the text LLM, with no hearing error. Prints how many questions come back exactly as written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_set")
    parser.add_argument("out")
    parser.add_argument("--preset", default="smollm2-135m")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="preset field override (YAML value); ctc_decoder lexicon is set")
    parser.add_argument("--cache-dir", default=None, help="where the base LLM is built (default: the "
                        "state folder)")
    args = parser.parse_args(argv)
    from core.errors import EchoxError

    try:
        written, same = write_heard_eval_set(args)
    except (EchoxError, ValueError, OSError) as err:
        print(f"heard_eval_set: {err}", file=sys.stderr)
        return 1
    print(f"{written} questions written to {args.out}; {same} read exactly as written")
    return 0


def write_heard_eval_set(args: argparse.Namespace) -> tuple[int, int]:
    """(questions written, questions unchanged) of the heard eval set."""
    from core.errors import ConfigError
    from core.runtime import state_dir
    from echox.cli import field_pairs
    from models.llm import load_tokenizer, prepare_base_llm
    from models.presets import resolve_preset
    from models.speech import heard_text, lexicon_decoder
    from tasks.eval_questions import read_eval_set

    overrides = {"ctc_target": "chars", "adapter_ctc_embed": True, "ctc_decoder": "lexicon",
                 **field_pairs(args.set, "--set")}
    preset = resolve_preset(args.preset, **overrides)
    if preset.llm == "random":
        raise ConfigError(f"preset {preset.name!r} has a random-init LLM whose tokenizer is trained per "
                          "corpus: name one with a fixed tokenizer (smollm2-135m, or --set llm=path --set "
                          "llm_path=DIR)")
    cache = Path(args.cache_dir) if args.cache_dir else state_dir() / "models"
    tokenizer = load_tokenizer(prepare_base_llm(preset, corpus_texts=None, cache_dir=cache))
    decoder = lexicon_decoder(preset, tokenizer)
    items, rejects = read_eval_set(Path(args.eval_set))
    if rejects:
        print(f"heard_eval_set: {len(rejects)} records of {args.eval_set} rejected (as the evaluation does)",
              file=sys.stderr)
    lines, same = [], 0
    for item in items:
        heard = heard_text(item.question, decoder)
        same += heard == item.question
        record = {"id": item.id, "question": heard, "written_question": item.question,
                  "answer": item.reference, "answers": list(item.gold), "category": item.category}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    Path(args.out).write_text("".join(lines))
    return len(lines), same


if __name__ == "__main__":
    raise SystemExit(main())
