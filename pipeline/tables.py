"""Labelled texts from a table file: CSV, TSV, JSONL or Parquet (CSV, TSV and JSONL optionally gzipped).

The download stage turns a table source into the same raw-text table as the aclImdb archive
(pipeline/raw.py): one row per text, its split, and its label as an index into the label map
(pipeline/labels.py).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import pyarrow as pa

from pipeline.common import PipelineError
from pipeline.raw import MAX_REVIEW_BYTES, MAX_TOTAL_BYTES, decompress
from pipeline.text import decode

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def table_format(url: str) -> str | None:
    """csv | tsv | jsonl | parquet by the file name (a .gz after csv, tsv or jsonl is unpacked); None for an archive."""
    name = url.lower().split("?", 1)[0]
    gz = name.endswith(".gz")
    fmt = FORMATS.get(Path(name[:-3] if gz else name).suffix)
    return None if fmt == "parquet" and gz else fmt


def _one_line(e: BaseException) -> str:
    return " ".join((str(e) or type(e).__name__).split())


def _missing(name: str, wanted: list[str], present: list[str]) -> None:
    absent = [c for c in wanted if c not in present]
    if absent:
        shown = ", ".join(present[:20]) + (", ..." if len(present) > 20 else "")
        raise PipelineError(f"{name} has no column {absent[0]!r} (its columns: {shown or 'none'})")


def read_columns(path: Path, fmt: str, columns: list[str]) -> dict[str, list]:
    """The named columns of a table file, as Python lists (text may come as bytes). Every failure
    is one line: unreadable file, no rows, a column that is not there (naming those that are)."""
    name = path.name
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            present = pq.read_schema(path).names
            _missing(name, columns, present)
            table = pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise PipelineError(f"{name} is not a readable Parquet file ({_one_line(e)})") from None
        out = {c: table[c].to_pylist() for c in columns}
    else:
        try:
            data = decompress(path.read_bytes(), name, MAX_TOTAL_BYTES)
        except OSError as e:
            raise PipelineError(f"cannot read {path}: {e.strerror}") from None
        out = _read_jsonl(data, name, columns) if fmt == "jsonl" else _read_csv(data, name, columns, "\t" if fmt == "tsv" else ",")
    if not out[columns[0]]:
        raise PipelineError(f"{name} holds no rows")
    return out


def _read_csv(data: bytes, name: str, columns: list[str], delimiter: str) -> dict[str, list]:
    """Quoted fields may hold newlines and any bytes: the columns are read as binary and decoded
    later, each bad byte replaced and counted, instead of failing the whole file."""
    import pyarrow.csv as pacsv

    data = _strip_bom(data)
    tsv = delimiter == "\t"
    # TSV files (GLUE, Kaggle dumps) are not quoted: a text that starts with " must not swallow rows.
    header = csv.reader(io.StringIO(data[:1 << 16].decode("utf-8", "replace")), delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    first = next(header, None)
    if not first:
        raise PipelineError(f"{name} holds no rows")
    _missing(name, columns, first)
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False if tsv else '"', newlines_in_values=not tsv),
            convert_options=pacsv.ConvertOptions(include_columns=columns, column_types={c: pa.binary() for c in columns}),
        )
    except pa.ArrowException as e:
        raise PipelineError(f"{name} is not a readable {'TSV' if tsv else 'CSV'} file ({_one_line(e)})") from None
    return {c: table[c].to_pylist() for c in columns}


def _strip_bom(data: bytes) -> bytes:
    """Without the UTF-8 byte order mark that Excel and Notepad write, which would end up in the first column's name."""
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def _read_jsonl(data: bytes, name: str, columns: list[str]) -> dict[str, list]:
    data = _strip_bom(data)
    out: dict[str, list] = {c: [] for c in columns}
    seen: set[str] = set()
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        text, _ = decode(line)
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise PipelineError(f"{name} line {number} is not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise PipelineError(f"{name} line {number} is not a JSON object")
        seen.update(row)
        for c in columns:
            out[c].append(row.get(c))
    if not out[columns[0]]:
        raise PipelineError(f"{name} holds no rows")
    _missing(name, columns, sorted(seen))
    return out


# pandas' default missing-value strings, so a table exported from a DataFrame keeps its gaps as gaps.
MISSING = {"", "na", "n/a", "#n/a", "nan", "-nan", "null", "none", "<na>"}
WHOLE = re.compile(r"^[+-]?\d+(\.0*)?$")


def label_key(value) -> str | None:
    """A label as the string it is known by; None when missing (null, NaN, blank, "NA", ...).
    The same label reads the same from every format: 7, "07", 7.0 and "7.0" are "7"; True and "TRUE" are "true"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes):
        value = decode(value)[0]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if text.lower() in MISSING:
        return None
    if WHOLE.match(text):
        return str(int(text.split(".")[0]))
    if text.lower() in ("true", "false"):
        return text.lower()
    return text


def clean_rows(texts: list, labels: list | None, name: str) -> tuple[list[int], list[str], list[str | None], dict]:
    """Decode texts (bad UTF-8 replaced and counted) and normalise labels; rows with an empty
    text, or a missing label where labels are expected, are dropped and counted.
    Returns the kept rows' numbers (0-based), texts and labels, and the counts."""
    kept_rows, kept_texts, kept_labels = [], [], []
    counts = {"rows": len(texts), "empty_text": 0, "missing_label": 0, "bad_utf8": 0}
    for i, raw_text in enumerate(texts):
        if isinstance(raw_text, (bytes, bytearray)):
            if len(raw_text) > MAX_REVIEW_BYTES:
                raise PipelineError(f"{name}: the text of row {i + 1} is {len(raw_text):,} bytes (limit {MAX_REVIEW_BYTES:,})")
            text, bad = decode(raw_text)
            counts["bad_utf8"] += bad
        else:
            text = "" if raw_text is None else str(raw_text)
            if len(text) > MAX_REVIEW_BYTES:
                raise PipelineError(f"{name}: the text of row {i + 1} is {len(text):,} characters (limit {MAX_REVIEW_BYTES:,})")
        if not text.strip():
            counts["empty_text"] += 1
            continue
        label = label_key(labels[i]) if labels is not None else None
        if labels is not None and label is None:
            counts["missing_label"] += 1
            continue
        kept_rows.append(i)
        kept_texts.append(text)
        kept_labels.append(label)
    return kept_rows, kept_texts, kept_labels, counts


