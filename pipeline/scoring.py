"""Classification metrics and curves in plain NumPy, shared by every model's evaluation (binary and K classes)."""
from __future__ import annotations

import numpy as np


def _ranked(y: np.ndarray, p: np.ndarray):
    order = np.argsort(-p, kind="stable")
    y, p = y[order], p[order]
    # Keep the last index of each distinct score, so tied scores form one curve point.
    last = np.r_[np.nonzero(np.diff(p))[0], len(p) - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return tp, fp, p[last]


def roc_curve(y: np.ndarray, p: np.ndarray):
    tp, fp, thr = _ranked(y, p)
    pos, neg = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos], np.r_[np.inf, thr]


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(y: np.ndarray, p: np.ndarray):
    tp, fp, thr = _ranked(y, p)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(int(y.sum()), 1)
    return precision, recall, thr


def calibration_error(conf: np.ndarray, correct: np.ndarray, lo: float, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins on [lo, 1], weighted by bin size."""
    edges = np.linspace(lo, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Of a binary classifier's positive-class probabilities: confidence is in [0.5, 1]."""
    return calibration_error(np.where(p >= 0.5, p, 1 - p), (p >= 0.5) == (y == 1), 0.5, bins)


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict:
    """accuracy, precision, recall, F1, ROC-AUC, ECE and log loss of probabilities `p` for labels `y`."""
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, dtype=np.float64)
    pred = p >= 0.5
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    eps = 1e-7
    q = np.clip(p, eps, 1 - eps)
    return {
        "loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
        "accuracy": float((pred == (y == 1)).mean()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "roc_auc": roc_auc(y, p),
        "ece": expected_calibration_error(y, p),
    }


def per_class(y: np.ndarray, pred: np.ndarray, names: list[str]) -> tuple[float, dict]:
    """Macro-F1 and each class's precision, recall, F1 and support (test rows of that class)."""
    out, f1s = {}, []
    for k, name in enumerate(names):
        tp = int(((pred == k) & (y == k)).sum())
        fp = int(((pred == k) & (y != k)).sum())
        fn = int(((pred != k) & (y == k)).sum())
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        f1s.append(f1)
        out[name] = {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6), "support": tp + fn}
    return float(np.mean(f1s)), out


def multiclass_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    """accuracy, log loss, ROC-AUC (one class against the rest, averaged over the classes present
    in y with both outcomes) and ECE of the top label, for (n, K) probabilities."""
    pred = probs.argmax(1)
    eps = 1e-7
    aucs = [roc_auc((y == k).astype(np.int64), probs[:, k]) for k in range(probs.shape[1]) if 0 < (y == k).sum() < len(y)]
    return {
        "loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0)))),
        "accuracy": float((pred == y).mean()),
        "roc_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "ece": calibration_error(probs.max(1), pred == y, 0.0),
    }


def classification_metrics(y, probs: np.ndarray, names: list[str], numeric: bool = False) -> dict:
    """Every model's test metrics from (n, K) probabilities: two classes keep the binary metrics of
    class 1 (precision, recall, F1); every K adds macro-F1 and per-class figures; integer labels
    (ratings) add the mean absolute error of the predicted label."""
    y = np.asarray(y).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = predictions(probs)
    metrics = binary_metrics(y, probs[:, 1]) if probs.shape[1] == 2 else multiclass_metrics(y, probs)
    metrics = {k: round(v, 6) for k, v in metrics.items()}
    macro_f1, classes = per_class(y, pred, names)
    metrics["macro_f1"] = round(macro_f1, 6)
    if numeric:
        values = np.array([int(n) for n in names])
        metrics["mae"] = round(float(np.abs(values[pred] - values[y]).mean()), 6)
    metrics["per_class"] = classes
    return metrics


def predictions(probs: np.ndarray) -> np.ndarray:
    """The predicted class of each row: class 1 at p >= 0.5 for two classes (as the binary metrics), else argmax."""
    return (probs[:, 1] >= 0.5).astype(np.int64) if probs.shape[1] == 2 else probs.argmax(1)


def thin(n: int, k: int = 200) -> np.ndarray:
    """At most k evenly spread indices (first and last kept): curves small enough for git."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int)) if n else np.array([], dtype=int)
