"""Stage tokenize: the raw-review table -> cleaned spaCy tokens in Parquet, one file per split.

Schema of data/tokens/{train,valid,test,unsup}.parquet (zstd level 1, one row group per
tokenize.chunk_size reviews; unsup only with tokenize.unsup):
    id        string          e.g. "train/pos/10_9" (the review's path in the archive; unique)
    rating    int8            the star rating from an aclImdb file name (0 for unlabelled and table sources)
    label     int8, nullable  the class's index in data/tokens/labels.json, null for unlabelled
    n_tokens  int32           number of tokens (0 for an empty review)
    tokens    list<string>    spaCy tokens of the cleaned, cut review; lowercased with tokenize.lowercase
Rows keep the order of data/raw/reviews.parquet (pos then neg, each by numeric id; valid is a
seeded stratified draw from train), and the bytes do not depend on tokenize.workers.
"""
from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import multiprocessing.pool
import signal
import time
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import paths, raw
from pipeline.labels import read_labels, write_labels
from pipeline import text as T
from pipeline.common import atomic_dir, cpu_count, progress, run_main, write_json
from pipeline.params import load_params

RAW = paths.RAW
OUT_DIR = paths.TOKENS
METRICS = paths.metrics("tokenize")

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("rating", pa.int8()),
        ("label", pa.int8()),
        ("n_tokens", pa.int32()),
        ("tokens", pa.list_(pa.string())),
    ]
)
# What tokenize_chunk builds: the tokens as dictionary arrays, written to Parquet's dictionary
# pages as they are. The files store no Arrow schema, so they read back as SCHEMA.
_BUILT = SCHEMA.set(4, pa.field("tokens", pa.list_(pa.dictionary(pa.int32(), pa.string()))))
def split_valid(table: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """A seeded split stratified by label; both parts keep the input order."""
    train, valid = raw.stratified_split(table["label"].to_pylist(), fraction, seed)
    return table.take(train), table.take(valid)


# Each worker process holds its own tokenizer (loaded once in the parent and inherited through
# fork); results travel back as Arrow tables of plain strings, which is far cheaper than
# shipping spaCy Doc objects between processes (`nlp.pipe(n_process=2)` was slower than one).
_TOKENIZER = None


def _tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        tokenizer = T.load_tokenizer()
        # One small call pulls in what the first call imports lazily (pyarrow's pandas shim:
        # ~0.3 s), here once rather than in every forked worker. Outputs do not change.
        T.tokenize_arrow(tokenizer, ["Warm-up."], True)
        _TOKENIZER = tokenizer
    return _TOKENIZER


def reset_tokenizer() -> None:
    """Forget the loaded tokenizer (and its caches), so the next chunk starts from a fresh one."""
    global _TOKENIZER
    _TOKENIZER = None


def tokenize_chunk(args: tuple[pa.Table, bool, int]) -> tuple[pa.Table, dict]:
    """Clean and tokenize one chunk of raw rows into a table (SCHEMA, tokens dictionary-typed).

    Returns the table and counts of odd inputs; an odd review never stops the stage:
    an empty review is kept with no tokens, and a long one is cut to max_chars characters
    before spaCy sees it.
    """
    rows, lowercase, max_chars = args
    texts, stats = [], {"empty": 0, "truncated": 0}
    for text in rows["text"].to_pylist():
        text = T.clean(text)
        if len(text) > max_chars:
            stats["truncated"] += 1
            text = text[:max_chars]
        stats["empty"] += not text
        texts.append(text)
    tokens = T.tokenize_arrow(_tokenizer(), texts, lowercase, dictionary=True)
    table = pa.Table.from_arrays(
        [rows["id"], rows["rating"], rows["label"], pc.list_value_length(tokens).cast(pa.int32()), tokens],
        schema=_BUILT,
    )
    return table, stats


def parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """Fixed settings so the same rows always give the same bytes.

    zstd level 1 (level 3: ~40% more write time for 2% smaller files); a dictionary only for the
    tokens (ids are unique); no min/max statistics over the tokens (no reader filters on them);
    no stored Arrow schema, so dictionary-typed tokens read back as plain list<string>.
    """
    return pq.ParquetWriter(
        path, schema, compression="zstd", compression_level=1, store_schema=False,
        use_dictionary=["tokens.list.element"], write_statistics=["id", "rating", "label", "n_tokens"],
    )


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[mp.pool.Pool | None]:
    """A fork pool of `workers` processes (None for one: work stays in this process).

    The tokenizer is loaded before forking, so workers start without loading spaCy again.
    """
    _tokenizer()
    if workers <= 1:
        yield None
        return
    # Workers leave SIGTERM to its default: the parent's handler (run_main) would turn the
    # pool's own shutdown signal into an error in every worker.
    pool = mp.get_context("fork").Pool(workers, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


def ordered_map(fn, items: Iterable, pool, window: int) -> Iterator:
    """fn over items, results in input order, with at most `window` items in flight.

    Unlike Pool.imap, whose feeder thread submits all input at once and lets results pile up
    when writing falls behind, this bounds memory: at most `window` chunks are being
    tokenized or waiting to be written.
    """
    if pool is None:
        yield from map(fn, items)
        return
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def tokenize_split(
    reviews: pa.Table, out: Path, pool, lowercase: bool, max_chars: int, chunk_size: int, desc: str, window: int = 4
) -> dict:
    """Tokenize raw rows chunk by chunk into `out`, one row group per chunk, rows in input order.

    The chunks, and so the row groups and the file's bytes, do not depend on the number of workers.
    """
    # combine_chunks: a slice then travels to a worker as its own rows, not the whole buffer.
    chunks = (reviews.slice(i, chunk_size).combine_chunks() for i in range(0, reviews.num_rows, chunk_size))
    results = ordered_map(tokenize_chunk, ((c, lowercase, max_chars) for c in chunks), pool, window)
    stats = {"reviews": reviews.num_rows, "tokens": 0, "empty": 0, "truncated": 0}
    with parquet_writer(out, _BUILT) as writer, progress(total=reviews.num_rows, desc=desc, unit="rev") as bar:
        for table, chunk_stats in results:
            writer.write_table(table)
            stats["tokens"] += pc.sum(table["n_tokens"]).as_py() or 0
            for k, v in chunk_stats.items():
                stats[k] += v
            bar.update(table.num_rows)
    return stats


def main() -> None:
    params = load_params("tokenize")["tokenize"]
    start = time.perf_counter()
    train, valid = split_valid(raw.read_split(RAW, "train"), params.valid_fraction, params.seed)
    labels = read_labels(paths.RAW_LABELS)
    splits = {"train": train, "valid": valid, "test": raw.read_split(RAW, "test")}
    if params.unsup:
        splits["unsup"] = raw.read_split(RAW, "unsup")
    workers = params.workers or cpu_count()
    metrics = {}
    with worker_pool(workers) as pool, atomic_dir(OUT_DIR) as tmp:
        for name, reviews in splits.items():
            metrics[name] = tokenize_split(
                reviews, tmp / f"{name}.parquet", pool, params.lowercase, params.max_chars, params.chunk_size, name,
                window=2 * workers,
            )
        write_labels(tmp / paths.TOKENS_LABELS.name, labels)
    write_json(METRICS, metrics)
    total = sum(m["tokens"] for m in metrics.values())
    print(f"tokenize: {total:,} tokens in {sum(t.num_rows for t in splits.values()):,} reviews "
          f"({workers} workers, {time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    run_main(main)
