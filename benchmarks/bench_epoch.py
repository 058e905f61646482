"""Why a whole training epoch runs slower than bench_train's step: the classifier's step timed batch
by batch over the first --batches batches of epoch 1, in two passes over the same batches.

    python -m benchmarks.bench_epoch --batches 60 --malloc default    # glibc's malloc as it comes
    python -m benchmarks.bench_epoch --batches 60                     # as the training stages set it
    python -m benchmarks.bench_epoch --batches 60 --pad-multiple 16   # batch lengths rounded up: fewer shapes

The first pass is what an epoch does (each new padded length is a new shape for oneDNN's LSTM and
new buffer sizes for malloc); the second repeats the same batches, as bench_train's timed rounds do after
its warm-up. Tokens/s are given per pass, for the batches whose length the first pass had not seen
before against those it had, and by padded length. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from pipeline import data
from pipeline.model import Classifier
from pipeline.params import load_params
from pipeline.train import run_epoch

LENGTH_BINS = (0, 150, 300, 500, 10_000)


def timed_pass(model, seqs, labels, batches, opt, sched, precision, pad_multiple) -> list[tuple[int, int, float]]:
    """(padded length, real tokens, seconds) of each batch: forward + backward + step."""
    out = []
    for b in batches:
        t0 = time.perf_counter()
        _, _, tokens = run_epoch(model, seqs, labels, [b], torch.device("cpu"), opt, sched, precision=precision,
                                  pad_multiple=pad_multiple)
        seconds = time.perf_counter() - t0
        padded = data.collate([seqs[i] for i in b], pad_multiple)[0].size(1)  # the step's length, as collate made it
        out.append((padded, tokens, seconds))
    return out


def rate(rows) -> int | None:
    seconds = sum(r[2] for r in rows)
    return round(sum(r[1] for r in rows) / seconds) if rows else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/vocab/train.parquet"))
    ap.add_argument("--batches", type=int, default=120, help="batches of epoch 1 timed (0 = the whole epoch)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = train.threads")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--malloc", default="kept", choices=["kept", "default"],
                    help="kept: glibc malloc set as the training stages set it; default: glibc's own")
    ap.add_argument("--pad-multiple", type=int, default=1, help="round each batch's length up to a multiple of this")
    args = ap.parse_args()

    p = load_params("train")["train"]
    torch.set_num_threads(args.threads or p.threads or torch.get_num_threads())
    record = {"benchmark": "epoch_gap", **harness.machine(args.malloc), "precision": args.precision,
              "onednn_cache": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    seqs, labels, _ = data.load_split(args.data)
    seqs = [data.truncate(s, p.max_len, p.head_fraction) for s in seqs]
    lengths = np.array([len(s) for s in seqs])
    batches = data.bucket_batches(lengths, p.batch_size, np.random.default_rng([p.seed, 0]))  # fit()'s epoch 1
    batches = batches[: args.batches] if args.batches else batches
    vocab = int(max(int(s.max()) for s in seqs if len(s)) + 1)
    torch.manual_seed(p.seed)
    model = Classifier(vocab, p.embed_dim, p.hidden, p.layers, p.bidirectional, p.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    record["pad_multiple"] = args.pad_multiple
    first = timed_pass(model, seqs, labels, batches, opt, sched, args.precision, args.pad_multiple)
    second = timed_pass(model, seqs, labels, batches, opt, sched, args.precision, args.pad_multiple)
    seen: set[int] = set()
    new, repeated = [], []
    for row in first:
        (repeated if row[0] in seen else new).append(row)
        seen.add(row[0])
    bins = {f"{lo}-{hi}": [rate([r for r in rows if lo <= r[0] < hi]) for rows in (first, second)]
            for lo, hi in zip(LENGTH_BINS, LENGTH_BINS[1:])}
    record.update({
        "batches": len(batches), "distinct_lengths": len(seen),
        "tokens_per_s": {"first_pass": rate(first), "second_pass": rate(second),
                         "first_pass_new_length": rate(new), "first_pass_seen_length": rate(repeated),
                         "second_pass_first_30": rate(second[:30])},
        "tokens_per_s_by_length_first_second": bins,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    })
    print(json.dumps(record))


if __name__ == "__main__":
    main()
