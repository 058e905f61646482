"""predict on a trained sample model: arguments, stdin, every file format, and its errors."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pandas as pd
import pytest

from conftest import make_repo, run

TEXTS = ["A wonderful film, moving and funny.", "Dull. Two hours I will never get back.", ""]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("predict") / "repo")
    run(["dvc", "repro", "evaluate"], repo)
    return repo


def predict(repo, *args, **kw):
    return run(["python", "-m", "pipeline.predict", *args], repo, **kw)


def rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def check(result: list[dict], texts: list[str]) -> None:
    assert [r["text"] for r in result] == texts
    for r in result:
        assert r["label"] in ("pos", "neg")
        assert 0.0 <= r["probability"] <= 1.0
        assert (r["label"] == "pos") == (r["probability"] >= 0.5)


def test_texts_as_arguments(trained):
    check(rows(predict(trained, *TEXTS).stdout), TEXTS)


def test_stdin_and_csv_output(trained):
    out = predict(trained, "--format", "csv", input="\n".join(TEXTS[:2]) + "\n").stdout
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["text"] for r in table] == TEXTS[:2]
    assert all(r["label"] in ("pos", "neg") for r in table)


def test_same_text_same_probability_wherever_it_comes_from(trained, tmp_path):
    by_arg = rows(predict(trained, *TEXTS).stdout)
    files = {
        "in.txt": lambda p: p.write_text("\n".join(TEXTS) + "\n"),
        "in.csv": lambda p: pd.DataFrame({"id": [1, 2, 3], "text": TEXTS}).to_csv(p, index=False),
        "in.jsonl": lambda p: pd.DataFrame({"text": TEXTS}).to_json(p, orient="records", lines=True),
        "in.parquet": lambda p: pd.DataFrame({"text": TEXTS}).to_parquet(p),
    }
    for name, write in files.items():
        write(tmp_path / name)
        got = rows(predict(trained, "--file", str(tmp_path / name)).stdout)
        assert got == by_arg, name


def test_column_override(trained, tmp_path):
    pd.DataFrame({"review": TEXTS[:2]}).to_csv(tmp_path / "r.csv", index=False)
    check(rows(predict(trained, "--file", str(tmp_path / "r.csv"), "--column", "review").stdout), TEXTS[:2])


def test_console_script(trained):
    exe = shutil.which("imdb-predict", path=run(["python", "-c", "import os;print(os.environ['PATH'])"], trained).stdout.strip())
    if exe is None:
        pytest.skip("imdb-predict is not installed (pip install -e .)")
    check(rows(run([exe, TEXTS[0]], trained).stdout), TEXTS[:1])


def test_file_without_text_column_is_a_clear_error(trained, tmp_path):
    pd.DataFrame({"review": TEXTS}).to_csv(tmp_path / "r.csv", index=False)
    p = predict(trained, "--file", str(tmp_path / "r.csv"), check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: {tmp_path / 'r.csv'} has no column 'text' (columns: review); pick one with --column"


def test_missing_model_is_a_clear_error(trained):
    p = predict(trained, "--model", "models/nope.pt", "great", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == "error: model models/nope.pt not found (run the train stage first: dvc repro train)"
    assert p.stdout == ""
