"""The vocabulary file, encoded reviews as arrays, truncation, and length-bucketed batches
(the torchtext BucketIterator, done plainly). torch is imported where tensors are made, so the
vocab stage reads and writes these files without it."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from pipeline.common import PipelineError

if TYPE_CHECKING:
    import torch

# The vocabulary's first entries, in id order.
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = [PAD, UNK, BOS, EOS]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


def read_vocab(path: Path) -> list[str]:
    """The tokens of a vocab.tsv (token<TAB>count), in id order."""
    if not path.is_file():
        raise PipelineError(f"{path} not found (run the vocab stage first)")
    # split("\n"), not splitlines(): a token may hold characters splitlines() breaks on (\x1c, \u2028).
    return [line.split("\t", 1)[0] for line in path.read_text(encoding="utf-8").split("\n") if line]


def write_vocab(path: Path, vocab: list[tuple[str, int]]) -> None:
    path.write_text("".join(f"{t}\t{c}\n" for t, c in vocab), encoding="utf-8")


def load_split(path: Path) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """(token id arrays, labels, ids) of an encoded split; one flat buffer, sliced without copies."""
    if not path.is_file():
        raise PipelineError(f"{path} not found (run the vocab stage first)")
    table = pq.read_table(path, columns=["id", "label", "ids"])
    col = table["ids"].combine_chunks()
    flat = col.values.to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = col.offsets.to_numpy()
    seqs = [flat[offsets[i] : offsets[i + 1]] for i in range(len(col))]
    labels = table["label"].to_numpy(zero_copy_only=False)
    return seqs, labels, table["id"].to_pylist()


def truncate(seq: np.ndarray, max_len: int, head_fraction: float) -> np.ndarray:
    """Keep the head and the tail: reviews tend to state their verdict at the start or the end."""
    if len(seq) <= max_len:
        return seq
    head = int(round(max_len * head_fraction))
    tail = max_len - head
    return np.concatenate([seq[:head], seq[len(seq) - tail :]]) if tail else seq[:head]


def classifier_input(seq: np.ndarray, max_len: int, head_fraction: float, reverse: bool = False) -> np.ndarray:
    """What a classifier reads of a review: its head and tail (truncate), last word first for a
    classifier started from the backward language model. train, evaluate and predict all call
    this with the checkpoint's settings, so a model sees a review the same way in each."""
    seq = truncate(seq, max_len, head_fraction)
    return seq[::-1] if reverse else seq


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None, pool: int = 50) -> list[np.ndarray]:
    """Batches of indices of similar length, so little of each batch is padding.

    Training (rng given): shuffle, sort within pools of `pool` batches, then shuffle the
    batches, so every epoch sees different, still length-homogeneous batches.
    Evaluation (rng None): one global sort, for the least padding.
    """
    n = len(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = rng.permutation(n)
    batches = []
    step = batch_size * pool
    for start in range(0, n, step):
        chunk = perm[start : start + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def padded_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of token slots in the padded batches that are padding."""
    slots = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1.0 - float(sum(int(lengths[b].sum()) for b in batches)) / max(slots, 1)


def collate(seqs: list[np.ndarray], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (batch, time) ids and their lengths. Empty reviews become one <pad>: length 0 is masked.

    `multiple` rounds the time axis up, for fewer distinct batch shapes (the model masks padding
    either way); on this CPU it bought neither speed nor much memory (benchmarks/bench_epoch.py
    --pad-multiple, docs/benchmarks.md), so the stages leave it at 1."""
    import torch

    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    steps = -(-max(int(lengths.max()), 1) // multiple) * multiple
    out = np.full((len(seqs), steps), PAD_ID, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out), torch.from_numpy(lengths)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU through pinned memory, so the copy runs asynchronously."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)
