"""Stage evaluate: score the classifier on the test split; metrics, plots and its worst mistakes.

With --from-lm it is stage evaluate_from_lm: the same for models/classifier_lm.pt, into its own
files (metrics/evaluate_from_lm.json, plots/evaluate_from_lm/, reports/mistakes_from_lm.jsonl);
--from-lm --backward: evaluate_from_lm_backward, the classifier started from the backward LM;
--ensemble: evaluate_ensemble, those two classifiers' class probabilities averaged.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import data, paths, scoring
from pipeline.common import Parser, PipelineError, atomic_dir, atomic_file, run_main, torch_threads, write_json
from pipeline.labels import numeric
from pipeline.model import ensemble_proba, load_members
from pipeline.params import load_params

TOKENS = paths.TOKENS / "test.parquet"
LENGTH_EDGES = [0, 100, 200, 400, 800]  # review length buckets, in tokens


def length_accuracy(correct: np.ndarray, n_tokens: np.ndarray) -> list[dict]:
    rows = []
    edges = LENGTH_EDGES + [np.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (n_tokens >= lo) & (n_tokens < hi)
        if m.any():
            name = f"{lo}-{hi - 1}" if np.isfinite(hi) else f"{lo}+"
            rows.append({"length": name, "accuracy": round(float(correct[m].mean()), 6), "reviews": int(m.sum())})
    return rows


def write_plots(out: Path, y: np.ndarray, probs: np.ndarray, n_tokens: np.ndarray, names: list[str]) -> None:
    """JSON data files for the DVC plot templates declared in dvc.yaml. Two classes: ROC and
    precision-recall of class 1; K classes: one curve over every (review, class) pair (micro-average)."""
    dump = lambda name, obj: (out / name).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")  # noqa: E731
    pred = scoring.predictions(probs)
    dump("confusion.json", [{"actual": names[a], "predicted": names[b]} for a, b in zip(y, pred)])
    if probs.shape[1] == 2:
        truth, score = y, probs[:, 1]
    else:
        truth, score = (y[:, None] == np.arange(probs.shape[1])).astype(np.int64).ravel(), probs.ravel()
    fpr, tpr, thr = scoring.roc_curve(truth, score)
    keep = scoring.thin(len(fpr))
    dump("roc.json", [{"fpr": round(float(fpr[i]), 5), "tpr": round(float(tpr[i]), 5)} for i in keep])
    prec, rec, _ = scoring.pr_curve(truth, score)
    keep = scoring.thin(len(prec))
    dump("precision_recall.json", [{"recall": round(float(rec[i]), 5), "precision": round(float(prec[i]), 5)} for i in keep])
    dump("length_accuracy.json", length_accuracy(pred == y, n_tokens))


def confident_mistakes(ids: list[str], texts: list[str], y: np.ndarray, probs: np.ndarray, names: list[str],
                       n: int) -> list[dict]:
    """The n wrong predictions made with the highest probability, most confident first."""
    pred = scoring.predictions(probs)
    conf = probs[np.arange(len(pred)), pred]
    wrong = np.nonzero(pred != y)[0]
    worst = wrong[np.argsort(-conf[wrong], kind="stable")][:n]
    return [{"id": ids[i], "label": names[y[i]], "predicted": names[pred[i]], "probability": round(float(conf[i]), 4),
             "text": texts[i]} for i in worst]


def main(argv: list[str] | None = None) -> None:
    ap = Parser(prog="python -m pipeline.evaluate", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--from-lm", action="store_true", help="stage evaluate_from_lm: the LM-initialised classifier")
    ap.add_argument("--backward", action="store_true", help="with --from-lm: the classifier from the backward LM")
    ap.add_argument("--ensemble", action="store_true", help="stage evaluate_ensemble: forward and backward averaged")
    args = ap.parse_args(argv)
    if args.backward and not args.from_lm:
        raise PipelineError("--backward scores the classifier from the backward language model: give --from-lm too")
    if args.ensemble:
        out = paths.EVALUATE_ENSEMBLE
    elif args.from_lm:
        out = paths.EVALUATE_FROM_LM_BACKWARD if args.backward else paths.EVALUATE_FROM_LM
    else:
        out = paths.EVALUATE
    params = load_params("evaluate")["evaluate"]
    torch_threads(0)
    members, names = load_members(out.models)
    seqs, y, ids = data.load_split(paths.VOCAB / "test.parquet")
    y = y.astype(np.int64)
    n_tokens = np.array([len(s) for s in seqs])
    probs = ensemble_proba(members, seqs, params.batch_size)
    metrics = scoring.classification_metrics(y, probs, names, numeric(names))
    metrics["reviews"] = len(y)
    import pyarrow.parquet as pq

    # Every input is read before any output is replaced: a missing file leaves the last run's outputs whole.
    if not TOKENS.is_file():
        raise PipelineError(f"{TOKENS} not found (run the tokenize stage first: dvc repro tokenize)")
    tokens = pq.read_table(TOKENS, columns=["tokens"])["tokens"].to_pylist()
    mistakes = confident_mistakes(ids, [" ".join(t) for t in tokens], y, probs, names, params.n_mistakes)
    with atomic_dir(out.plots) as tmp:
        write_plots(tmp, y, probs, n_tokens, names)
    with atomic_file(out.mistakes) as tmp:
        tmp.write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in mistakes), encoding="utf-8")
    write_json(out.metrics, metrics)
    print(f"{out.stage}: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
          f"ROC-AUC {metrics['roc_auc']:.4f} on {len(y):,} reviews, {len(names)} classes")


if __name__ == "__main__":
    run_main(main)
