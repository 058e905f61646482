"""Binary classification metrics and curves in plain NumPy, shared by every model's evaluation."""
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


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    conf = np.where(p >= 0.5, p, 1 - p)
    correct = (p >= 0.5) == (y == 1)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


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


def thin(n: int, k: int = 200) -> np.ndarray:
    """At most k evenly spread indices (first and last kept): curves small enough for git."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int)) if n else np.array([], dtype=int)
