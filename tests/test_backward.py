"""The backward language model, the classifier started from it, and the forward + backward ensemble:
each review is reversed one way in the LM stream, in training, in evaluate and in predict."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import run
from pipeline import data, scoring
from pipeline.data import BOS_ID, EOS_ID
from pipeline.model import ensemble_proba, load_members
from pipeline.train_lm import make_stream


def test_backward_stream_reverses_each_review_in_the_same_review_order():
    seqs = [np.array([10, 11, 12]), np.array([13]), np.array([14, 15])]
    fwd, bwd = make_stream(seqs, seed=3), make_stream(seqs, seed=3, reverse=True)
    assert len(fwd) == len(bwd)

    def reviews(stream):  # the ids between each <bos> and its <eos>
        out, cur = [], None
        for t in stream.tolist():
            if t == BOS_ID:
                cur = []
            elif t == EOS_ID:
                out.append(cur)
            else:
                cur.append(t)
        return out

    assert reviews(bwd) == [r[::-1] for r in reviews(fwd)]
    assert sorted(map(tuple, reviews(fwd))) == sorted(tuple(s.tolist()) for s in seqs)


def test_classifier_input_cuts_head_and_tail_then_reverses():
    seq = np.arange(10)
    assert data.classifier_input(seq, 6, 0.5).tolist() == [0, 1, 2, 7, 8, 9]
    assert data.classifier_input(seq, 6, 0.5, reverse=True).tolist() == [9, 8, 7, 2, 1, 0]
    assert data.classifier_input(seq[:4], 6, 0.5, reverse=True).tolist() == [3, 2, 1, 0]


@pytest.fixture(scope="module")
def both(lm_repo):
    """The forward and backward LM-initialised classifiers and their evaluations, on the shared LM repo."""
    run(["dvc", "repro", "evaluate_from_lm", "evaluate_from_lm_backward", "evaluate_ensemble"], lm_repo)
    return lm_repo


def test_the_backward_models_record_their_direction(both):
    load = lambda p: torch.load(both / p, weights_only=True)  # noqa: E731
    assert load("models/lm_backward.pt")["reverse"] is True
    assert load("models/classifier_lm_backward.pt")["reverse"] is True
    assert "reverse" not in load("models/lm.pt") and "reverse" not in load("models/classifier_lm.pt")
    fwd, bwd = (json.loads((both / f"metrics/{s}.json").read_text()) for s in ("train_lm", "train_lm_backward"))
    assert fwd["train_tokens"] == bwd["train_tokens"] and fwd["valid_ppl"] != bwd["valid_ppl"]
    assert 1 < bwd["test_ppl"] < bwd["vocab_size"]  # it learned the reversed reviews better than uniform


def test_evaluate_scores_the_ensemble_as_the_mean_of_its_members(both, monkeypatch):
    monkeypatch.chdir(both)
    (fwd, bwd), names = load_members(["models/classifier_lm.pt", "models/classifier_lm_backward.pt"])
    seqs, y, _ = data.load_split(both / "data/vocab/test.parquet")
    p_fwd, p_bwd = ensemble_proba([fwd], seqs, 64), ensemble_proba([bwd], seqs, 64)
    p_ens = ensemble_proba([fwd, bwd], seqs, 64)
    np.testing.assert_allclose(p_ens, (p_fwd + p_bwd) / 2, rtol=0, atol=1e-12)
    for stage, probs in (("evaluate_from_lm", p_fwd), ("evaluate_from_lm_backward", p_bwd), ("evaluate_ensemble", p_ens)):
        m = json.loads((both / f"metrics/{stage}.json").read_text())
        assert m["accuracy"] == pytest.approx(float((scoring.predictions(probs) == y).mean()), abs=1e-6), stage
        assert m["reviews"] == len(y) == 2000
    # The backward classifier read the reviews reversed: fed left to right, it scores them otherwise.
    model, ckpt = bwd
    unreversed = ensemble_proba([(model, {**ckpt, "reverse": False})], seqs, 64)
    assert np.abs(unreversed - p_bwd).max() > 1e-3


def predict_rows(repo, models: list[str], texts: list[str]) -> list[dict]:
    args = [a for m in models for a in ("--model", m)]
    out = run(["python", "-m", "pipeline.predict", *args, *texts], repo).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_predict_gives_the_evaluate_path_probability_for_the_backward_model_and_the_ensemble(both, monkeypatch):
    monkeypatch.chdir(both)
    members, _ = load_members(["models/classifier_lm.pt", "models/classifier_lm_backward.pt"])
    seqs, _, ids = data.load_split(both / "data/vocab/test.parquet")
    raw = pq.read_table(both / "data/raw/reviews.parquet", columns=["id", "text"]).to_pylist()
    text_of = {r["id"]: r["text"] for r in raw}
    picks = [0, 1, 2, 500, 1999]
    texts = [text_of[ids[i]] for i in picks]
    for models, chosen in ((["models/classifier_lm_backward.pt"], [members[1]]),
                           (["models/classifier_lm.pt", "models/classifier_lm_backward.pt"], members)):
        expected = ensemble_proba(chosen, [seqs[i] for i in picks], 64)
        got = predict_rows(both, models, texts)
        np.testing.assert_allclose([r["probabilities"]["pos"] for r in got], expected[:, 1], rtol=0, atol=1e-6)


def test_an_ensemble_of_models_with_other_classes_is_one_line(both, tmp_path):
    ckpt = torch.load(both / "models/classifier_lm_backward.pt", weights_only=True)
    torch.save({**ckpt, "labels": ["bad", "good"]}, tmp_path / "other.pt")
    p = run(["python", "-m", "pipeline.predict", "--model", "models/classifier_lm.pt", "--model", str(tmp_path / "other.pt"),
             "great"], both, check=False)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'other.pt'} was trained on the classes ['bad', 'good'], models/classifier_lm.pt on ['neg', 'pos']: "
        "an ensemble needs the same classes"]


def test_backward_without_from_lm_is_one_line(both):
    for module in ("train", "evaluate"):
        p = run(["python", "-m", f"pipeline.{module}", "--backward"], both, check=False)
        assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "--from-lm" in p.stderr, module
