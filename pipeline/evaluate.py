"""Stage evaluate: score the classifier on the test split; metrics, plots and its worst mistakes.

With --from-lm it is stage evaluate_from_lm: the same for models/classifier_lm.pt, into its own
files (metrics/evaluate_from_lm.json, plots/evaluate_from_lm/, reports/mistakes_from_lm.jsonl).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import data, paths, scoring
from pipeline.common import Parser, PipelineError, atomic_dir, atomic_file, run_main, torch_threads, write_json
from pipeline.model import load_classifier, predict_proba
from pipeline.params import load_params

TOKENS = paths.TOKENS / "test.parquet"
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


def main(argv: list[str] | None = None) -> None:
    ap = Parser(prog="python -m pipeline.evaluate", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--from-lm", action="store_true", help="stage evaluate_from_lm: the LM-initialised classifier")
    args = ap.parse_args(argv)
    out = paths.EVALUATE_FROM_LM if args.from_lm else paths.EVALUATE
    params = load_params("evaluate")["evaluate"]
    torch_threads(0)
    model, ckpt = load_classifier(out.model)
    seqs, y, ids = data.load_split(paths.VOCAB / "test.parquet")
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
    with atomic_dir(out.plots) as tmp:
        write_plots(tmp, y.astype(int), p, n_tokens)
    with atomic_file(out.mistakes) as tmp:
        tmp.write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in mistakes), encoding="utf-8")
    write_json(out.metrics, metrics)
    print(f"{out.stage}: test accuracy {metrics['accuracy']:.4f}, ROC-AUC {metrics['roc_auc']:.4f} on {len(y):,} reviews")


if __name__ == "__main__":
    run_main(main)
