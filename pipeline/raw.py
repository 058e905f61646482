"""The raw-text table: every review of the dataset in one Parquet file (data/raw/reviews.parquet).

The download stage builds it from the aclImdb archive; tokenize reads it. One file instead of
100,008 review files: DVC hashes, pushes and pulls it as one object.

Schema (zstd, one row group per ROW_GROUP rows):
    id      string          "train/pos/10_9": the review's path in the archive, without aclImdb/ and .txt
    split   string          train | test | unsup
    rating  int8            stars from the file name (0 for unlabelled, and for table sources)
    label   int8, nullable  index into the label map (data/raw/labels.json), null unlabelled;
                            aclImdb: 0 neg, 1 pos, or with label_column rating the rating's index
    text    string          the review as UTF-8 (invalid bytes replaced, counted in the stage's metrics)
Rows are in a fixed order: train, unsup, test; aclImdb: within a split pos then neg, each by
numeric id; a table source: its row order.
"""
from __future__ import annotations

import bz2
import lzma
import re
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.common import PipelineError
from pipeline.text import decode

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("rating", pa.int8()),
        ("label", pa.int8()),
        ("text", pa.string()),
    ]
)
ROW_GROUP = 10_000
# (split, folder) in table order, and each folder's label.
FOLDERS = [("train", "pos"), ("train", "neg"), ("unsup", "unsup"), ("test", "pos"), ("test", "neg")]
LABELS = {"pos": 1, "neg": 0, "unsup": None}
SENTIMENT = ["neg", "pos"]  # the label map of `label`; `rating` maps the ratings found, in numeric order
LABEL_COLUMNS = ("label", "rating")
LAYOUT = {(split, folder): f"aclImdb/{'train' if split == 'unsup' else split}/{folder}" for split, folder in FOLDERS}
_REVIEW = re.compile(r"^aclImdb/(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")
# Decompression-bomb guards: the longest IMDB review is ~14 kB, and the whole tar 216 MB.
MAX_REVIEW_BYTES = 1 << 20
MAX_TOTAL_BYTES = 4 << 30


class Member(NamedTuple):
    name: str
    type: bytes  # tar type flag: b"0" file, b"5" folder, b"1"/b"2" links, ...
    linkname: str
    data: memoryview  # the file's bytes (empty for anything but a file)


_FILE, _DIR = (b"0", b"\0", b"7"), b"5"
_KINDS = {b"1": "hard link", b"2": "symlink"}
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}


def decompress(data: bytes, name: str, limit: int) -> bytes:
    """The tar inside a .tar.gz / .tar.bz2 / .tar.xz (or a plain .tar), in memory: one call into C
    instead of tarfile's stream of small reads (the full archive: 57 MB in, 216 MB out, 1.4 s).
    At most `limit` bytes are unpacked: a decompression bomb stops there."""
    kind = next((k for magic, k in _MAGIC.items() if data.startswith(magic)), None)
    if kind is None:
        return data
    unpack = {"gzip": lambda: zlib.decompressobj(wbits=31), "bz2": bz2.BZ2Decompressor,
              "xz": lzma.LZMADecompressor}[kind]()
    try:
        out = unpack.decompress(data, limit + 1)
    except (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError) as e:
        raise PipelineError(f"{name} is truncated or corrupt ({_one_line(e)})") from None
    if len(out) > limit:
        raise PipelineError(f"unsafe archive {name}: unpacks to more than {limit:,} bytes")
    if not unpack.eof:
        raise PipelineError(f"{name} is truncated or corrupt (the {kind} stream ends early)")
    return out


def _octal(field: bytes, what: str, archive: str) -> int:
    if field[:1] and field[0] & 0x80:  # base-256: only for members past 8 GiB
        raise PipelineError(f"unsafe archive {archive}: a member of {what} over 8 GiB")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise PipelineError(f"{archive} is truncated or corrupt (bad {what} field {text!r} in a tar header)") from None


def _pax(data: bytes) -> dict[str, str]:
    """Records of a pax extended header: "<len> <key>=<value>\\n"."""
    out, i = {}, 0
    while i < len(data) and data[i:i + 1] != b"\0":
        length = int(data[i:data.index(b" ", i)])
        key, _, value = data[data.index(b" ", i) + 1:i + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        i += length
    return out


def iter_tar(tar: bytes, archive: str) -> Iterator[Member]:
    """The members of an uncompressed tar held in memory (ustar, GNU long names, pax headers).

    A plain loop over 512-byte headers: tarfile builds a TarInfo through a dozen Python calls per
    member, 4 s for the 100,008 members of aclImdb; this reads them in well under one. Headers
    are checksummed, so a damaged or truncated archive is an error rather than garbage.
    """
    view = memoryview(tar)
    pos, end = 0, len(tar)
    long_name = pax_name = None
    while True:
        header = tar[pos:pos + 512]
        if header == _ZERO_BLOCK:
            return
        try:
            if len(header) < 512:
                raise PipelineError(f"{archive} is truncated or corrupt (unexpected end of the tar data)")
            stored = _octal(header[148:156], "checksum", archive)
            if stored != sum(header[:148]) + 256 + sum(header[156:]):  # the checksum field counts as spaces
                raise PipelineError(f"{archive} is truncated or corrupt (bad tar header checksum at byte {pos})")
        except PipelineError:
            if pos == 0:  # not even one good header: something else than a tar
                raise PipelineError(f"{archive} is not a gzip or tar archive") from None
            raise
        size = _octal(header[124:136], "size", archive)
        kind = header[156:157]
        start, pos = pos + 512, pos + 512 + (size + 511) // 512 * 512
        if pos > end:
            raise PipelineError(f"{archive} is truncated or corrupt (unexpected end of the tar data)")
        data = view[start:start + size]
        if kind == b"L":  # GNU: the next member's long name
            long_name = bytes(data).split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        if kind == b"x":  # pax: the next member's attributes
            pax_name = _pax(bytes(data)).get("path", pax_name)
            continue
        if kind in (b"g", b"K"):  # pax global header, GNU long link name: nothing used here
            continue
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345:346] != b"\0":
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        name = pax_name or long_name or name.decode("utf-8", "replace")
        long_name = pax_name = None
        if kind == _DIR:
            name = name.rstrip("/")
        linkname = header[157:257].split(b"\0", 1)[0].decode("utf-8", "replace")
        yield Member(name, kind, linkname, data if kind in _FILE else view[0:0])


_ZERO_BLOCK = bytes(512)


def check_member(m: Member, archive: str) -> None:
    """Refuse what could point outside the archive's folder or be more than plain data."""
    name = m.name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise PipelineError(f"unsafe archive {archive}: absolute path {m.name!r}")
    if ".." in name.split("/"):
        raise PipelineError(f"unsafe archive {archive}: path {m.name!r} leaves the destination")
    if m.type in _KINDS:
        raise PipelineError(f"unsafe archive {archive}: {_KINDS[m.type]} {m.name!r} -> {m.linkname!r}")
    if m.type not in _FILE and m.type != _DIR:
        raise PipelineError(f"unsafe archive {archive}: special file {m.name!r} (device, fifo or other)")


def _one_line(e: BaseException) -> str:
    return " ".join((getattr(e, "strerror", None) or str(e) or type(e).__name__).split())


def read_aclimdb(archive: Path, label_column: str = "label") -> tuple[pa.Table, list[str], dict]:
    """Read the aclImdb tar(.gz) into the raw table, in memory, writing nothing to disk.

    Every member is checked (no absolute paths, `..`, links or devices), members that are not
    reviews (README, vocab, bag-of-words files) are skipped, and the layout is checked.
    `label_column` picks the class: `label` (neg/pos) or `rating` (the stars, 1-4 and 7-10).
    Returns the table, the label map and counts: files in the archive, reviews per folder, invalid UTF-8.
    """
    if label_column not in LABEL_COLUMNS:
        raise PipelineError(f"download.label_column must be one of {list(LABEL_COLUMNS)} for an aclImdb archive, "
                            f"got {label_column!r}")
    name = archive.name
    try:
        packed = archive.read_bytes()
    except OSError as e:
        raise PipelineError(f"cannot read {archive}: {_one_line(e)}") from None
    tar = decompress(packed, name, MAX_TOTAL_BYTES)
    del packed
    found: dict[tuple[str, str], list] = {key: [] for key in FOLDERS}
    folders: set[str] = set()
    files = bad = 0
    for m in iter_tar(tar, name):
        check_member(m, name)
        path = m.name.replace("\\", "/").strip("/")
        is_file = m.type in _FILE
        folders.add(path.rpartition("/")[0] if is_file else path)
        if not is_file:
            continue
        files += 1
        match = _REVIEW.match(path)
        if not match:
            continue
        split, folder, num, rating = match[1], match[2], int(match[3]), int(match[4])
        key = ("unsup", "unsup") if folder == "unsup" else (split, folder)
        if key not in found:  # e.g. test/unsup: not part of the dataset
            continue
        if len(m.data) > MAX_REVIEW_BYTES:
            raise PipelineError(
                f"unsafe archive {name}: review {m.name!r} is {len(m.data):,} bytes "
                f"(limit {MAX_REVIEW_BYTES:,}; IMDB reviews are under 20 kB)"
            )
        text, was_bad = decode(m.data)
        bad += was_bad
        found[key].append((num, f"{split}/{folder}/{num}_{rating}", rating, text))
    if files == 0:
        raise PipelineError(f"{name} holds no files")
    missing = [p for p in LAYOUT.values() if p not in folders]
    if missing:
        raise PipelineError(f"archive {name} lacks the aclImdb layout: missing {', '.join(missing)}")
    rows = {"id": [], "split": [], "rating": [], "label": [], "text": []}
    for (split, folder), reviews in found.items():
        reviews.sort(key=lambda r: r[0])
        rows["id"] += [r[1] for r in reviews]
        rows["split"] += [split] * len(reviews)
        rows["rating"] += [r[2] for r in reviews]
        rows["label"] += [LABELS[folder]] * len(reviews)
        rows["text"] += [r[3] for r in reviews]
    names = SENTIMENT
    if label_column == "rating":
        names = [str(r) for r in sorted({r for r, y in zip(rows["rating"], rows["label"]) if y is not None})]
        index = {int(n): i for i, n in enumerate(names)}
        rows["label"] = [None if y is None else index[r] for r, y in zip(rows["rating"], rows["label"])]
    table = pa.Table.from_pydict(rows, schema=SCHEMA)
    counts = {LAYOUT[key].removeprefix("aclImdb/"): len(v) for key, v in found.items()}
    return table, names, {"files": files, "reviews": counts, "bad_utf8": bad}


def from_rows(splits: dict[str, tuple[list[str], list[int | None], list[int]]]) -> pa.Table:
    """The raw table of a table source: per split (train, unsup, test, in that order), its texts,
    label indices and row numbers in the source file (ids are "<split>/<row>")."""
    rows = {"id": [], "split": [], "rating": [], "label": [], "text": []}
    for split in ("train", "unsup", "test"):
        texts, labels, numbers = splits.get(split, ([], [], []))
        rows["id"] += [f"{split}/{n}" for n in numbers]
        rows["split"] += [split] * len(texts)
        rows["rating"] += [0] * len(texts)
        rows["label"] += list(labels)
        rows["text"] += list(texts)
    return pa.Table.from_pydict(rows, schema=SCHEMA)


def stratified_split(labels: list, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded, stratified by label: (kept, held out) indices, each in input order. `fraction`
    of every label's rows (rounded) is held out."""
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for label in sorted(set(labels), key=lambda x: (x is None, x)):
        idx = [i for i, y in enumerate(labels) if y == label]
        n = round(len(idx) * fraction)
        held.update(int(i) for i in rng.permutation(idx)[:n])
    return [i for i in range(len(labels)) if i not in held], sorted(held)


def write(table: pa.Table, path: Path) -> None:
    """Fixed settings, so the same rows always give the same bytes."""
    pq.write_table(
        table, path, row_group_size=ROW_GROUP, compression="zstd", compression_level=1,
        use_dictionary=["split"], write_statistics=["id", "split", "rating", "label"],
    )


def read_split(path: Path, split: str) -> pa.Table:
    """The rows of one split, in table order."""
    if not path.is_file():
        raise PipelineError(f"{path} not found (run the download stage first)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise PipelineError(f"{path} is not a readable Parquet file ({_one_line(e)})") from None
    if not table.schema.equals(SCHEMA):
        raise PipelineError(f"{path} does not hold the raw-review columns {SCHEMA.names} (rerun the download stage)")
    return table.filter(pc.equal(table["split"], split))
