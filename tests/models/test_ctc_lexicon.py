"""Lexicon beam search over the character CTC (models/ctc_lexicon.py): frames built by hand, so each case
knows what greedy decoding hears and what the lexicon should turn it into."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.ctc_lexicon import DecoderOptions, Lexicon, LexiconDecoder, whole_words
from models.speech import CHAR_ALPHABET, CHAR_BLANK, collapse

K = len(CHAR_ALPHABET) + 1


def frames(*columns: dict[str, float]) -> np.ndarray:
    """(T, K) log-probabilities: each column gives characters' probabilities ("_" = blank); every other
    label gets 1e-9, as far below the best as a trained CTC's confident frames put them."""
    out = np.empty((len(columns), K))
    for t, col in enumerate(columns):
        p = np.full(K, 1e-9)
        for ch, v in col.items():
            p[CHAR_BLANK if ch == "_" else CHAR_ALPHABET.index(ch) + 1] = v
        out[t] = np.log(p / p.sum())
    return out


def spell(text: str, *, unsure: dict[int, dict[str, float]] | None = None) -> np.ndarray:
    """Confident frames spelling `text` (a blank after each character), with some positions unsure."""
    cols: list[dict[str, float]] = []
    for i, ch in enumerate(text):
        cols.append((unsure or {}).get(i, {ch: 1.0}))
        cols.append({"_": 1.0})
    return frames(*cols)


def greedy(log_probs: np.ndarray) -> str:
    return "".join(CHAR_ALPHABET[i - 1] for i in collapse(log_probs.argmax(-1).tolist(), CHAR_BLANK))


def decoder(words: list[str], **options: float) -> LexiconDecoder:
    """A decoder over `words` that returns what it heard in lower case (the search's own output)."""
    return LexiconDecoder(Lexicon(words), CHAR_ALPHABET, blank=CHAR_BLANK,
                          options=DecoderOptions(**{"cased": False, **options}))


WORDS = ["the", "is", "what", "of", "capital", "city", "cat", "egypt", "cairo", "book"]


def test_the_lexicon_turns_a_misheard_letter_into_the_known_word() -> None:
    lp = spell("the cat", unsure={4: {"k": 0.55, "c": 0.4}})
    assert greedy(lp) == "the kat"
    assert decoder(WORDS).decode(lp) == "the cat"


def test_confident_known_words_and_punctuation_come_out_as_greedy_hears_them() -> None:
    lp = spell("what is the capital of egypt?")
    assert decoder(WORDS).decode(lp) == greedy(lp) == "what is the capital of egypt?"


def test_a_doubled_letter_needs_a_blank_between() -> None:
    lp = frames({"b": 0.9}, {"o": 0.9}, {"_": 0.9}, {"o": 0.9}, {"k": 0.9})
    assert decoder(WORDS).decode(lp) == "book"
    merged = frames({"b": 0.9}, {"o": 0.9}, {"o": 0.9}, {"k": 0.9})  # no blank: one o
    assert decoder(["bok", *WORDS]).decode(merged) == "bok"


def test_a_confident_unknown_word_pays_its_penalty_and_stays() -> None:
    lp = spell("the zorblax")
    assert decoder(WORDS).decode(lp) == "the zorblax"  # a name the lexicon lacks is not dropped
    assert decoder(WORDS, oov_penalty=200.0).decode(lp) != "the zorblax"  # unless it costs too much


def test_numbers_are_known_words() -> None:
    lp = spell("what is 42?")
    assert decoder(WORDS).decode(lp) == "what is 42?"


def test_the_prior_prefers_the_commoner_word_when_the_sound_is_even() -> None:
    lp = spell("the cat", unsure={4: {"c": 0.45, "b": 0.45}})
    assert decoder(["the", "cat", "bat"]).decode(lp) == "the cat"  # cat ranks first
    assert decoder(["the", "bat", "cat"]).decode(lp) == "the bat"


def test_the_transcript_is_written_as_the_tokenizer_spells_its_words() -> None:
    lex = Lexicon(["the", "The", "What", "what", "Egypt", "capital", "of", "don", "I"])
    lp = spell("what is the capital of egypt?")
    cased = LexiconDecoder(lex, CHAR_ALPHABET, blank=CHAR_BLANK).decode(lp)
    assert cased == "What is the capital of Egypt?"  # "What" ranks first; the sentence starts capital anyway
    assert lex.cased("i think the zorblax don't know egypt") == "I think the zorblax don't know Egypt"
    assert lex.cased("") == "" and lex.cased("42 is it") == "42 is it"
    lower = LexiconDecoder(lex, CHAR_ALPHABET, blank=CHAR_BLANK, options=DecoderOptions(cased=False))
    assert lower.decode(lp) == "what is the capital of egypt?"


def test_zipf_priors_follow_rank_and_sum_to_one() -> None:
    lex = Lexicon(["The", "the", "of", "cat"])
    assert lex.size == 3 and "the" in lex and "ca" not in lex and lex.walk("ca") is not None
    priors = [lex.walk(w).prior for w in ("the", "of", "cat")]  # type: ignore[union-attr]
    assert priors == sorted(priors, reverse=True)
    assert math.isclose(sum(math.exp(p) for p in priors), 1.0)
    assert lex.walk("c").best == lex.walk("cat").prior  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="at least one word"):
        Lexicon([])


def test_whole_words_are_the_marked_letter_tokens_in_id_order() -> None:
    class Vocab:
        def get_vocab(self) -> dict[str, int]:
            return {"Ġthe": 5, "th": 1, "Ġof": 6, "Ġ12": 7, "Ġxy": 8, "▁Paris": 9, "Ġcat": 3, "Ġa": 10}

    assert whole_words(Vocab()) == ["cat", "the", "of", "Paris", "a"]


def test_the_preset_defaults_are_the_decoders() -> None:
    from models.presets import resolve_preset

    p, o = resolve_preset("smollm2-135m"), DecoderOptions()
    assert (p.lexicon_beam, p.lexicon_weight, p.lexicon_word_bonus, p.lexicon_oov_penalty,
            p.lexicon_cased) == (o.beam, o.weight, o.word_bonus, o.oov_penalty, o.cased)


def test_a_tokenizer_without_whole_words_is_a_config_error() -> None:
    from core.errors import ConfigError
    from models.presets import resolve_preset
    from models.speech import lexicon_decoder

    class Pieces:
        def get_vocab(self) -> dict[str, int]:
            return {"a": 0, "b": 1, "ab": 2}

    preset = resolve_preset("smollm2-135m", ctc_target="chars", adapter_ctc_embed=True, ctc_decoder="lexicon")
    with pytest.raises(ConfigError, match="needs whole-word tokens"):
        lexicon_decoder(preset, Pieces())
    assert lexicon_decoder(resolve_preset("smollm2-135m"), Pieces()) is None  # greedy: no lexicon read
