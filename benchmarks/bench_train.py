"""Training throughput of the project's classifier against a bare nn.LSTM loop on the same batches.

    python -m benchmarks.bench_train                      # data/vocab/train.parquet, params.yaml train section
    python -m benchmarks.bench_train --batches 60 --threads 2

Both loops do forward + backward + optimizer step on the same length-bucketed, padded batches;
tokens/s counts real (unpadded) tokens. Prints one JSON object per line.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import data
from pipeline.model import Classifier
from pipeline.params import load_params
from pipeline.train import run_epoch


class BareLSTM(nn.Module):
    """The textbook loop: embedding, one nn.LSTM call over the padded batch, last time step."""

    def __init__(self, vocab, embed, hidden, layers, bidirectional):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed, padding_idx=0)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), 1)

    def forward(self, ids, lengths):
        h, _ = self.lstm(self.embedding(ids))
        return self.out(h[:, -1]).squeeze(-1)


def timed(model, seqs, labels, batches, lr) -> float:
    """Real tokens per second of forward + backward + step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    run_epoch(model, seqs, labels, batches[:3], torch.device("cpu"), opt, sched)  # warm-up: oneDNN primitives
    t0 = time.perf_counter()
    _, _, tokens = run_epoch(model, seqs, labels, batches, torch.device("cpu"), opt, sched)
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/vocab/train.parquet"))
    ap.add_argument("--batches", type=int, default=80, help="batches timed per model")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = train.threads")
    ap.add_argument("--rounds", type=int, default=2, help="alternate the two loops this many times")
    args = ap.parse_args()

    p = load_params("train")["train"]
    torch.set_num_threads(args.threads or p.threads or torch.get_num_threads())
    seqs, labels, _ = data.load_split(args.data)
    seqs = [data.truncate(s, p.max_len, p.head_fraction) for s in seqs]
    lengths = np.array([len(s) for s in seqs])
    batches = data.bucket_batches(lengths, p.batch_size, np.random.default_rng(p.seed))[: args.batches]
    vocab = int(max(int(s.max()) for s in seqs if len(s)) + 1)

    torch.manual_seed(p.seed)
    ours = Classifier(vocab, p.embed_dim, p.hidden, p.layers, p.bidirectional, p.dropout)
    bare = BareLSTM(vocab, p.embed_dim, p.hidden, p.layers, p.bidirectional)
    figures = {"ours": [], "bare": []}
    for _ in range(args.rounds):  # interleaved, so drifting machine load hits both alike
        figures["bare"].append(timed(bare, seqs, labels, batches, p.lr))
        figures["ours"].append(timed(ours, seqs, labels, batches, p.lr))
    best = {k: max(v) for k, v in figures.items()}
    print(json.dumps({
        "benchmark": "train_throughput", "threads": torch.get_num_threads(), "batches": len(batches),
        "batch_size": p.batch_size, "embed_dim": p.embed_dim, "hidden": p.hidden, "layers": p.layers,
        "bidirectional": p.bidirectional, "max_len": p.max_len,
        "padded_fraction": round(data.padded_fraction(lengths, batches), 4),
        "bare_tokens_per_s": round(best["bare"]), "ours_tokens_per_s": round(best["ours"]),
        "ratio": round(best["ours"] / best["bare"], 3),
    }))


if __name__ == "__main__":
    main()
