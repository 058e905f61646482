"""Table sources (CSV, TSV, JSONL, Parquet) and K-class labels: readers, the label map, and a
three-class run through `dvc repro` on a table made here."""
from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_repo, run
from pipeline import labels, scoring, tables
from pipeline.common import PipelineError

WORDS = {
    "billing": "invoice charge refund payment card bill price paid",
    "bug": "crash error broken freeze fails exception bug stuck",
    "feature": "please add would like option support wish request",
}
FILLER = "the a my our it is this that and with when after today again".split()


def tickets(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) rows: each text mixes its class's words with filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        words = [rng.choice(WORDS[label].split()) if rng.random() < 0.4 else rng.choice(FILLER) for _ in range(rng.randint(8, 25))]
        rows.append((" ".join(words), label))
    return rows


def csv_bytes(rows, extra: bytes = b"") -> bytes:
    body = "".join(f'"{t}",{y}\n' for t, y in rows).encode()
    return b"text,queue\n" + body + extra


# ---------------------------------------------------------------- readers


def test_csv_with_quoted_newlines_bad_bytes_a_bom_and_skipped_rows(tmp_path):
    data = (b"\xef\xbb\xbfid,text,queue\n1,\"two lines,\nwith a comma\",bug\n2,caf\xe9 bytes,billing\n"
            b"3,,bug\n4,no label,\n5,\"say \"\"hi\"\"\",feature\n")
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    cols = tables.read_columns(path, "csv", ["text", "queue"])
    rows, texts, ys, counts = tables.clean_rows(cols["text"], cols["queue"], path.name)
    assert texts == ["two lines,\nwith a comma", "caf\ufffd bytes", 'say "hi"']
    assert ys == ["bug", "billing", "feature"] and rows == [0, 1, 4]
    assert counts == {"rows": 5, "empty_text": 1, "missing_label": 1, "bad_utf8": 1}


def test_jsonl_and_parquet_read_the_same_rows_and_labels_keep_their_type(tmp_path):
    rows = [("good", 1), ("bad", 0), ("fine", 1)]
    jl = tmp_path / "t.jsonl"
    jl.write_text("".join(json.dumps({"body": t, "stars": y}) + "\n" for t, y in rows) + "\n")
    pqf = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": [t for t, _ in rows], "stars": [y for _, y in rows]}), pqf)
    for path, fmt in ((jl, "jsonl"), (pqf, "parquet")):
        cols = tables.read_columns(path, fmt, ["body", "stars"])
        _, texts, ys, _ = tables.clean_rows(cols["body"], cols["stars"], path.name)
        assert texts == ["good", "bad", "fine"] and ys == ["1", "0", "1"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_missing_column_names_the_columns_that_are_there(tmp_path, fmt):
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        path.write_text("body,queue\nhello,bug\n")
    elif fmt == "jsonl":
        path.write_text('{"body": "hello", "queue": "bug"}\n')
    else:
        pq.write_table(pa.table({"body": ["hello"], "queue": ["bug"]}), path)
    with pytest.raises(PipelineError, match=r"has no column 'text' \(its columns: body, queue\)"):
        tables.read_columns(path, fmt, ["text", "queue"])


@pytest.mark.parametrize("content", [b"", b"text,label\n", b"\n\n"])
def test_an_empty_table_is_one_error(tmp_path, content):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(PipelineError, match="holds no rows"):
        tables.read_columns(path, "csv", ["text", "label"])


def test_a_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(PipelineError, match="t.jsonl line 2 is not JSON"):
        tables.read_columns(path, "jsonl", ["text", "label"])


def test_tsv_is_read_unquoted_and_jsonl_without_its_bom(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_bytes(b'sentence\tlabel\n"quoted start, no end\t1\nnext row\t0\nit\'s "fine"\t1\n')
    cols = tables.read_columns(tsv, "tsv", ["sentence", "label"])
    assert cols["sentence"] == [b'"quoted start, no end', b"next row", b'it\'s "fine"'] and len(cols["label"]) == 3
    jl = tmp_path / "t.jsonl"
    jl.write_bytes(b'\xef\xbb\xbf{"text": "a", "label": 1}\n{"text": "b", "label": 2}\n')
    assert tables.read_columns(jl, "jsonl", ["text", "label"])["label"] == [1, 2]


def test_a_csv_row_at_the_text_limit_reads_across_arrow_blocks(tmp_path):
    long = b"word\n" * (tables.MAX_REVIEW_BYTES // 5)  # Arrow reads CSV in 1 MiB blocks; this row straddles two
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\n" + b"short,b\n" * 50_000 + b'"' + long + b'",a\nlast,b\n')
    cols = tables.read_columns(path, "csv", ["text", "label"])
    assert len(cols["text"]) == 50_002 and cols["text"][-2] == long and cols["label"][-3:] == [b"b", b"a", b"b"]


def test_formats_by_name():
    assert [tables.table_format(n) for n in ("a.csv", "a.CSV.gz", "x/a.tsv", "a.jsonl", "a.ndjson.gz", "a.parquet",
                                             "a.tar.gz", "https://h/a.csv?x=1")] == \
        ["csv", "csv", "tsv", "jsonl", "jsonl", "parquet", None, "csv"]


# ---------------------------------------------------------------- the label map


def test_label_order_is_numeric_for_integers_and_by_string_otherwise():
    assert labels.label_order({"10", "2", "1"}) == ["1", "2", "10"]
    assert labels.label_order({"b", "a", "10"}) == ["10", "a", "b"]
    assert [tables.label_key(v) for v in (7, 7.0, "07", " x ", "", None, float("nan"), True, b"caf\xc3\xa9")] == \
        ["7", "7", "7", "x", None, None, None, "true", "café"]
    # The same label from a CSV (strings), a JSONL (numbers, booleans) and a DataFrame export (NA markers).
    assert [tables.label_key(v) for v in ("1.0", b"7.00", "+3", "TRUE", "False", "NA", "null", b"NaN", "N/A", "1.5")] == \
        ["1", "7", "3", "true", "false", None, None, None, None, "1.5"]


def test_one_class_only_or_too_many_is_one_error():
    with pytest.raises(PipelineError, match=r"one label only \('a'\): a classifier needs at least two"):
        labels.label_map(["a", "a"], ["a"], "t.csv")
    with pytest.raises(PipelineError, match="at most 127"):
        labels.label_map([str(i) for i in range(200)], [], "t.csv")


def test_no_test_rows_or_a_class_only_in_test_is_one_error():
    with pytest.raises(PipelineError, match="t.csv: no test rows"):
        labels.label_map(["a", "b"], [], "t.csv")
    with pytest.raises(PipelineError, match=r"t.csv: label 'c' is in the test rows only \(1 such\)"):
        labels.label_map(["a", "b"], ["a", "c"], "t.csv")
    assert labels.label_map(["b", "a", "c"], ["a"], "t.csv") == ["a", "b", "c"]


def test_three_class_metrics_against_hand_counts():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.1, .6, .3], [.2, .2, .6], [.5, .1, .4]])
    m = scoring.classification_metrics(y, probs, ["1", "2", "5"], numeric=True)
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    # class "1": tp 1, fp 1 (the last row), fn 1; class "2": tp 2, fp 1, fn 0; class "5": tp 1, fp 0, fn 1
    assert m["per_class"]["1"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["2"]["precision"] == pytest.approx(2 / 3, abs=1e-6) and m["per_class"]["2"]["recall"] == 1.0
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]), abs=1e-6)
    assert m["mae"] == pytest.approx((1 + 4) / 6, abs=1e-6)  # predicted 2 for a 1, 1 for a 5
    assert 0.5 < m["roc_auc"] <= 1.0 and m["loss"] > 0


def test_two_classes_keep_the_binary_metrics():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.2, 0.9, 0.4, 0.6])
    m = scoring.classification_metrics(y, np.stack([1 - p, p], 1), ["neg", "pos"])
    assert {k: m[k] for k in scoring.binary_metrics(y, p)} == {k: round(v, 6) for k, v in scoring.binary_metrics(y, p).items()}
    assert set(m["per_class"]) == {"neg", "pos"} and "mae" not in m


# ---------------------------------------------------------------- through DVC


def pinned(path) -> str:
    return f"{path.name}@sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def test_a_three_class_csv_runs_end_to_end_through_dvc_repro(tmp_path):
    repo = make_repo(tmp_path / "repo")
    src = repo / "tickets.csv"
    src.write_bytes(csv_bytes(tickets(450), b'"caf\xe9 two\nlines invoice",billing\n"",bug\n"no label here",\n'))
    run(["dvc", "exp", "run", "evaluate", "baseline", "-S", f"download.source={pinned(src)}",
         "-S", "download.label_column=queue", "-S", "train.epochs=3"], repo)
    names = json.loads((repo / "data/vocab/labels.json").read_text())
    assert names == ["billing", "bug", "feature"]
    dl = json.loads((repo / "metrics/download.json").read_text())
    assert dl["skipped"] == {"empty_text": 1, "missing_label": 1} and dl["bad_utf8"] == 1
    assert dl["reviews"]["train"] + dl["reviews"]["test"] == 451 and dl["reviews"]["test"] == 90  # 20% of each class
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert list(ev["per_class"]) == names and {"macro_f1", "roc_auc", "ece", "accuracy"} <= set(ev)
    assert sum(c["support"] for c in ev["per_class"].values()) == ev["reviews"] == 90
    base = json.loads((repo / "metrics/baseline.json").read_text())
    assert base["accuracy"] > 0.8 and list(base["per_class"]) == names  # the words give the class away
    confusion = json.loads((repo / "plots/evaluate/confusion.json").read_text())
    assert {r["actual"] for r in confusion} == set(names) and len(confusion) == 90
    out = run(["python", "-m", "pipeline.predict", "refund my invoice please"], repo).stdout
    row = json.loads(out)
    assert row["label"] in names and set(row["probabilities"]) == set(names) and "probability" not in row
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("content, column, message", [
    (b"body,queue\nhello,bug\n", "text", "tickets.csv has no column 'text' (its columns: body, queue)"),
    (b"", "text", "tickets.csv holds no rows"),
    (b"text,queue\nhello,bug\nworld,bug\n", "text", "tickets.csv has one label only ('bug'): a classifier needs at least two"),
])
def test_a_bad_table_is_one_line_and_writes_nothing(tmp_path, content, column, message):
    repo = make_repo(tmp_path / "repo")
    src = repo / "tickets.csv"
    src.write_bytes(content)
    p = run(["dvc", "exp", "run", "download", "-S", f"download.source={pinned(src)}", "-S", "download.label_column=queue",
             "-S", f"download.text_column={column}"], repo, check=False)
    assert p.returncode != 0
    errors = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("error:")]
    assert errors == [f"error: {message}"], p.stdout + p.stderr
    assert not (repo / "data/raw/reviews.parquet").exists() and not (repo / "data/raw/labels.json").exists()
    assert not list((repo / "data").glob("raw/.*tmp*"))
