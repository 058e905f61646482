"""LM training throughput: the project's LanguageModel (tied, adaptive softmax) against a bare
nn.LSTM + full softmax loop on the same batches.

    python -m benchmarks.bench_lm                         # data/vocab, params.yaml's train_lm section
    python -m benchmarks.bench_lm --embed-dim 256 --hidden 512 --batches 20 --threads 2

Both loops do forward + backward + AdamW step on the same (batch_size, bptt) windows of the
train + unlabelled stream, carrying the hidden state; tokens/s counts every target token.
After two warm-up windows per arm (one window shape: one set of oneDNN primitives), the arms
alternate A B B A over --rounds; --precision bf16 adds both loops under CPU bf16 autocast
(forward and loss). Prints one JSON line: each arm's median and spread, ratios to the bare fp32
loop, the machine, thread settings and load average.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks import harness
from pipeline import data, training
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


def arm(model, x, y, windows, lr, precision):
    """A warm closure: target tokens per wall-clock second of forward + loss + backward + step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    cpu = torch.device("cpu")
    state = None

    def step(start, length):
        nonlocal state
        with training.autocast(cpu, precision):
            features, state = model(x[:, start : start + length], state)
            loss, n = model.loss(features, y[:, start : start + length])
        opt.zero_grad(set_to_none=True)
        (loss.float() / max(n, 1)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        state = tuple(t.detach() for t in state) if isinstance(state, tuple) else detach(state)  # bare: (h, c)
        return n

    for start, length in windows[:2]:  # warm-up: oneDNN primitives, allocator
        step(start, length)

    def timed() -> float:
        t0 = time.perf_counter()
        tokens = sum(step(start, length) for start, length in windows[2:])
        return tokens / (time.perf_counter() - t0)
    return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-dir", type=Path, default=Path("data/vocab"))
    ap.add_argument("--batches", type=int, default=20, help="windows timed per model")
    ap.add_argument("--rounds", type=int, default=4, help="timed passes per arm, interleaved")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
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

    record = {"benchmark": "lm_train_throughput", **harness.machine()}
    arms = {}
    for precision in args.precision:
        torch.manual_seed(p.seed)
        bare = BareLM(vocab, p.embed_dim, p.hidden, p.layers)
        ours = build_lm(p, vocab)
        arms[f"bare_{precision}"] = arm(bare, x, y, windows, p.lr, precision)
        arms[f"ours_{precision}"] = arm(ours, x, y, windows, p.lr, precision)
    figures = harness.interleave(arms, args.rounds)
    record.update({
        "vocab": vocab, "batches": len(windows) - 2, "batch_size": p.batch_size, "bptt": p.bptt,
        "embed_dim": p.embed_dim, "hidden": p.hidden, "layers": p.layers, "cutoffs": [c for c in p.cutoffs if c < vocab],
        "params_bare": sum(q.numel() for q in bare.parameters()), "params_ours": sum(q.numel() for q in ours.parameters()),
    })
    print(json.dumps(harness.finish(record, figures, base=f"bare_{args.precision[0]}")))


if __name__ == "__main__":
    main()
