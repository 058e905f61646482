"""Cleaning and tokenization shared by the tokenize stage and predict: one definition of a token.

Both go through `tokenize_arrow`: spaCy's tokenizer turns each text into a Doc, and the token
strings are looked up once per distinct token (by spaCy's string hash), not once per token,
so a 100,000-review run spends its time in spaCy rather than in Python loops.
"""
from __future__ import annotations

import html
import re

import numpy as np
import pyarrow as pa

# IMDB reviews carry HTML line breaks ("great.<br /><br />The plot") that spaCy would glue to words.
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean(text: str, max_chars: int | None = None) -> str:
    """Turn line breaks into spaces, decode HTML entities, collapse whitespace, cut to max_chars.

    Collapsing whitespace matters: spaCy makes a token of each extra space, and tokens with
    whitespace inside would break the one-token-per-line vocab file. `str.split()` splits on
    exactly the characters `\\s` matches in a str pattern, and is several times faster.
    """
    if "<" in text:
        text = _BREAK.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    text = " ".join(text.split())
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars]
    return text


def decode(raw: bytes | memoryview) -> tuple[str, bool]:
    """UTF-8 with replacement: a bad byte must not stop a 100,000-review stage. Returns (text, was_bad)."""
    try:
        return str(raw, "utf-8"), False
    except UnicodeDecodeError:
        return str(raw, "utf-8", errors="replace"), True


def load_tokenizer():
    """spaCy's English tokenizer (rules and exceptions intact), no model download needed.

    Its vocab computes only the lowercase form of each new word: the other lexical attributes
    spaCy works out for every word it has not seen (is_stop, like_num, shape, prefix, ...) are
    unused here and cost ~13% of tokenizing IMDB. The tokens are exactly spaCy's (a test checks).
    """
    import spacy
    from spacy.attrs import LOWER

    tokenizer = spacy.blank("en").tokenizer
    tokenizer.vocab.lex_attr_getters = {LOWER: tokenizer.vocab.lex_attr_getters[LOWER]}
    return tokenizer


def tokenize_arrow(tokenizer, texts: list[str], lowercase: bool, dictionary: bool = False) -> pa.ListArray:
    """Tokenize cleaned texts into a list<string> array, one list per text.

    Lowercasing happens after tokenizing (spaCy's exceptions are case-aware: "Don't" -> "Do", "n't"),
    by taking each token's LOWER attribute, which is exactly `Token.lower_`.
    With dictionary=True the tokens come as list<dictionary<int32, string>> (distinct tokens in
    order of first appearance), which a Parquet writer stores without hashing every string again.
    """
    from spacy.attrs import LOWER, ORTH

    attr = LOWER if lowercase else ORTH
    hashes = []
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    for i, doc in enumerate(tokenizer.pipe(texts)):
        h = doc.to_array(attr)
        hashes.append(h)
        offsets[i + 1] = offsets[i] + len(h)
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("too many tokens for one list array: tokenize fewer texts at a time")
    flat = pa.array(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
    encoded = flat.dictionary_encode()  # distinct hashes, in order of first appearance
    strings = tokenizer.vocab.strings
    words = pa.array([strings[h] for h in encoded.dictionary.to_pylist()], pa.string())
    values = pa.DictionaryArray.from_arrays(encoded.indices, words)
    if not dictionary:
        values = values.dictionary_decode()
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def tokenize(tokenizer, texts: list[str], lowercase: bool) -> list[list[str]]:
    """Tokenize cleaned texts into plain lists of strings (what predict needs)."""
    return tokenize_arrow(tokenizer, texts, lowercase).to_pylist()
