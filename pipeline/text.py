"""Cleaning and tokenization shared by the tokenize stage and predict: one definition of a token."""
from __future__ import annotations

import html
import re

# IMDB reviews carry HTML line breaks ("great.<br /><br />The plot") that spaCy would glue to words.
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def clean(text: str, max_chars: int | None = None) -> str:
    """Turn line breaks into spaces, decode HTML entities, collapse whitespace, cut to max_chars.

    Collapsing whitespace matters: spaCy makes a token of each extra space, and tokens with
    whitespace inside would break the one-token-per-line vocab file.
    """
    text = html.unescape(_BREAK.sub(" ", text))
    text = _SPACE.sub(" ", text).strip()
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars]
    return text


def decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 with replacement: a bad byte must not stop a 100,000-review stage. Returns (text, was_bad)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def load_tokenizer():
    """spaCy's English tokenizer (rules and exceptions intact), no model download needed."""
    import spacy

    return spacy.blank("en").tokenizer


def tokenize(tokenizer, texts: list[str], lowercase: bool) -> list[list[str]]:
    """Tokenize cleaned texts; lowercase after tokenizing, since spaCy's exceptions are case-aware."""
    if lowercase:
        return [[t.lower_ for t in doc] for doc in tokenizer.pipe(texts, batch_size=256)]
    return [[t.text for t in doc] for doc in tokenizer.pipe(texts, batch_size=256)]
