"""Training throughput of the project's classifier against a bare nn.LSTM loop on the same batches.

    python -m benchmarks.bench_train                      # data/vocab/train.parquet, params.yaml train section
    python -m benchmarks.bench_train --batches 40 --rounds 6 --precision fp32 bf16

Every arm does forward + backward + optimizer step on the same length-bucketed, padded batches;
tokens/s counts real (unpadded) tokens. Each arm first runs over all the timed batches once
untimed (oneDNN builds one primitive per sequence length, so a shorter warm-up times primitive
creation), then the arms alternate A B B A over --rounds. Prints one JSON line: each arm's median
and spread, the ratios to the bare fp32 loop, the machine, thread settings and load average.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks import harness
from pipeline import data
from pipeline.model import Classifier
from pipeline.params import load_params
from pipeline.train import run_epoch


class BareLSTM(nn.Module):
    """The textbook loop: embedding, one nn.LSTM call over the padded batch, last time step."""

    def __init__(self, vocab, embed, hidden, layers, bidirectional):
        super().__init__()
        self.config = {"classes": 2}  # what run_epoch reads to pick the loss
        self.embedding = nn.Embedding(vocab, embed, padding_idx=0)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), 1)

    def forward(self, ids, lengths):
        h, _ = self.lstm(self.embedding(ids))
        return self.out(h[:, -1]).squeeze(-1)


def arm(model, seqs, labels, batches, lr, precision):
    """A warm closure: real tokens per second of one timed pass of forward + backward + step."""
    cpu = torch.device("cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    run_epoch(model, seqs, labels, batches, cpu, opt, sched, precision=precision)  # warm-up: every shape once

    def timed() -> float:
        t0 = time.perf_counter()
        _, _, tokens = run_epoch(model, seqs, labels, batches, cpu, opt, sched, precision=precision)
        return tokens / (time.perf_counter() - t0)
    return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/vocab/train.parquet"))
    ap.add_argument("--batches", type=int, default=40, help="batches timed per arm and round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = train.threads")
    ap.add_argument("--rounds", type=int, default=6, help="timed passes per arm, interleaved")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    args = ap.parse_args()

    p = load_params("train")["train"]
    torch.set_num_threads(args.threads or p.threads or torch.get_num_threads())
    record = {"benchmark": "train_throughput", **harness.machine()}
    seqs, labels, _ = data.load_split(args.data)
    seqs = [data.truncate(s, p.max_len, p.head_fraction) for s in seqs]
    lengths = np.array([len(s) for s in seqs])
    batches = data.bucket_batches(lengths, p.batch_size, np.random.default_rng(p.seed))[: args.batches]
    vocab = int(max(int(s.max()) for s in seqs if len(s)) + 1)

    arms = {}
    for precision in args.precision:
        torch.manual_seed(p.seed)
        bare = BareLSTM(vocab, p.embed_dim, p.hidden, p.layers, p.bidirectional)
        torch.manual_seed(p.seed)
        ours = Classifier(vocab, p.embed_dim, p.hidden, p.layers, p.bidirectional, p.dropout)
        arms[f"bare_{precision}"] = arm(bare, seqs, labels, batches, p.lr, precision)
        arms[f"ours_{precision}"] = arm(ours, seqs, labels, batches, p.lr, precision)
    figures = harness.interleave(arms, args.rounds)
    record.update({
        "batches": len(batches), "batch_size": p.batch_size, "embed_dim": p.embed_dim, "hidden": p.hidden,
        "layers": p.layers, "bidirectional": p.bidirectional, "max_len": p.max_len,
        "padded_fraction": round(data.padded_fraction(lengths, batches), 4),
    })
    print(json.dumps(harness.finish(record, figures, base=f"bare_{args.precision[0]}")))


if __name__ == "__main__":
    main()
