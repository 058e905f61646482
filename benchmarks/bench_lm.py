"""LM training throughput: the project's LanguageModel (tied, adaptive softmax) against a bare
nn.LSTM + full softmax loop on the same batches.

    python -m benchmarks.bench_lm                         # data/vocab, params.yaml's train_lm section
    python -m benchmarks.bench_lm --embed-dim 256 --hidden 512 --batches 20 --threads 2

Both loops do forward + backward + AdamW step on the same (batch_size, bptt) windows of the
train + unlabelled stream, carrying the hidden state; tokens/s counts every target token.
The two alternate over --rounds so drifting machine load hits both alike; the best round
counts. Prints one JSON object on one line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import data
from pipeline.params import load_params
from pipeline.train_lm import batchify, build_lm, detach, make_stream


class BareLM(nn.Module):
    """The textbook word_language_model: embedding, one nn.LSTM call, a full-vocabulary Linear + cross-entropy."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, ids, state=None):
        h, state = self.lstm(self.embedding(ids), state)
        return h, state

    def loss(self, features, targets):
        logits = self.decoder(features.reshape(-1, features.size(-1)))
        return nn.functional.cross_entropy(logits, targets.reshape(-1), reduction="sum"), targets.numel()


def timed(model, x, y, windows, lr) -> tuple[float, float]:
    """Target tokens per second of forward + backward + step over `windows`, after 2 warm-up windows:
    per wall-clock second, and per second of this process's CPU time (all threads), which a
    machine shared with other jobs distorts less."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()

    def step(start, length, state):
        features, state = model(x[:, start : start + length], state)
        loss, n = model.loss(features, y[:, start : start + length])
        opt.zero_grad(set_to_none=True)
        (loss / max(n, 1)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        state = tuple(t.detach() for t in state) if isinstance(state, tuple) else detach(state)  # bare: (h, c)
        return state, n

    state = None
    for start, length in windows[:2]:  # warm-up: oneDNN primitives, allocator
        state, _ = step(start, length, state)
    tokens, t0, c0 = 0, time.perf_counter(), time.process_time()
    for start, length in windows[2:]:
        state, n = step(start, length, state)
        tokens += n
    return tokens / (time.perf_counter() - t0), tokens / (time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-dir", type=Path, default=Path("data/vocab"))
    ap.add_argument("--batches", type=int, default=20, help="windows timed per model")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = train_lm.threads or all")
    for key in ("embed_dim", "hidden", "layers", "batch_size", "bptt"):
        ap.add_argument("--" + key.replace("_", "-"), type=int, help=f"override train_lm.{key}")
    args = ap.parse_args()

    p = load_params("train_lm")["train_lm"]
    p = dataclasses.replace(p, **{k: getattr(args, k) for k in ("embed_dim", "hidden", "layers", "batch_size", "bptt")
                                  if getattr(args, k) is not None})
    torch.set_num_threads(args.threads or p.threads or torch.get_num_threads())
    vocab = len(data.read_vocab(args.vocab_dir / "vocab.tsv"))
    seqs = data.load_split(args.vocab_dir / "train.parquet")[0] + data.load_split(args.vocab_dir / "unsup.parquet")[0]
    need = p.batch_size * p.bptt * (args.batches + 2) + 1
    x, y = batchify(make_stream(seqs, p.seed, need), p.batch_size)
    windows = [(i, p.bptt) for i in range(0, x.size(1) - p.bptt + 1, p.bptt)][: args.batches + 2]

    ours = build_lm(p, vocab)
    torch.manual_seed(p.seed)
    bare = BareLM(vocab, p.embed_dim, p.hidden, p.layers)
    figures = {"ours": [], "bare": []}
    for _ in range(args.rounds):
        figures["bare"].append(timed(bare, x, y, windows, p.lr))
        figures["ours"].append(timed(ours, x, y, windows, p.lr))
    best = {k: max(r[0] for r in v) for k, v in figures.items()}
    cpu = {k: max(r[1] for r in v) for k, v in figures.items()}
    print(json.dumps({
        "benchmark": "lm_train_throughput", "threads": torch.get_num_threads(), "vocab": vocab,
        "batches": len(windows) - 2, "batch_size": p.batch_size, "bptt": p.bptt, "embed_dim": p.embed_dim,
        "hidden": p.hidden, "layers": p.layers, "cutoffs": [c for c in p.cutoffs if c < vocab],
        "bare_tokens_per_s": round(best["bare"]), "ours_tokens_per_s": round(best["ours"]),
        "ratio": round(best["ours"] / best["bare"], 3),
        "bare_tokens_per_cpu_s": round(cpu["bare"]), "ours_tokens_per_cpu_s": round(cpu["ours"]),
        "cpu_ratio": round(cpu["ours"] / cpu["bare"], 3),
        "params_bare": sum(q.numel() for q in bare.parameters()), "params_ours": sum(q.numel() for q in ours.parameters()),
    }))


if __name__ == "__main__":
    main()
