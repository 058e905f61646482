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
        assert r["probabilities"]["pos"] == r["probability"]  # two classes: probability is class 1's, as before
        assert abs(r["probabilities"]["neg"] + r["probability"] - 1) < 2e-6


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
        # One review per line: a blank line is no review, skipped (and said so on stderr).
        assert got == ([r for r in by_arg if r["text"]] if name == "in.txt" else by_arg), name


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


def one_error_line(p, pattern: str) -> str:
    import re

    assert p.returncode == 1 and p.stdout == "", (p.stdout, p.stderr)
    (line,) = p.stderr.splitlines()
    assert line.startswith("error: ") and re.search(pattern, line), line
    return line


@pytest.mark.parametrize("size", ["0", "-1", "x"])
def test_a_bad_batch_size_is_one_line_before_any_work(trained, size):
    one_error_line(predict(trained, "--batch-size", size, "great", check=False), r"argument --batch-size: ")


def test_blank_lines_are_skipped_and_said_so_binary_files_refused(trained, tmp_path):
    p = predict(trained, input="Great film\n\n   \nAwful.\n")
    assert [r["text"] for r in rows(p.stdout)] == ["Great film", "Awful."]
    assert p.stderr == "text-predict: 2 blank inputs skipped\n"
    binary = tmp_path / "reviews.txt"
    binary.write_bytes(bytes(range(256)) * 40)
    one_error_line(predict(trained, "--file", str(binary), check=False), r"holds NUL bytes: a binary file, not text")
    p = predict(trained, input="\x01\x02\x03\x04\x05\x06\x07 ok\nfine film\n")
    assert len(rows(p.stdout)) == 2 and "1 input is mostly non-printable characters" in p.stderr


def test_checkpoints_that_are_not_a_classifier_are_one_line(trained, tmp_path):
    import os
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"config": {}, "state_dict": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"definitely not a checkpoint" * 10)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    lm = tmp_path / "lm.pt"
    torch.save({"config": {"vocab_size": 10}, "state_dict": {}, "itos": ["a"]}, lm)
    cases = {"evil.pt": r"is refused: .*would run as code \(.*GLOBAL posix.system",
             "junk.pt": r"junk.pt is not a PyTorch checkpoint$",
             "other.pt": r"not a checkpoint of this project",
             "lm.pt": r"lm.pt holds a language model, not a classifier$"}
    for name, pattern in cases.items():
        p = predict(trained, "--model", str(tmp_path / name), "great", check=False)
        assert "pwned" not in p.stdout
        one_error_line(p, pattern)


def test_sigterm_is_one_line_keeps_the_outputs_and_a_rerun_gives_the_same_bytes(trained):
    import hashlib
    import signal
    import subprocess

    from conftest import env

    model = trained / "models/classifier.pt"
    before = hashlib.md5(model.read_bytes()).hexdigest()
    proc = subprocess.Popen(["python", "-m", "pipeline.train"], cwd=trained, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("epoch 1:"):  # epoch 2 of 2 is running: signal it mid-way
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.splitlines() == ["error: terminated (SIGTERM); outputs left as they were"]
    assert hashlib.md5(model.read_bytes()).hexdigest() == before
    assert not [p for p in trained.rglob(".*.tmp")]
    run(["python", "-m", "pipeline.train"], trained)  # resumes if epoch 1's state was saved, else starts over
    assert hashlib.md5(model.read_bytes()).hexdigest() == before


def test_evaluate_reads_every_input_before_it_replaces_an_output(trained):
    plots = {p: p.read_bytes() for p in (trained / "plots/evaluate").iterdir()}
    tokens = trained / "data/tokens/test.parquet"
    saved = tokens.read_bytes()
    tokens.unlink()
    try:
        p = run(["python", "-m", "pipeline.evaluate"], trained, check=False)
        one_error_line(p, r"data/tokens/test.parquet not found \(run the tokenize stage first")
        assert {p: p.read_bytes() for p in (trained / "plots/evaluate").iterdir()} == plots
    finally:
        tokens.write_bytes(saved)
