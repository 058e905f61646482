"""Stage vocab: build the vocabulary from train tokens and id-encode every split.

Outputs in data/vocab/:
    vocab.tsv            token<TAB>count, one per line, in id order (specials first, count 0);
                         the line number minus one is the token's id
    {split}.parquet      id string, label int8 (null for unsup), n_tokens int32, ids list<int32>
                         (zstd; one row group per row group of data/tokens/{split}.parquet)
    vectors.npy          only when vocab.vectors is set: float32 (len(vocab), dim), row i is the
                         pretrained vector of token i; <pad> zeros; tokens missing from the file
                         get small seeded random rows (normal, std 0.1)

Counts come from train (and unsup with vocab.use_unsup). Tokens are ordered by count, highest
first, ties by the token's code points, so the same counts always give the same ids.
"""
from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import paths
from pipeline.labels import read_labels, write_labels
from pipeline.common import PipelineError, atomic_dir, progress, run_main, write_json
from pipeline.data import PAD_ID, SPECIALS, UNK_ID, write_vocab
from pipeline.params import load_params

TOKENS_DIR = paths.TOKENS
OUT_DIR = paths.VOCAB
VECTORS_DIR = paths.VECTORS  # a dependency of the stage in dvc.yaml: vectors files live here
METRICS = paths.metrics("vocab")

VECTORS_SEED = 0
VECTORS_STD = 0.1  # of the random rows for tokens without a pretrained vector

ENCODED_SCHEMA = pa.schema(
    [("id", pa.string()), ("label", pa.int8()), ("n_tokens", pa.int32()), ("ids", pa.list_(pa.int32()))]
)


def _chunks(token_lists: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    chunks = token_lists.chunks if isinstance(token_lists, pa.ChunkedArray) else [token_lists]
    return [c for c in chunks if len(c)]


def _value_counts(values: pa.Array) -> pa.Table:
    """(token, count) of a string or dictionary<string> array."""
    if pa.types.is_dictionary(values.type):
        # Read with read_dictionary, a row group's tokens arrive as indices into the row group's
        # Parquet dictionary: count the small integers, never materialise the strings.
        counts = np.bincount(values.indices.to_numpy(zero_copy_only=False), minlength=len(values.dictionary))
        return pa.table({"token": values.dictionary, "count": pa.array(counts, pa.int64())}).filter(pa.array(counts > 0))
    vc = pc.value_counts(values)
    return pa.table({"token": vc.field("values"), "count": vc.field("counts")})


def _sum_counts(parts: list[pa.Table]) -> pa.Table:
    t = pa.concat_tables(parts).group_by("token", use_threads=False).aggregate([("count", "sum")])
    return pa.table({"token": t["token"].cast(pa.string()), "count": t["count_sum"]})


def count_files(paths: list[Path]) -> dict[str, int]:
    """Token counts over the `tokens` column of Parquet files, one row group at a time.

    Memory stays bounded by the number of distinct tokens, not the number of tokens.
    """
    parts: list[pa.Table] = []
    for path in paths:
        pf = tokens_file(path)
        for i in range(pf.num_row_groups):
            parts += [_value_counts(c.flatten()) for c in _chunks(pf.read_row_group(i, columns=["tokens"])["tokens"])]
            if len(parts) >= 32:
                parts = [_sum_counts(parts)]
    if not parts:
        return {}
    total = _sum_counts(parts)
    return dict(zip(total["token"].to_pylist(), total["count"].to_pylist()))


def build_vocab(counts: dict[str, int], max_size: int, min_freq: int) -> list[tuple[str, int]]:
    """Specials first, then tokens by count descending, ties by token, so the order never varies."""
    kept = sorted(((t, c) for t, c in counts.items() if c >= min_freq and t not in SPECIALS), key=lambda x: (-x[1], x[0]))
    return [(s, 0) for s in SPECIALS] + kept[: max(0, max_size - len(SPECIALS))]


def tokens_file(path: Path) -> pq.ParquetFile:
    """A tokens file whose token lists read as dictionary arrays (indices into each row group's
    dictionary), so counting and encoding look up each distinct token once, not every token."""
    return pq.ParquetFile(path, read_dictionary=["tokens.list.element"])


def encode(token_lists: pa.ChunkedArray | pa.Array, itos: list[str] | pa.Array) -> pa.Array:
    """list<string> (or list<dictionary<string>>) -> list<int32> ids, unknown tokens mapped to <unk>."""
    value_set = itos if isinstance(itos, pa.Array) else pa.array(itos, pa.string())
    out = []
    for arr in _chunks(token_lists):
        values = arr.flatten()
        if pa.types.is_dictionary(values.type):
            lookup = pc.fill_null(pc.index_in(values.dictionary, value_set=value_set), UNK_ID).cast(pa.int32())
            ids = lookup.take(values.indices)
        else:
            ids = pc.fill_null(pc.index_in(values, value_set=value_set), UNK_ID).cast(pa.int32())
        offsets = pc.subtract(arr.offsets, arr.offsets[0]).cast(pa.int32())
        out.append(pa.ListArray.from_arrays(offsets, ids))
    if len(out) == 1:
        return out[0]
    return pa.concat_arrays(out) if out else pa.array([], pa.list_(pa.int32()))


def length_stats(n_tokens: np.ndarray) -> dict:
    if len(n_tokens) == 0:
        return {"p50": 0, "p90": 0, "p99": 0}
    p50, p90, p99 = np.percentile(n_tokens, [50, 90, 99], method="nearest")
    return {"p50": int(p50), "p90": int(p90), "p99": int(p99)}


def vectors_path(value: str) -> Path | None:
    """The vectors file named by vocab.vectors, checked before any work; None when unset.

    It must lie under data/vectors/, which dvc.yaml declares as a dependency of this stage:
    that is how a changed vectors file reruns the stage (a dependency cannot depend on a param).
    """
    if not value:
        return None
    path = Path(value)
    inside = os.path.abspath(path).startswith(os.path.abspath(VECTORS_DIR) + os.sep)
    if not inside:
        raise PipelineError(f"vocab.vectors must be a file under {VECTORS_DIR}/ (a dependency of the stage), got {value!r}")
    if not path.is_file():
        raise PipelineError(f"vocab.vectors: {value} not found")
    return path


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_vectors(path: Path, itos: list[str], seed: int = VECTORS_SEED) -> tuple[np.ndarray, dict]:
    """An embedding matrix aligned to `itos` from a GloVe or word2vec text file.

    Lines are `word v1 ... vD`; word2vec's first line `<count> <dim>` is recognised and skipped.
    A token takes the vector of its exact word, else of its lowercase form (GloVe is lowercase),
    the first line winning when a word repeats. Every line must have D values (a clear error
    names the first that does not). Only lines of vocabulary words are parsed, so a 400,000-word
    file costs a few seconds.
    """
    index = {w: i for i, w in enumerate(itos) if w not in SPECIALS}
    folded: dict[str, list[int]] = {}
    for w, i in index.items():
        if w.lower() != w:
            folded.setdefault(w.lower(), []).append(i)
    exact: dict[int, np.ndarray] = {}
    lowered: dict[int, np.ndarray] = {}
    dim = None

    def parse(values: str, lineno: int) -> np.ndarray:
        try:
            return np.array(values.split(" "), dtype=np.float32)
        except ValueError:
            raise PipelineError(f"{path}:{lineno}: values are not numbers") from None

    with _open_text(path) as f, progress(desc="vectors", unit=" lines") as bar:
        for lineno, line in enumerate(f, 1):
            bar.update()
            line = line.rstrip()
            if not line:
                continue
            word, _, values = line.partition(" ")
            n = values.count(" ") + 1 if values else 0
            if dim is None:
                if lineno == 1 and n == 1 and word.isdigit() and values.isdigit():
                    dim = int(values)  # word2vec header: "<count> <dim>"
                    if dim < 1:
                        raise PipelineError(f"{path}:1: header gives dimension {dim}")
                    continue
                if n < 1:
                    raise PipelineError(f"{path}:{lineno}: no vector values after {word!r}")
                dim = n
            if n != dim:
                raise PipelineError(
                    f"{path}:{lineno}: {n} values for {word!r}, expected {dim} like the lines before "
                    f"(mixed dimensions, or not a GloVe/word2vec text file)"
                )
            i = index.get(word)
            if i is not None and i not in exact:
                exact[i] = parse(values, lineno)
            for j in folded.get(word, ()):
                if j not in lowered:
                    lowered[j] = parse(values, lineno)
    if dim is None:
        raise PipelineError(f"{path}: no vectors in the file")
    matrix = np.random.default_rng(seed).normal(0.0, VECTORS_STD, size=(len(itos), dim)).astype(np.float32)
    for rows in (lowered, exact):  # exact matches win
        for i, v in rows.items():
            matrix[i] = v
    matrix[PAD_ID] = 0.0
    found = sorted(set(exact) | set(lowered))
    words = max(len(itos) - len(SPECIALS), 1)
    stats = {
        "file": str(path),
        "dim": dim,
        "found": len(found),
        "found_lowercased": len(set(lowered) - set(exact)),
        "coverage": round(len(found) / words, 6),
    }
    return matrix, {**stats, "_found_ids": found}


def encode_split(src: Path, dst: Path, itos: pa.Array, bar) -> dict:
    """Id-encode one tokens file into `dst`, row group by row group (bounded memory); return its metrics."""
    pf = tokens_file(src)
    n_unk = n_tok = 0
    lengths = []
    with pq.ParquetWriter(dst, ENCODED_SCHEMA, compression="zstd", compression_level=1) as w:
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i, columns=["id", "label", "n_tokens", "tokens"])
            ids = encode(t["tokens"], itos)
            flat = ids.flatten()
            n_unk += int(pc.sum(pc.equal(flat, UNK_ID)).as_py() or 0)
            n_tok += len(flat)
            lengths.append(t["n_tokens"].to_numpy())
            w.write_table(pa.table([t["id"], t["label"], t["n_tokens"], ids], schema=ENCODED_SCHEMA))
            bar.update()
    n_tokens = np.concatenate(lengths) if lengths else np.array([], dtype=np.int32)
    return {
        "reviews": int(len(n_tokens)),
        "empty": int((n_tokens == 0).sum()),
        "tokens": n_tok,
        "unk": n_unk,
        "unk_rate": round(n_unk / max(n_tok, 1), 6),
        "length": length_stats(n_tokens),
    }


def main() -> None:
    params = load_params("vocab")["vocab"]
    vectors = vectors_path(params.vectors)
    start = time.perf_counter()
    splits = sorted(p.stem for p in TOKENS_DIR.glob("*.parquet"))
    if "train" not in splits:
        raise PipelineError(f"{TOKENS_DIR}/train.parquet not found (run the tokenize stage first)")
    if params.use_unsup and "unsup" not in splits:
        raise PipelineError("vocab.use_unsup needs the unlabelled split: set tokenize.unsup: true")
    labels = read_labels(paths.TOKENS_LABELS)
    counted = ["train", "unsup"] if params.use_unsup else ["train"]
    counts = count_files([TOKENS_DIR / f"{s}.parquet" for s in counted])
    vocab = build_vocab(counts, params.max_size, params.min_freq)
    itos = [t for t, _ in vocab]
    counted_tokens = sum(counts.values())
    metrics = {
        "size": len(vocab),
        "counted_splits": counted,
        "counted_tokens": counted_tokens,
        "counted_types": len(counts),
        "splits": {},
    }
    with atomic_dir(OUT_DIR) as tmp:
        write_vocab(tmp / "vocab.tsv", vocab)
        write_labels(tmp / paths.VOCAB_LABELS.name, labels)
        if vectors is not None:
            matrix, vstats = read_vectors(vectors, itos)
            found = vstats.pop("_found_ids")
            vstats["token_coverage"] = round(sum(counts.get(itos[i], 0) for i in found) / max(counted_tokens, 1), 6)
            np.save(tmp / "vectors.npy", matrix)
            metrics["vectors"] = vstats
        value_set = pa.array(itos, pa.string())
        groups = sum(pq.ParquetFile(TOKENS_DIR / f"{s}.parquet").num_row_groups for s in splits)
        with progress(total=groups, desc="encode", unit=" row groups") as bar:
            for split in splits:
                metrics["splits"][split] = encode_split(
                    TOKENS_DIR / f"{split}.parquet", tmp / f"{split}.parquet", value_set, bar
                )
    write_json(METRICS, metrics)
    print(f"vocab: {len(vocab):,} entries, splits {', '.join(splits)} ({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    run_main(main)
