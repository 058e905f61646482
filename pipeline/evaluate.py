"""Stage evaluate: score the classifier on the test split; metrics, plots and its worst mistakes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline import data, scoring
from pipeline.common import PipelineError, atomic_dir, atomic_file, run_main, torch_threads, write_json
from pipeline.model import load_classifier, predict_proba
from pipeline.params import load_params

VOCAB_DIR = Path("data/vocab")
TOKENS = Path("data/tokens/test.parquet")
MODEL = Path("models/classifier.pt")
METRICS = Path("metrics/evaluate.json")
PLOTS = Path("plots/evaluate")
MISTAKES = Path("reports/mistakes.jsonl")
LENGTH_EDGES = [0, 100, 200, 400, 800]  # review length buckets, in tokens


def length_accuracy(y: np.ndarray, p: np.ndarray, n_tokens: np.ndarray) -> list[dict]:
    rows = []
    edges = LENGTH_EDGES + [np.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (n_tokens >= lo) & (n_tokens < hi)
        if m.any():
            name = f"{lo}-{hi - 1}" if np.isfinite(hi) else f"{lo}+"
            rows.append({"length": name, "accuracy": round(float(((p[m] >= 0.5) == (y[m] == 1)).mean()), 6), "reviews": int(m.sum())})
    return rows


def write_plots(out: Path, y: np.ndarray, p: np.ndarray, n_tokens: np.ndarray) -> None:
    """JSON data files for the DVC plot templates declared in dvc.yaml."""
    dump = lambda name, obj: (out / name).write_text(json.dumps(obj, indent=1) + "\n")  # noqa: E731
    pred = (p >= 0.5).astype(int)
    dump("confusion.json", [{"actual": int(a), "predicted": int(b)} for a, b in zip(y, pred)])
    fpr, tpr, thr = scoring.roc_curve(y, p)
    keep = scoring.thin(len(fpr))
    dump("roc.json", [{"fpr": round(float(fpr[i]), 5), "tpr": round(float(tpr[i]), 5)} for i in keep])
    prec, rec, _ = scoring.pr_curve(y, p)
    keep = scoring.thin(len(prec))
    dump("precision_recall.json", [{"recall": round(float(rec[i]), 5), "precision": round(float(prec[i]), 5)} for i in keep])
    dump("length_accuracy.json", length_accuracy(y, p, n_tokens))


def confident_mistakes(ids: list[str], texts: list[str], y: np.ndarray, p: np.ndarray, n: int) -> list[dict]:
    wrong = np.nonzero((p >= 0.5) != (y == 1))[0]
    worst = wrong[np.argsort(-np.abs(p[wrong] - 0.5), kind="stable")][:n]
    return [{"id": ids[i], "label": int(y[i]), "p_positive": round(float(p[i]), 4), "text": texts[i]} for i in worst]


def main(model_path: Path = MODEL, metrics_path: Path = METRICS, plots_dir: Path = PLOTS, mistakes_path: Path = MISTAKES) -> None:
    params = load_params()["evaluate"]
    torch_threads(0)
    model, ckpt = load_classifier(model_path)
    seqs, y, ids = data.load_split(VOCAB_DIR / "test.parquet")
    n_tokens = np.array([len(s) for s in seqs])
    seqs = [data.truncate(s, ckpt["max_len"], ckpt["head_fraction"]) for s in seqs]
    p = predict_proba(model, seqs, params.batch_size)
    metrics = {k: round(v, 6) for k, v in scoring.binary_metrics(y, p).items()}
    metrics["reviews"] = len(y)
    import pyarrow.parquet as pq

    # Every input is read before any output is replaced: a missing file leaves the last run's outputs whole.
    if not TOKENS.is_file():
        raise PipelineError(f"{TOKENS} not found (run the tokenize stage first: dvc repro tokenize)")
    tokens = pq.read_table(TOKENS, columns=["tokens"])["tokens"].to_pylist()
    mistakes = confident_mistakes(ids, [" ".join(t) for t in tokens], y, p, params.n_mistakes)
    with atomic_dir(plots_dir) as tmp:
        write_plots(tmp, y.astype(int), p, n_tokens)
    mistakes_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(mistakes_path) as tmp:
        tmp.write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in mistakes), encoding="utf-8")
    write_json(metrics_path, metrics)
    print(f"evaluate: test accuracy {metrics['accuracy']:.4f}, ROC-AUC {metrics['roc_auc']:.4f} on {len(y):,} reviews")


if __name__ == "__main__":
    run_main(main)
