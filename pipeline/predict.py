"""Label new texts with the trained classifier (text-predict, or imdb-predict as it was first called).

    python -m pipeline.predict "A wonderful film." "Two hours I will never get back."
    echo "Loved it" | python -m pipeline.predict
    python -m pipeline.predict --file reviews.csv --column review --format csv

Input: texts as arguments, one per line on stdin, or a file (.txt one per line; .csv, .jsonl
or .parquet with a `text` column). Output: one JSON object (or CSV row) per input, in order.
The texts go through the tokenize stage's own cleaning and tokenization (pipeline.text).
Give --model more than once to average several classifiers (the forward + backward ensemble):

    python -m pipeline.predict --model models/classifier_lm.pt --model models/classifier_lm_backward.pt "Loved it"
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from pipeline import data, paths, scoring
from pipeline import text as T
from pipeline.common import Parser, PipelineError, run_main
from pipeline.model import ensemble_proba, load_members
from pipeline.params import PARAMS_FILE, load_params


def read_texts(path: Path, column: str) -> list[str]:
    """Texts from a .txt/.csv/.jsonl/.parquet file; tabular files must have `column`."""
    if not path.is_file():
        raise PipelineError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".txt", ""):
        raw = path.read_bytes()
        if b"\0" in raw:
            raise PipelineError(f"{path} holds NUL bytes: a binary file, not text (give one review per line)")
        return T.decode(raw)[0].splitlines()
    import pandas as pd

    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise PipelineError(f"unsupported input file type {suffix!r} (use .txt, .csv, .jsonl or .parquet)")
    except (ValueError, OSError) as e:
        raise PipelineError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if column not in frame.columns:
        raise PipelineError(f"{path} has no column {column!r} (columns: {', '.join(map(str, frame.columns))}); pick one with --column")
    return ["" if v is None else str(v) for v in frame[column].tolist()]


def encode_texts(texts: list[str], itos: list[str], lowercase: bool, max_chars: int) -> list[np.ndarray]:
    stoi = {t: i for i, t in enumerate(itos)}
    tokens = T.tokenize(T.load_tokenizer(), [T.clean(t, max_chars) for t in texts], lowercase)
    return [np.array([stoi.get(t, data.UNK_ID) for t in toks], dtype=np.int64) for toks in tokens]


def predict(texts: list[str], model_paths: Path | list[Path], vocab_path: Path, lowercase: bool, max_chars: int,
            batch_size: int = 256) -> list[dict]:
    """[{label, probabilities}] per text: the predicted label's name and every class's probability
    (several models: their mean); two classes also keep `probability`, that of class 1 (IMDB:
    positive), as before the label map."""
    members, names = load_members([model_paths] if isinstance(model_paths, Path) else model_paths)
    if not vocab_path.is_file():
        raise PipelineError(f"vocab {vocab_path} not found (run the pipeline first: dvc repro)")
    itos = data.read_vocab(vocab_path)
    expected = members[0][1]["config"]["vocab_size"]
    if len(itos) != expected:
        raise PipelineError(f"{vocab_path} has {len(itos)} entries but the model expects {expected}: rerun dvc repro")
    probs = ensemble_proba(members, encode_texts(texts, itos, lowercase, max_chars), batch_size)
    rows = []
    for p, k in zip(probs, scoring.predictions(probs)):
        row = {"label": names[k]}
        if len(names) == 2:
            row["probability"] = round(float(p[1]), 6)
        rows.append({**row, "probabilities": {n: round(float(q), 6) for n, q in zip(names, p)}})
    return rows


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def screen(texts: list[str], drop_blank: bool) -> tuple[list[str], int, int]:
    """Blank inputs and inputs that are mostly not text, counted (and blank lines dropped).

    With drop_blank (one review per line: stdin, .txt), a blank line is no review and is left out;
    an empty argument or table cell is kept in its place. Returns the texts, the number of blank
    ones, and how many are suspicious: over a fifth of their characters non-printable (a binary
    file or the wrong column, most likely).
    """
    blank = sum(1 for t in texts if not t.strip())
    if drop_blank:
        texts = [t for t in texts if t.strip()]
    odd = sum(1 for t in texts if sum(not (c.isprintable() or c.isspace()) for c in t) > len(t) / 5)
    return texts, blank, odd


def main(argv: list[str] | None = None) -> None:
    called = Path(sys.argv[0]).name
    ap = Parser(prog=called if called.endswith("-predict") else "text-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("texts", nargs="*", help="review texts; none = read --file or stdin")
    ap.add_argument("--file", type=Path, help="a .txt, .csv, .jsonl or .parquet file of reviews")
    ap.add_argument("--column", default="text", help="text column of a tabular file (default: text)")
    ap.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    ap.add_argument("--model", type=Path, action="append",
                    help=f"a classifier checkpoint (default: {paths.TRAIN.model}); more than once: their mean")
    ap.add_argument("--vocab", type=Path, default=paths.VOCAB_FILE)
    ap.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="for the tokenize settings")
    ap.add_argument("--batch-size", type=positive_int, default=256)
    args = ap.parse_args(argv)

    if args.texts and args.file:
        raise PipelineError("give texts as arguments or --file, not both")
    texts = args.texts or (read_texts(args.file, args.column) if args.file else sys.stdin.read().splitlines())
    by_line = not args.texts and (args.file is None or args.file.suffix.lower() in (".txt", ""))
    texts, blank, odd = screen(texts, drop_blank=by_line)
    if blank:
        what = "skipped" if by_line else "scored as reviews with no words"
        print(f"{ap.prog}: {blank} blank input{'s' * (blank > 1)} {what}", file=sys.stderr)
    if odd:
        print(f"{ap.prog}: warning: {odd} input{'s are' if odd > 1 else ' is'} mostly non-printable characters "
              f"(a binary file or the wrong column?); scored anyway", file=sys.stderr)
    if not texts:
        raise PipelineError("no input texts (pass them as arguments, on stdin, or with --file)")
    tok = load_params("tokenize", path=args.params)["tokenize"]
    rows = predict(texts, args.model or [paths.TRAIN.model], args.vocab, tok.lowercase, tok.max_chars, args.batch_size)
    if args.format == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        names = list(rows[0]["probabilities"])
        two = "probability" in rows[0]
        w.writerow(["label", *(["probability"] if two else []), *(f"p_{n}" for n in names), "text"])
        for t, r in zip(texts, rows):
            w.writerow([r["label"], *([r["probability"]] if two else []), *r["probabilities"].values(), t])
    else:
        for t, r in zip(texts, rows):
            print(json.dumps({**r, "text": t}, ensure_ascii=False))


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
