"""Stage vocab: build the vocabulary from train tokens and id-encode every split.

Outputs in data/vocab/:
    vocab.tsv            token<TAB>count, one per line, in id order (specials first, count 0)
    {split}.parquet      id, label, n_tokens, ids list<int32>
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.common import PipelineError, atomic_dir, run_main, write_json
from pipeline.params import load_params

TOKENS_DIR = Path("data/tokens")
OUT_DIR = Path("data/vocab")
METRICS = Path("metrics/vocab.json")

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = [PAD, UNK, BOS, EOS]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

ENCODED_SCHEMA = pa.schema(
    [("id", pa.string()), ("label", pa.int8()), ("n_tokens", pa.int32()), ("ids", pa.list_(pa.int32()))]
)


def count_tokens(token_lists: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """Token -> count over a list<string> column, counted by Arrow rather than a Python loop."""
    counts = pc.value_counts(pc.list_flatten(token_lists))
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def build_vocab(counts: dict[str, int], max_size: int, min_freq: int) -> list[tuple[str, int]]:
    """Specials first, then tokens by count descending, ties by token, so the order never varies."""
    kept = sorted(((t, c) for t, c in counts.items() if c >= min_freq and t not in SPECIALS), key=lambda x: (-x[1], x[0]))
    return [(s, 0) for s in SPECIALS] + kept[: max(0, max_size - len(SPECIALS))]


def encode(token_lists: pa.ChunkedArray | pa.Array, itos: list[str]) -> pa.Array:
    """list<string> -> list<int32> ids, unknown tokens mapped to <unk>."""
    arr = token_lists.combine_chunks() if isinstance(token_lists, pa.ChunkedArray) else token_lists
    ids = pc.index_in(arr.flatten(), value_set=pa.array(itos, pa.string()))
    ids = pc.fill_null(ids, UNK_ID).cast(pa.int32())
    offsets = pc.subtract(arr.offsets, arr.offsets[0]).cast(pa.int32())
    return pa.ListArray.from_arrays(offsets, ids)


def read_vocab(path: Path) -> list[str]:
    return [line.split("\t", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]


def write_vocab(path: Path, vocab: list[tuple[str, int]]) -> None:
    path.write_text("".join(f"{t}\t{c}\n" for t, c in vocab), encoding="utf-8")


def length_stats(n_tokens: np.ndarray) -> dict:
    if len(n_tokens) == 0:
        return {"p50": 0, "p90": 0, "p99": 0}
    p50, p90, p99 = np.percentile(n_tokens, [50, 90, 99], method="nearest")
    return {"p50": int(p50), "p90": int(p90), "p99": int(p99)}


def main() -> None:
    params = load_params()["vocab"]
    start = time.perf_counter()
    splits = sorted(p.stem for p in TOKENS_DIR.glob("*.parquet"))
    if "train" not in splits:
        raise PipelineError(f"{TOKENS_DIR}/train.parquet not found (run the tokenize stage first)")
    if params.use_unsup and "unsup" not in splits:
        raise PipelineError("vocab.use_unsup needs the unlabelled split: set tokenize.unsup: true")
    counts: dict[str, int] = {}
    for split in ["train", "unsup"] if params.use_unsup else ["train"]:
        for t, c in count_tokens(pq.read_table(TOKENS_DIR / f"{split}.parquet", columns=["tokens"])["tokens"]).items():
            counts[t] = counts.get(t, 0) + c
    vocab = build_vocab(counts, params.max_size, params.min_freq)
    itos = [t for t, _ in vocab]
    metrics = {"size": len(vocab), "splits": {}}
    with atomic_dir(OUT_DIR) as tmp:
        write_vocab(tmp / "vocab.tsv", vocab)
        for split in splits:
            pf = pq.ParquetFile(TOKENS_DIR / f"{split}.parquet")
            n_unk = n_tok = 0
            lengths = []
            with pq.ParquetWriter(tmp / f"{split}.parquet", ENCODED_SCHEMA, compression="zstd", compression_level=3) as w:
                for i in range(pf.num_row_groups):  # row group by row group: bounded memory
                    t = pf.read_row_group(i, columns=["id", "label", "n_tokens", "tokens"])
                    ids = encode(t["tokens"], itos)
                    n_unk += int(pc.sum(pc.equal(ids.flatten(), UNK_ID)).as_py() or 0)
                    n_tok += len(ids.flatten())
                    lengths.append(t["n_tokens"].to_numpy())
                    w.write_table(pa.table([t["id"], t["label"], t["n_tokens"], ids], schema=ENCODED_SCHEMA))
            metrics["splits"][split] = {
                "tokens": n_tok,
                "unk_rate": round(n_unk / max(n_tok, 1), 6),
                "length": length_stats(np.concatenate(lengths) if lengths else np.array([])),
            }
    write_json(METRICS, metrics)
    print(f"vocab: {len(vocab):,} entries, splits {', '.join(splits)} ({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    run_main(main)
