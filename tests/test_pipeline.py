"""End to end on the bundled sample, with real `dvc repro`, `dvc exp run` and `dvc metrics diff`."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from conftest import make_repo, run


def digest(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def declared_sections(stage: dict) -> set[str] | None:
    """The params sections a dvc.yaml stage declares (None: the whole file)."""
    out = set()
    for entry in stage.get("params", []):
        if isinstance(entry, dict):
            return None
        out.add(entry.split(".")[0])
    return out


def test_repro_then_experiment_reruns_only_train_and_evaluate(repo, tmp_path, monkeypatch):
    trace = tmp_path / "params-read"
    trace.mkdir()
    monkeypatch.setenv("PIPELINE_PARAMS_TRACE", str(trace))  # each stage notes the sections it reads
    first = run(["dvc", "repro"], repo)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    read = {f.name: set(f.read_text().split()) for f in trace.iterdir()}
    assert set(read) == {s for s in stages if f"Running stage '{s}'" in first.stdout}
    undeclared = {s: sorted(r - declared_sections(stages[s])) for s, r in read.items() if declared_sections(stages[s]) is not None}
    assert {s: u for s, u in undeclared.items() if u} == {}, "stages read params sections dvc.yaml does not declare"
    for stage in ["download", "tokenize", "vocab", "train", "evaluate"]:
        assert f"Running stage '{stage}'" in first.stdout
        assert (repo / f"metrics/{stage}.json").is_file()
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(ev) >= {"loss", "accuracy", "precision", "recall", "f1", "roc_auc", "ece"}
    for plot in ["confusion", "roc", "precision_recall", "length_accuracy"]:
        assert (repo / f"plots/evaluate/{plot}.json").is_file()
    assert (repo / "dvclive/train/plots/metrics/valid/acc.tsv").is_file()

    again = run(["dvc", "repro"], repo)
    assert "Running stage" not in again.stdout

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline run"], repo)
    exp = run(["dvc", "exp", "run", "-S", "train.lr=1e-5"], repo)
    ran = {s for s in ["download", "tokenize", "vocab", "train", "evaluate"] if f"Running stage '{s}'" in exp.stdout}
    assert ran == {"train", "evaluate"}, exp.stdout
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == 1e-5  # Hydra writes 1.0e-05

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    changed = diff["metrics/evaluate.json"]
    assert changed["accuracy"]["old"] != changed["accuracy"]["new"] or changed["loss"]["old"] != changed["loss"]["new"]
    shown = run(["dvc", "params", "diff", "--json"], repo).stdout
    assert "train.lr" in shown


def test_tokenize_and_vocab_reruns_are_byte_identical(tmp_path):
    # The heaviest settings: a pool of 2 workers, the unlabelled split, pretrained vectors.
    repo = make_repo(tmp_path / "repo", {
        "tokenize": {"workers": 2, "unsup": True, "chunk_size": 300},
        "vocab": {"use_unsup": True, "vectors": "data/vectors/tiny.txt"},
    })
    vectors = repo / "data/vectors/tiny.txt"
    vectors.write_text("the 0.1 0.2\nmovie 0.3 0.4\nfilm 0.5 0.6\n")
    run(["dvc", "repro", "vocab"], repo)
    outputs = ["data/tokens", "data/vocab", "metrics/tokenize.json", "metrics/vocab.json"]
    before = {k: v for out in outputs for k, v in digest(repo / out).items()}
    assert {"tokens/unsup.parquet", "vocab/unsup.parquet", "vocab/vectors.npy"} <= set(before)
    assert json.loads((repo / "metrics/vocab.json").read_text())["vectors"]["found"] == 3

    run(["dvc", "repro", "--force", "vocab"], repo)  # download, tokenize and vocab all run again
    after = {k: v for out in outputs for k, v in digest(repo / out).items()}
    assert before == after
    assert json.loads(run(["dvc", "status", "vocab", "--json"], repo).stdout) == {}
    assert "Running stage" not in run(["dvc", "repro", "vocab"], repo).stdout

    vectors.write_text("the 0.1 0.2\n")  # the vectors file is a dependency: a change reruns vocab only
    assert list(json.loads(run(["dvc", "status", "vocab", "--json"], repo).stdout)) == ["vocab"]


def test_a_bad_param_stops_its_own_stage_before_work_and_only_that_stage(repo):
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.002", "lr: -1"))
    p = run(["python", "-m", "pipeline.train"], repo, check=False)
    assert p.returncode == 1
    assert p.stderr == "error: train.lr must be > 0, got -1.0\n"
    assert not (repo / "models").exists()
    run(["python", "-m", "pipeline.download"], repo)  # download does not read train's section
    assert (repo / "data/raw/reviews.parquet").is_file()
