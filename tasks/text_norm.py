"""Turn written text into what a voice would say, and normalise answers for spoken-QA scoring.

`spoken_form` runs three stages: strip (markup, URLs, emoji, control characters), verbalise
(numbers, money, units, operators, abbreviations into words) and tidy (stray symbols, spaces).
Every number rule needs a digit and every symbol it reads is gone afterwards, so a second
pass finds nothing to change: the function is idempotent.

Every pattern runs in time linear in the text (one 5 MB line used to hang the build): a pattern
that can fail after scanning far must not be retried from each later position of that stretch.
So scans start only where a stretch starts (a lookbehind), stop at the next delimiter, or
swallow an unfinished construct and give it back unchanged. Over-long input is rejected first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from decimal import Decimal

from num2words import CONVERTER_CLASSES, num2words

from core.errors import RecordRejected

_MAX_NUMBER_DIGITS = 15  # longer digit strings (ids, codes) are read digit by digit
_WRITTEN_PER_SPOKEN = 10  # written text may be this many times max_chars (markup and URLs are not said)
# Thousands-grouped first, then plain. Each starts only where its run of digits (grouped: digits and
# commas) starts: retrying a failed run from every later digit was quadratic ("1" * 40k).
_NUM = r"(?<![\d,])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<!\d)\d+(?:\.\d+)?"
_SNUM = rf"(?:(?<![\w.])-)?(?:{_NUM})"  # with a minus sign that is not a hyphen
_YEAR = r"1[1-9]\d\d|20\d\d"
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")

_CURRENCIES = {  # symbol: (unit, units, subunit, subunits); None: decimals are read with "point"
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", None, None),
}
_UNITS = {  # written unit: (singular, plural)
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"),
    "m/s": ("meter per second", "meters per second"), "mph": ("mile per hour", "miles per hour"),
    "km2": ("square kilometer", "square kilometers"), "m2": ("square meter", "square meters"),
    "m3": ("cubic meter", "cubic meters"), "km": ("kilometer", "kilometers"),
    "cm": ("centimeter", "centimeters"), "mm": ("millimeter", "millimeters"),
    "m": ("meter", "meters"), "mi": ("mile", "miles"),
    "ft": ("foot", "feet"), "kg": ("kilogram", "kilograms"), "mg": ("milligram", "milligrams"),
    "g": ("gram", "grams"), "lbs": ("pound", "pounds"), "lb": ("pound", "pounds"), "oz": ("ounce", "ounces"),
    "ml": ("milliliter", "milliliters"), "l": ("liter", "liters"), "L": ("liter", "liters"),
    "°C": ("degree Celsius", "degrees Celsius"), "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "ms": ("millisecond", "milliseconds"), "min": ("minute", "minutes"), "h": ("hour", "hours"),
    "kHz": ("kilohertz", "kilohertz"), "MHz": ("megahertz", "megahertz"), "GHz": ("gigahertz", "gigahertz"),
    "Hz": ("hertz", "hertz"), "kW": ("kilowatt", "kilowatts"), "W": ("watt", "watts"), "V": ("volt", "volts"),
    "KB": ("kilobyte", "kilobytes"), "MB": ("megabyte", "megabytes"), "GB": ("gigabyte", "gigabytes"),
    "TB": ("terabyte", "terabytes"),
}
_ABBREVIATIONS = {  # case-sensitive; the dot may be detached by stripped markup ("Dr **.**")
    "Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Prof": "Professor", "St": "Saint",
    "Mt": "Mount", "Jr": "Junior", "Sr": "Senior", "vs": "versus", "etc": "et cetera",
    "approx": "approximately",
    "e.g": "for example", "E.g": "For example", "i.e": "that is", "I.e": "That is", "Inc": "Incorporated",
    "Ltd": "Limited", "Ave": "Avenue",
}
_SYMBOLS = {  # read aloud in English once numbers are words; currency signs without an amount are dropped
    "%": " percent ", "&": " and ", "@": " at ", "°": " degrees ", "±": " plus or minus ",
    "≈": " approximately ",
    "∞": " infinity ", "π": " pi ", "+": " plus ", "=": " equals ", "×": " times ", "÷": " divided by ",
    "≤": " less than or equal to ", "≥": " greater than or equal to ", "≠": " not equal to ",
    "√": " square root of ", "$": " ", "€": " ", "£": " ", "¥": " ",
}
_OPERATORS = [  # only between two numbers: elsewhere these are hyphens, bullets, slashes
    (re.compile(r"(?<=\d)\s*[*xX]\s*(?=\d)"), " times "),
    (re.compile(r"(?<=\d)\s*/\s*(?=\d)"), " divided by "),
    (re.compile(r"(?<=\d)\s*-\s*(?=\d)"), " minus "),
    (re.compile(r"(?<=\d)\s*–\s*(?=\d)"), " to "),
    (re.compile(r"(?<=\d)\s*\^\s*(?=\d)"), " to the power of "),
    (re.compile(r"(?<=\d)\s*<\s*(?=\d)"), " is less than "),
    (re.compile(r"(?<=\d)\s*>\s*(?=\d)"), " is greater than "),
]

_RE_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_RE_INLINE_CODE = re.compile(r"`([^`\n]*)`")
_RE_HTML_TAG = re.compile(r"</?[A-Za-z][^<>\n]*>")
# An image or link without its closing ")" is matched anyway (and kept, see _sub_closed): failing
# there would rescan the line from every later "[" (quadratic on "[[[[...").
_RE_IMAGE = re.compile(r"!\[[^\]\n]*(?:\]\([^)\n]*(?P<end>\))?)?")
_RE_LINK = re.compile(r"\[(?P<text>[^\]\n]*)(?:\]\([^)\n]*(?P<end>\))?)?")
_RE_CITATION = re.compile(r"\[\d+\]")
_RE_BLOCK_LINE = re.compile(r"^[ \t]*(?:#{1,6}|[-*+•]|\d{1,2}[.)])[ \t]+\S.*$", re.M)
_RE_LINE_MARKUP = re.compile(r"^[ \t]*(?:(?:#{1,6}|>+|[-*+•]|\d{1,2}[.)])[ \t]+|[-*_=]{3,}[ \t]*$)+", re.M)
# The emphasised text stops at the next delimiter of its kind: scanning on to the end of the line
# from every unclosed "**" or "*" was quadratic ("**a " * 10k).
_RE_STRONG = re.compile(r"(\*\*|__|~~)(?=\S)((?:(?!\1).)+?)(?<=\S)\1")
_RE_EMPHASIS = re.compile(r"(?<![\w*])([*_])(?=[^\s*_])((?:(?!\1)[^\n])+?)(?<=[^\s*_])\1(?![\w*])")
_URL_REST = r"[^\s<>()\[\]{}\"']*[^\s<>()\[\]{}\"'.,;:!?]"  # to the last char that is not punctuation
# A scheme is tried only where its run of [\w+.-] starts, so "aaaa..." without "://" is scanned
# once, not from every letter (quadratic). The run's non-letter head ("1.", "--") is kept: the URL
# itself still starts at the first letter.
_RE_URL = re.compile(rf"(?<![\w+.-])(?P<keep>(?:(?![a-zA-Z])[\w+.-])*)[a-zA-Z][\w+.-]*://{_URL_REST}"
                     rf"|(?<![a-zA-Z])www\.{_URL_REST}", re.I)
_RE_TIDY_SYMBOLS = re.compile(r"[*_`#~|<>\[\]{}\\^/]|-{2,}")
_RE_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")
_RE_SPACE_BEFORE_PUNCT = re.compile(r"(?<!\s)\s+([.,!?;:])(?=\s|$)")  # from a run's start only
_RE_LEADING_PUNCT = re.compile(r"^[\s\-–—•.,;:!?)]+")

_RE_CURRENCY = re.compile(rf"([$€£¥])\s?({_SNUM})(?:\s?(thousand|million|billion|trillion)\b)?")
_RE_PERCENT = re.compile(rf"({_SNUM})\s?%")
_RE_TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
_UNIT_NAMES = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))  # longest first
_RE_UNIT = re.compile(rf"({_SNUM})\s?({_UNIT_NAMES})(?![\w/])")
_RE_DATE = re.compile(rf"(?<![\d-])({_YEAR})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(?![\d-])")
_RE_YEAR_RANGE = re.compile(rf"(?<![\d.])({_YEAR})\s?[-–]\s?({_YEAR})(?![\d]|\.\d)")
_RE_ORDINAL = re.compile(r"(?<![\d.,])(\d+)(?:st|nd|rd|th)\b")
_RE_DECADE = re.compile(r"(?<![\d.,])(1[1-9]\d0|20\d0|[1-9]0)s\b")
_RE_GROUPED = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])")
_RE_NEGATIVE = re.compile(r"(?<![\w.])-(?=\d)")
_RE_YEAR_ALONE = re.compile(rf"(?<![\d.])({_YEAR})(?![\d]|\.\d)")
_RE_NUMBER = re.compile(r"\d+(?:\.\d+)*")
_ABBREVIATION_NAMES = "|".join(re.escape(a) for a in _ABBREVIATIONS)
_RE_ABBREVIATION = re.compile(rf"(?<![\w.])({_ABBREVIATION_NAMES})\s*\.(?![A-Za-z])")
_RE_SIGNED_NUMBER = re.compile(r"(?:(?<![\w.])-)?\d+(?:\.\d+)?")
_RE_NUMBER_SIGN = re.compile(r"(?<![\w.])No\s*\.(?=\s*\d)")


def _clean_words(words: str) -> str:
    """Drop num2words' commas and British "and" so numbers read the same everywhere."""
    return re.sub(r",| and(?= )", "", words)


def _digits(s: str, lang: str) -> str:
    """Read a digit string one digit at a time ("007" → "zero zero seven")."""
    return " ".join(num2words(unicodedata.digit(c), lang=lang) for c in s)


def _integer(s: str, lang: str) -> str:
    """Words for an unsigned integer string; codes and very long numbers are read digit by digit."""
    s = s.replace(",", "")
    if len(s) > _MAX_NUMBER_DIGITS or (len(s) > 1 and unicodedata.digit(s[0]) == 0):
        return _digits(s, lang)
    return _clean_words(num2words(int(s), lang=lang))


def _number(s: str, lang: str = "en") -> str:
    """Words for a signed decimal or dotted number ("-3.14" → "minus three point one four")."""
    whole, *fractions = s.lstrip("-").replace(",", "").split(".")
    if lang != "en":
        return _number_other(s, whole, fractions, lang)
    sign = "minus " if s.startswith("-") else ""
    return sign + _integer(whole, lang) + "".join(" point " + _digits(f, lang) for f in fractions)


def _number_other(s: str, whole: str, fractions: list[str], lang: str) -> str:
    """Words for one number with an optional decimal part (see _RE_SIGNED_NUMBER) in another language."""
    try:
        if len(whole) > _MAX_NUMBER_DIGITS:
            return _digits(whole + "".join(fractions), lang)
        plain = s.replace(",", "")
        return _clean_words(num2words(Decimal(plain) if fractions else int(plain), lang=lang))
    except Exception as e:  # num2words raises assorted types where a language lacks a form
        raise RecordRejected(f"num2words cannot say {s!r} in language {lang!r}: {e}") from e


def _sub_words(pattern: re.Pattern[str], text: str, words: Callable[[re.Match[str]], str]) -> str:
    """Replace matches with words, adding a space where a match touches a letter ("H2O" → "H two O")."""
    def repl(m: re.Match[str]) -> str:
        left = " " if m.start() > 0 and m.string[m.start() - 1].isalnum() else ""
        right = " " if m.end() < len(m.string) and m.string[m.end()].isalnum() else ""
        return left + words(m) + right
    return pattern.sub(repl, text)


def _sub_closed(pattern: re.Pattern[str], text: str, words: Callable[[re.Match[str]], str]) -> str:
    """Replace the matches whose group "end" took part; one without it is an unfinished construct, kept."""
    return pattern.sub(lambda m: words(m) if m["end"] is not None else m[0], text)


def _money(m: re.Match[str]) -> str:
    """"$3.50" → "three dollars fifty cents"; "$5 million" → "five million dollars"."""
    unit, units, sub, subs = _CURRENCIES[m[1]]
    amount, scale = m[2], m[3]
    whole, _, cents = amount.replace(",", "").lstrip("-").partition(".")
    if scale or (cents and (sub is None or len(cents) != 2)):
        return f"{_number(amount)}{' ' + scale if scale else ''} {units}"
    sign = "minus " if amount.startswith("-") else ""
    parts = []
    if int(whole) or not cents:
        parts.append(f"{_integer(whole, 'en')} {unit if int(whole) == 1 else units}")
    if cents and int(cents):
        parts.append(f"{_integer(cents.lstrip('0'), 'en')} {sub if int(cents) == 1 else subs}")
    return sign + " and ".join(parts or [f"zero {units}"])


def _time(m: re.Match[str]) -> str:
    """"10:05" → "ten oh five"; "7:00" → "seven o'clock"."""
    hour, minute = _integer(str(int(m[1])), "en"), int(m[2])
    if minute == 0:
        return f"{hour} o'clock"
    return f"{hour} {'oh ' if minute < 10 else ''}{_integer(str(minute), 'en')}"


def _unit(m: re.Match[str]) -> str:
    """"5 km" → "five kilometers"; "1 kg" → "one kilogram"."""
    singular, plural = _UNITS[m[2]]
    return f"{_number(m[1])} {singular if m[1] == '1' else plural}"


def _plural(words: str) -> str:
    """"nineteen ninety" → "nineteen nineties"."""
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _decade(m: re.Match[str]) -> str:
    """"1990s" → "nineteen nineties"; "80s" → "eighties"."""
    return _plural(_year(m[1]) if len(m[1]) == 4 else _integer(m[1], "en"))


def _year(s: str) -> str:
    """Read a year the way people say it ("1999" → "nineteen ninety-nine", "2005" → "two thousand five")."""
    return _clean_words(num2words(int(s), lang="en", to="year"))


def _date(m: re.Match[str]) -> str:
    """"2020-01-05" → "January fifth, twenty twenty"."""
    day = num2words(int(m[3]), lang="en", to="ordinal")
    return f"{_MONTHS[int(m[2]) - 1]} {day}, {_year(m[1])}"


def _strip(text: str) -> str:
    """Remove what is written but never said: control characters, emoji, markdown, HTML tags, URLs."""
    text = unicodedata.normalize("NFKC", text).replace("⁄", "/").replace("−", "-")
    text = unicodedata.normalize("NFKC", "".join(_keep_char(c) for c in text))
    text = _RE_CODE_BLOCK.sub(" ", text)
    text = _RE_INLINE_CODE.sub(r"\1", text)
    text = _RE_HTML_TAG.sub(" ", text)
    text = _sub_closed(_RE_IMAGE, text, lambda m: " ")
    text = _sub_closed(_RE_LINK, text, lambda m: m["text"])
    text = _RE_CITATION.sub(" ", text)
    text = _RE_BLOCK_LINE.sub("\\g<0>\n", text)  # a heading or list item ends like a paragraph
    text = _RE_LINE_MARKUP.sub("", text)
    text = _RE_STRONG.sub(r"\2", text)
    text = _RE_EMPHASIS.sub(r"\2", text)
    return _end_paragraphs(_RE_URL.sub(lambda m: (m["keep"] or "") + " ", text))


def _end_paragraphs(text: str) -> str:
    """Join paragraphs into one line, ending each with a full stop so the voice pauses between them."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) < 2:
        return text
    return " ".join(p if p[-1] in ".!?;:," else p + "." for p in paragraphs)


def _keep_char(c: str) -> str:
    """Map one character: format characters vanish, controls, emoji and other pictographs become spaces."""
    if c.isspace():
        return "\n" if c == "\n" else " "
    cat = unicodedata.category(c)
    if cat == "Cf" or cat == "Me" or "\ufe00" <= c <= "\ufe0f":  # ZWJ, soft hyphen, keycaps, emoji styles
        return ""
    if cat == "No":  # circled, parenthesised, dingbat digits ("❶")
        digit = unicodedata.digit(c, None)
        return " " if digit is None else str(digit)
    if cat[0] == "C" or (cat in ("So", "Sk") and c not in "°^`"):
        return " "
    return c


def _tidy(text: str) -> str:
    """Drop leftover markup symbols and empty brackets, collapse spaces, trim leading punctuation."""
    text = _drop_empty_brackets(re.sub(r"\s+", " ", _RE_TIDY_SYMBOLS.sub(" ", text)))
    text = _RE_SPACE_BEFORE_PUNCT.sub(r"\1", text)
    # NFKC again: removed characters can leave a letter next to a combining mark.
    return unicodedata.normalize("NFKC", _RE_LEADING_PUNCT.sub("", text).strip())


_OPENER_OF = {")": "(", "]": "["}


def _drop_empty_brackets(text: str) -> str:
    """Replace brackets holding at most a space by a space, innermost first ("( [ ] )" → " ").

    One pass with a stack, on text whose spaces are already collapsed: substituting until nothing
    changed took one pass per nesting level, quadratic on "((((...))))".
    """
    if not _RE_EMPTY_BRACKETS.search(text):
        return text
    out: list[str] = []
    for c in text:
        if c in _OPENER_OF:
            i = len(out) - 1 if out and out[-1] == " " else len(out)  # before the space inside
            if i and out[i - 1] == _OPENER_OF[c]:
                del out[i - 1:]
                c = " "
        if c != " " or not out or out[-1] != " ":  # never two spaces: the next check looks back one
            out.append(c)
    return "".join(out)


def _verbalize_en(text: str) -> str:
    """Say numbers, money, units, dates, operators, symbols and abbreviations in English words."""
    text = _RE_NUMBER_SIGN.sub("number", text)
    text = _sub_words(_RE_CURRENCY, text, _money)
    text = _sub_words(_RE_PERCENT, text, lambda m: f"{_number(m[1])} percent")
    text = _sub_words(_RE_TIME, text, _time)
    text = _sub_words(_RE_UNIT, text, _unit)
    text = _sub_words(_RE_DATE, text, _date)
    text = _sub_words(_RE_YEAR_RANGE, text, lambda m: f"{_year(m[1])} to {_year(m[2])}")
    text = _sub_words(_RE_ORDINAL, text, lambda m: _clean_words(_ordinal(m[1])))
    text = _sub_words(_RE_DECADE, text, _decade)
    text = _sub_words(_RE_GROUPED, text, lambda m: _number(m[0]))
    for pattern, words in _OPERATORS:
        text = pattern.sub(words, text)
    text = _RE_NEGATIVE.sub("minus ", text)
    text = _sub_words(_RE_YEAR_ALONE, text, lambda m: _year(m[1]))
    text = _sub_words(_RE_NUMBER, text, lambda m: _number(m[0]))
    return "".join(_SYMBOLS.get(c, c) for c in text)


def _ordinal(s: str) -> str:
    """"22" → "twenty-second"; very long numbers are read digit by digit plus "th"."""
    if len(s) > _MAX_NUMBER_DIGITS:
        return _digits(s, "en") + "th"
    return num2words(int(s), lang="en", to="ordinal")


def _verbalize_other(text: str, lang: str) -> str:
    """Say numbers in another language through num2words; symbols are left to the voice."""
    text = _RE_GROUPED.sub(lambda m: m[0].replace(",", ""), text)
    return _sub_words(_RE_SIGNED_NUMBER, text, lambda m: _number(m[0], lang))


def _num2words_lang(lang: str) -> str:
    """The num2words language code for `lang` ("en", "de", "pt-BR" → "pt_BR"), or reject it."""
    code = lang.replace("-", "_")
    for candidate in (code, code.split("_")[0]):
        if candidate in CONVERTER_CLASSES:
            return candidate
    raise RecordRejected(f"language {lang!r} is not supported by the normaliser")


def _normalize(text: str, lang: str) -> str:
    """Strip, verbalise and tidy without length checks."""
    if lang != "en" and not lang.startswith("en_"):
        return _tidy(_verbalize_other(_strip(text), lang))
    text = _tidy(_verbalize_en(_strip(text)))
    # After tidying, so that a dot detached by dropped markup ("Dr **.**") still reads as the abbreviation.
    return _tidy(_RE_ABBREVIATION.sub(lambda m: _ABBREVIATIONS[m[1]], text))


def spoken_form(text: str, *, max_chars: int = 600, lang: str = "en") -> str:
    """Turn written text into what a voice would say; reject too long a text, or one with nothing to say."""
    if not isinstance(text, str):
        raise RecordRejected(f"text must be a string, got {type(text).__name__}")
    # Before any pattern runs, so that the cost of a hostile record is bounded by the limit.
    limit = _WRITTEN_PER_SPOKEN * max_chars
    if len(text) > limit:
        raise RecordRejected(f"written text has {len(text)} characters, more than the limit of {limit}")
    spoken = _normalize(text, _num2words_lang(lang))
    if not any(c.isalnum() for c in spoken):
        raise RecordRejected("text is empty after normalisation")
    if len(spoken) > max_chars:
        raise RecordRejected(f"spoken text has {len(spoken)} characters, more than the limit of {max_chars}")
    return spoken


def _casefolded(text: str) -> str:
    """Verbalised, casefolded text without accents or apostrophes (the common start of the two below)."""
    if not isinstance(text, str):
        raise RecordRejected(f"answer must be a string, got {type(text).__name__}")
    text = _normalize(text.casefold(), "en").casefold()  # casefold first too: "Π" must meet the "π" rule
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = unicodedata.normalize("NFKC", text)  # recompose what is not an accent (Hangul jamo)
    return re.sub(r"['’`]", "", text)


def _words(text: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in text).split())


def normalize_words(text: str) -> str:
    """Normalise text to compare word by word (WER): numbers as words; no case, accents, punctuation."""
    return _words(_casefolded(text))


def normalize_answer(text: str) -> str:
    """Normalise an answer or response for matching: number words; no case, accents, punctuation, articles."""
    return _words(re.sub(r"\b(?:a|an|the)\b", " ", _casefolded(text)))


def match_answer(response: str, gold: tuple[str, ...] | list[str]) -> str | None:
    """The first gold answer found as whole words in the normalised response, or None (the eval's match)."""
    words = f" {normalize_answer(response)} "
    for g in gold:
        norm = normalize_answer(g)
        if norm and f" {norm} " in words:
            return g
    return None
