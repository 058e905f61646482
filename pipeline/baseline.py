"""Stage baseline: TF-IDF uni+bigrams + logistic regression on the same tokens and splits.

What many would use instead of an LSTM; every LSTM figure should stand next to it.
C is picked on valid, then the model is scored on test with the classifier's metric names.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow.parquet as pq

from pipeline import paths, scoring
from pipeline.common import PipelineError, run_main, write_json
from pipeline.labels import numeric, read_labels
from pipeline.params import load_params

TOKENS_DIR = paths.TOKENS
METRICS = paths.metrics("baseline")


def load_tokens(split: str) -> tuple[list[list[str]], np.ndarray]:
    path = TOKENS_DIR / f"{split}.parquet"
    if not path.is_file():
        raise PipelineError(f"{path} not found (run the tokenize stage first)")
    table = pq.read_table(path, columns=["tokens", "label"])
    return table["tokens"].to_pylist(), table["label"].to_numpy().astype(np.int64)


def fit_and_score(train, valid, test, ngram_max: int, min_df: int, c_grid: list[float], max_iter: int,
                  names: list[str] = ("neg", "pos")) -> dict:
    """Tune C on valid, refit nothing (valid stays held out), score test. Returns metrics + chosen C.
    Two classes: liblinear's binary logistic regression; more: multinomial (lbfgs)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    # The tokens are already spaCy's: pass them through untouched.
    vec = TfidfVectorizer(analyzer=lambda toks: _ngrams(toks, ngram_max), min_df=min_df, sublinear_tf=True, dtype=np.float32)
    x_train = vec.fit_transform(train[0])
    x_valid, x_test = vec.transform(valid[0]), vec.transform(test[0])
    best = None
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=max_iter, solver="liblinear" if len(names) == 2 else "lbfgs")
        clf.fit(x_train, train[1])
        acc = float((clf.predict(x_valid) == valid[1]).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    valid_acc, c, clf = best
    probs = np.zeros((len(test[1]), len(names)))
    probs[:, clf.classes_] = clf.predict_proba(x_test)  # a class absent from train gets probability 0
    metrics = scoring.classification_metrics(test[1], probs, list(names), numeric(names))
    return {**metrics, "reviews": len(test[1]), "C": c, "valid_acc": round(valid_acc, 6), "features": len(vec.vocabulary_)}


def _ngrams(tokens: list[str], n: int) -> list[str]:
    out = list(tokens)
    for k in range(2, n + 1):
        out += [" ".join(tokens[i : i + k]) for i in range(len(tokens) - k + 1)]
    return out


def main() -> None:
    params = load_params("baseline")["baseline"]
    start = time.perf_counter()
    train, valid, test = load_tokens("train"), load_tokens("valid"), load_tokens("test")
    names = read_labels(paths.TOKENS_LABELS)
    metrics = fit_and_score(train, valid, test, params.ngram_max, params.min_df, params.c_grid, params.max_iter, names)
    write_json(METRICS, metrics)
    print(f"baseline: test accuracy {metrics['accuracy']:.4f} (C={metrics['C']}, {metrics['features']:,} features, "
          f"{time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    run_main(main)
