"""fp32 against bf16 autocast on the CPU, at a fixed training budget: speed and what it costs in quality.

    python -m benchmarks.bench_precision --vocab-dir data/vocab --epochs 2 --lm-tokens 2000000

Trains the classifier (params.yaml's train section, --epochs epochs) and the language model
(train_lm section with the full-lm recipe's shape, one pass over --lm-tokens tokens) once per
precision, from the same seed, and scores each on the same data in fp32: classifier test
accuracy and ROC-AUC, LM valid perplexity. Prints one JSON line per model and precision.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from benchmarks import harness
from pipeline import data, scoring
from pipeline.model import predict_proba
from pipeline.params import load_params
from pipeline.train import fit
from pipeline.train_lm import EVAL_SEED, fit_lm, make_stream, nll, perplexity

# conf/recipe/full-lm.yaml's language model
FULL_LM = dict(embed_dim=400, hidden=512, cutoffs=[2000, 10000], dropout_emb=0.0, dropout_in=0.0,
               dropout_hidden=0.0, dropout_out=0.0, bptt=70, batch_size=64, eval_batch_size=64)


def classifier(vocab_dir: Path, epochs: int, precision: str) -> dict:
    p = load_params("train")["train"]
    p = dataclasses.replace(p, epochs=epochs, patience=epochs, precision=precision, resume=False)

    def split(name):
        seqs, labels, _ = data.load_split(vocab_dir / f"{name}.parquet")
        return [data.truncate(s, p.max_len, p.head_fraction) for s in seqs], labels

    vocab = len(data.read_vocab(vocab_dir / "vocab.tsv"))
    result = fit(p, vocab, split("train"), split("valid"), torch.device("cpu"))
    model = result["model"]
    model.load_state_dict(result["best"])
    model.eval()
    test_seqs, test_y = split("test")
    metrics = scoring.binary_metrics(test_y, predict_proba(model, test_seqs, 256)[:, 1])
    return {"model": "classifier", "precision": precision, "epochs": epochs,
            "tokens_per_s": round(result["tokens"] / result["seconds"]), "seconds": round(result["seconds"], 1),
            "valid_acc": round(result["history"][result["best_epoch"] - 1]["valid_acc"], 4),
            "test_acc": round(metrics["accuracy"], 4), "test_roc_auc": round(metrics["roc_auc"], 4)}


def language_model(vocab_dir: Path, tokens: int, precision: str) -> dict:
    p = load_params("train_lm")["train_lm"]
    p = dataclasses.replace(p, **FULL_LM, epochs=1, token_budget=tokens, eval_every=0, precision=precision, resume=False)
    vocab = len(data.read_vocab(vocab_dir / "vocab.tsv"))
    train = data.load_split(vocab_dir / "train.parquet")[0] + data.load_split(vocab_dir / "unsup.parquet")[0]
    valid = make_stream(data.load_split(vocab_dir / "valid.parquet")[0], EVAL_SEED, 200_000)
    t0 = time.perf_counter()
    result = fit_lm(p, vocab, make_stream(train, p.seed, tokens), valid, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    model = result["model"]
    model.load_state_dict(result["best"])
    ppl = perplexity(*nll(model, valid, p.eval_batch_size, p.bptt, torch.device("cpu"), "fp32"))
    return {"model": "language_model", "precision": precision, "train_tokens": tokens,
            "tokens_per_s": round(result["tokens"] / seconds), "seconds": round(seconds, 1), "valid_ppl_fp32": round(ppl, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-dir", type=Path, default=Path("data/vocab"))
    ap.add_argument("--epochs", type=int, default=2, help="classifier epochs per precision; 0 = skip")
    ap.add_argument("--lm-tokens", type=int, default=2_000_000, help="LM training tokens per precision; 0 = skip")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = one per core")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count())
    machine = harness.machine()
    for precision in ("fp32", "bf16"):
        if args.epochs:
            print(json.dumps({**classifier(args.vocab_dir, args.epochs, precision), **machine,
                              "loadavg_after": [round(x, 2) for x in os.getloadavg()]}), flush=True)
        if args.lm_tokens:
            print(json.dumps({**language_model(args.vocab_dir, args.lm_tokens, precision), **machine,
                              "loadavg_after": [round(x, 2) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    main()
