"""params.yaml validation: every bad value is one line naming the key, before any work."""
from __future__ import annotations

import copy

import pytest
import yaml
from conftest import ROOT, make_repo, run

from pipeline.common import PipelineError
from pipeline.params import load_params, parse_params

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("section,key,value", [
    ("train", "lr", float("inf")), ("train", "lr", float("nan")), ("train", "dropout", float("nan")),
    ("train", "warmup", float("nan")), ("train", "clip", float("nan")), ("train", "weight_decay", float("inf")),
    ("tokenize", "valid_fraction", float("nan")), ("download", "backoff", float("nan")),
    ("download", "timeout", float("inf")), ("generate", "temperature", float("nan")), ("generate", "top_p", float("nan")),
    ("train_lm", "lr", float("-inf")),
])
def test_nan_and_infinity_are_refused_by_name(section, key, value):
    raw = copy.deepcopy(RAW)
    raw[section][key] = value
    with pytest.raises(PipelineError, match=rf"^{section}\.{key} must be a finite number, got -?(nan|inf)$"):
        parse_params(raw)


def test_a_non_finite_number_in_a_list_is_refused():
    raw = copy.deepcopy(RAW)
    raw["baseline"]["c_grid"] = [1.0, float("nan")]
    with pytest.raises(PipelineError, match=r"^baseline\.c_grid\[1\] must be a finite number"):
        parse_params(raw)


def test_a_key_given_twice_is_an_error(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("train:\n", "train:\n  lr: 0.5\n", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(PipelineError, match=r"params.yaml: key 'lr' appears twice \(line \d+\)$"):
        load_params(path=tmp_path / "params.yaml")


def test_train_with_an_infinite_lr_stops_before_work_and_keeps_the_model(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "models").mkdir()
    (repo / "models/classifier.pt").write_bytes(b"the last good model")
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("  lr: 0.002\n", "  lr: .inf\n", 1))
    p = run(["python", "-m", "pipeline.train"], repo, check=False)
    assert p.returncode == 1 and p.stderr == "error: train.lr must be a finite number, got inf\n"
    assert (repo / "models/classifier.pt").read_bytes() == b"the last good model"


def test_a_stage_validates_only_the_sections_it_reads(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  lr: 0.002\n", "  lr: -1\n", 1)
    (tmp_path / "params.yaml").write_text(text)
    assert load_params("download", path=tmp_path / "params.yaml")["download"].source
    assert set(load_params("download", "vocab", path=tmp_path / "params.yaml")) == {"download", "vocab"}
    with pytest.raises(PipelineError, match=r"^train\.lr must be > 0, got -1\.0$"):
        load_params("train", path=tmp_path / "params.yaml")
    with pytest.raises(PipelineError, match=r"^train\.lr must be > 0"):
        load_params(path=tmp_path / "params.yaml")  # no sections named: the whole file
