"""Stage tokenize: raw reviews -> cleaned spaCy tokens in Parquet, one file per split.

Schema of data/tokens/{train,valid,test,unsup}.parquet (zstd, one row group per chunk):
    id        string          e.g. "train/pos/10_9" (file path without .txt; unique)
    rating    int8            the star rating from the file name (0 for unlabelled)
    label     int8, nullable  1 positive, 0 negative, null for unlabelled
    n_tokens  int32
    tokens    list<string>
"""
from __future__ import annotations

import multiprocessing as mp
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import text as T
from pipeline.common import PipelineError, atomic_dir, cpu_count, progress, run_main, write_json
from pipeline.params import load_params

RAW_DIR = Path("data/raw/aclImdb")
OUT_DIR = Path("data/tokens")
METRICS = Path("metrics/tokenize.json")

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("rating", pa.int8()),
        ("label", pa.int8()),
        ("n_tokens", pa.int32()),
        ("tokens", pa.list_(pa.string())),
    ]
)
_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")
LABELS = {"pos": 1, "neg": 0, "unsup": None}


@dataclass(frozen=True)
class Review:
    id: str
    path: Path
    rating: int
    label: int | None


def list_reviews(raw_dir: Path, split: str, folders: list[str]) -> list[Review]:
    """Reviews of one split in a stable order: folder, then numeric id."""
    reviews = []
    for folder in folders:
        d = raw_dir / split / folder
        if not d.is_dir():
            raise PipelineError(f"missing folder {d} (run the download stage first)")
        found = []
        for p in d.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m[1]), p, int(m[2])))
        for num, p, rating in sorted(found, key=lambda x: x[0]):
            reviews.append(Review(f"{split}/{folder}/{p.stem}", p, rating, LABELS[folder]))
    return reviews


def split_valid(reviews: list[Review], fraction: float, seed: int) -> tuple[list[Review], list[Review]]:
    """A seeded split stratified by label; both parts keep the input order."""
    rng = np.random.default_rng(seed)
    valid_idx: set[int] = set()
    for label in sorted({r.label for r in reviews}):
        idx = [i for i, r in enumerate(reviews) if r.label == label]
        n = round(len(idx) * fraction)
        valid_idx.update(int(i) for i in rng.permutation(idx)[:n])
    train = [r for i, r in enumerate(reviews) if i not in valid_idx]
    valid = [r for i, r in enumerate(reviews) if i in valid_idx]
    return train, valid


# Each worker process holds its own tokenizer; results travel back as plain lists,
# which is far cheaper than shipping spaCy Doc objects between processes.
_TOKENIZER = None


def _init_worker() -> None:
    global _TOKENIZER
    _TOKENIZER = T.load_tokenizer()


def tokenize_chunk(args: tuple[list[bytes], bool, int]) -> tuple[list[list[str]], dict]:
    """Decode, clean and tokenize raw review bytes. Returns tokens and counts of odd inputs."""
    raws, lowercase, max_chars = args
    global _TOKENIZER
    if _TOKENIZER is None:
        _init_worker()
    texts, stats = [], {"bad_utf8": 0, "empty": 0, "truncated": 0}
    for raw in raws:
        text, bad = T.decode(raw)
        stats["bad_utf8"] += bad
        cleaned = T.clean(text)
        if len(cleaned) > max_chars:
            stats["truncated"] += 1
            cleaned = cleaned[:max_chars]
        stats["empty"] += not cleaned
        texts.append(cleaned)
    return T.tokenize(_TOKENIZER, texts, lowercase), stats


def to_table(reviews: list[Review], tokens: list[list[str]]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([r.id for r in reviews], pa.string()),
            "rating": pa.array([r.rating for r in reviews], pa.int8()),
            "label": pa.array([r.label for r in reviews], pa.int8()),
            "n_tokens": pa.array([len(t) for t in tokens], pa.int32()),
            "tokens": pa.array(tokens, pa.list_(pa.string())),
        },
        schema=SCHEMA,
    )


def parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    # Fixed settings so the same rows always give the same bytes.
    return pq.ParquetWriter(path, schema, compression="zstd", compression_level=3, use_dictionary=True)


def tokenize_split(reviews, out: Path, pool, lowercase: bool, max_chars: int, chunk_size: int, desc: str) -> dict:
    """Tokenize reviews chunk by chunk into `out`; memory stays bounded by the chunk size."""
    chunks = [reviews[i : i + chunk_size] for i in range(0, len(reviews), chunk_size)]

    def jobs():
        for chunk in chunks:
            yield [r.path.read_bytes() for r in chunk], lowercase, max_chars

    results = pool.imap(tokenize_chunk, jobs()) if pool else map(tokenize_chunk, jobs())
    stats = {"reviews": len(reviews), "tokens": 0, "bad_utf8": 0, "empty": 0, "truncated": 0}
    with parquet_writer(out, SCHEMA) as writer, progress(total=len(reviews), desc=desc, unit="rev") as bar:
        for chunk, (tokens, chunk_stats) in zip(chunks, results):
            writer.write_table(to_table(chunk, tokens))
            stats["tokens"] += sum(len(t) for t in tokens)
            for k, v in chunk_stats.items():
                stats[k] += v
            bar.update(len(chunk))
    return stats


def main() -> None:
    params = load_params()["tokenize"]
    start = time.perf_counter()
    train, valid = split_valid(list_reviews(RAW_DIR, "train", ["pos", "neg"]), params.valid_fraction, params.seed)
    splits = {"train": train, "valid": valid, "test": list_reviews(RAW_DIR, "test", ["pos", "neg"])}
    if params.unsup:
        splits["unsup"] = list_reviews(RAW_DIR, "train", ["unsup"])
    workers = params.workers or cpu_count()
    metrics = {}
    # fork keeps worker start-up cheap; results come back in submission order (imap).
    pool = mp.get_context("fork").Pool(workers, initializer=_init_worker) if workers > 1 else None
    try:
        with atomic_dir(OUT_DIR) as tmp:
            for name, reviews in splits.items():
                metrics[name] = tokenize_split(
                    reviews, tmp / f"{name}.parquet", pool, params.lowercase, params.max_chars, params.chunk_size, name
                )
    finally:
        if pool:
            pool.close()
            pool.join()
    write_json(METRICS, metrics)
    total = sum(m["tokens"] for m in metrics.values())
    print(f"tokenize: {total:,} tokens in {sum(len(r) for r in splits.values()):,} reviews "
          f"({workers} workers, {time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    run_main(main)
