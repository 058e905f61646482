"""The language model: stream and BPTT windows, tied adaptive softmax, exact resume, and the train_lm stage."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from pipeline.model import LanguageModel
from pipeline.params import load_params
from pipeline.train_lm import batchify, bptt_schedule, fit_lm, make_stream, nll
from pipeline.data import BOS_ID, EOS_ID
from conftest import ROOT, run


def test_stream_wraps_each_review_and_keeps_the_budget():
    seqs = [np.array([10, 11]), np.array([12]), np.array([13, 14, 15])]
    stream = make_stream(seqs, seed=0)
    assert len(stream) == 2 + 1 + 3 + 2 * 3
    assert stream[0] == BOS_ID and stream[-1] == EOS_ID
    assert sorted(stream.tolist()) == sorted([BOS_ID] * 3 + [EOS_ID] * 3 + [10, 11, 12, 13, 14, 15])
    assert np.array_equal(make_stream(seqs, seed=0), stream)  # seeded order
    assert len(make_stream(seqs, seed=0, max_tokens=5)) == 6  # 5 inputs + the last target
    x, y = batchify(np.arange(23), 4)
    assert x.shape == (4, 5) and torch.equal(y, x + 1)  # targets are the next tokens, strand by strand


def test_bptt_windows_cover_the_strand_and_vary_around_bptt():
    windows = bptt_schedule(10_000, 40, np.random.default_rng(0))
    starts = [s for s, _ in windows]
    assert starts[0] == 0 and all(s + n == t for (s, n), t in zip(windows, starts[1:]))
    assert sum(n for _, n in windows) == 10_000
    lengths = np.array([n for _, n in windows[:-1]])
    assert lengths.min() >= 5 and 30 < np.median(lengths) < 50
    assert (lengths < 30).mean() > 0.02  # some half-length windows
    assert len(set(lengths.tolist())) > 10


def tiny_lm(**kw) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(60, 8, kw.pop("hidden", 12), 2, [20, 40], **kw)


def test_input_and_output_embeddings_are_tied():
    lm = tiny_lm()
    emb = lm.embedding_weight()
    assert emb.shape == (60, 8)
    assert torch.equal(emb[:20], lm.softmax.head.weight[:20])
    assert torch.equal(emb[20:40], lm.softmax.tail[0][1].weight) and torch.equal(emb[40:], lm.softmax.tail[1][1].weight)
    assert lm.proj is not None  # hidden 12 != embed 8
    assert sum(p.numel() for p in lm.parameters()) < 60 * 8 * 2 + 12 * 8 * 4 * 2 + 20 * 12 * 12 + 1000  # no second 60x8 matrix
    features, _ = lm.eval()(torch.randint(0, 60, (3, 7)))
    probs = lm.log_probs(features.reshape(-1, 8)).exp().sum(-1)
    torch.testing.assert_close(probs, torch.ones(21))


def test_loss_skips_bos_targets():
    lm = tiny_lm().eval()
    features, _ = lm(torch.randint(4, 60, (2, 5)))
    targets = torch.randint(4, 60, (2, 5))
    targets[0, 2] = BOS_ID
    _, count = lm.loss(features, targets)
    assert count == 9


def toy_stream(n: int, seed: int) -> np.ndarray:
    """Reviews made of counting runs (5, 6, 7, ...): learnable in a few steps."""
    rng = np.random.default_rng(seed)
    seqs = [np.arange(s, s + rng.integers(3, 12)) % 50 + 4 for s in rng.integers(0, 50, n)]
    return make_stream(seqs, seed)


class Interrupt(Exception):
    pass


def toy_params():
    return dataclasses.replace(
        load_params("train_lm", path=ROOT / "params.yaml")["train_lm"],
        embed_dim=8, hidden=8, layers=2, cutoffs=[20], batch_size=4, eval_batch_size=4, bptt=10, epochs=2,
        eval_every=7, threads=1, weight_drop=0.2, lr=0.01, token_budget=0, warmup=0.1,
    )


def stop_at_check(n: int):
    """A curve logger that interrupts the run at its n-th perplexity check."""
    seen = []

    def log(row):
        seen.append(row)
        if len(seen) == n:
            raise Interrupt

    return log


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    params = toy_params()
    torch.set_num_threads(1)
    train, valid = toy_stream(120, 0), toy_stream(20, 1)
    full = fit_lm(params, 54, train, valid, torch.device("cpu"), tmp_path / "a.pt")

    with pytest.raises(Interrupt):
        fit_lm(params, 54, train, valid, torch.device("cpu"), tmp_path / "b.pt", log=stop_at_check(3))
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["state"]["step"] > 0 and saved["state"]["hidden"] is not None  # stopped inside an epoch
    resumed = fit_lm(params, 54, train, valid, torch.device("cpu"), tmp_path / "b.pt")
    assert resumed["resumed_at"] == saved["state"]["global_step"] > 0
    strip = lambda h: [{k: v for k, v in r.items() if k != "minutes"} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])
    for k, v in full["model"].state_dict().items():
        assert torch.equal(v, resumed["model"].state_dict()[k]), k
    assert full["history"][-1]["valid_ppl"] < full["history"][0]["valid_ppl"]  # it learned something
    assert full["history"][-1]["valid_ppl"] < 54


def test_a_resume_file_of_another_stream_with_the_same_length_is_ignored(tmp_path):
    params = toy_params()
    torch.set_num_threads(1)
    train, valid = toy_stream(60, 0), toy_stream(10, 1)
    with pytest.raises(Interrupt):
        fit_lm(params, 54, train, valid, torch.device("cpu"), tmp_path / "r.pt", log=stop_at_check(2))
    assert torch.load(tmp_path / "r.pt", weights_only=True)["state"]["global_step"] > 0
    other = train[::-1].copy()  # the same length and tokens, another order
    assert fit_lm(params, 54, other, valid, torch.device("cpu"), tmp_path / "r.pt")["resumed_at"] == 0


def test_stage_writes_finite_perplexities_and_a_loadable_model(lm_repo):
    m = json.loads((lm_repo / "metrics/train_lm.json").read_text())
    assert math.isfinite(m["valid_ppl"]) and math.isfinite(m["test_ppl"])
    assert 1 < m["test_ppl"] < m["vocab_size"]  # better than uniform
    assert m["train_tokens"] == 30000
    assert (lm_repo / "dvclive/train_lm/plots/metrics/valid/ppl.tsv").is_file()
    assert not (lm_repo / "models/train_lm.resume.pt").exists()
    ckpt = torch.load(lm_repo / "models/lm.pt", weights_only=True)
    assert len(ckpt["itos"]) == m["vocab_size"] and ckpt["itos"][:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert "Running stage" not in run(["dvc", "repro", "train_lm"], lm_repo).stdout


def test_missing_unlabelled_split_is_a_one_line_error(lm_repo):
    unsup = lm_repo / "data/vocab/unsup.parquet"
    unsup.rename(unsup.with_suffix(".bak"))
    try:
        p = run(["python", "-m", "pipeline.train_lm"], lm_repo, check=False)
    finally:
        unsup.with_suffix(".bak").rename(unsup)
    assert p.returncode == 1
    assert p.stderr.strip() == (
        "error: data/vocab/unsup.parquet not found: the language model needs the unlabelled reviews "
        "(set tokenize.unsup: true and vocab.use_unsup: true, then dvc repro vocab)"
    )


def test_eval_perplexity_of_an_untrained_model_is_near_the_vocab_size():
    lm = tiny_lm(hidden=8)
    total, count = nll(lm, toy_stream(30, 2), 4, 10, torch.device("cpu"))
    assert 20 < math.exp(total / count) < 3 * 60  # untrained: the order of the vocabulary size


# --- LM -> classifier --------------------------------------------------------------------------


def lm_and_classifier(layers: int, bidirectional: bool):
    from pipeline.model import Classifier

    lm = tiny_lm(hidden=8)
    torch.manual_seed(1)
    return lm, Classifier(60, 8, 8, layers, bidirectional, 0.0)


@pytest.mark.parametrize("layers,bidirectional,mapped", [(2, False, 2), (2, True, 1), (1, True, 1)])
def test_lm_init_copies_embedding_and_forward_lstm_layers(layers, bidirectional, mapped):
    from pipeline.model import init_classifier_from_lm

    lm, clf = lm_and_classifier(layers, bidirectional)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    names = init_classifier_from_lm(clf, lm.state_dict(), lm.config)
    assert len(names) == 1 + 4 * mapped
    emb = clf.embedding.weight
    assert torch.equal(emb[1:], lm.embedding_weight()[1:]) and not emb[0].any()
    for i in range(mapped):
        for n, p in lm.lstm[i].named_parameters():
            assert torch.equal(getattr(clf.fwd[i], n), p), (i, n)
    for k, v in clf.state_dict().items():  # everything else keeps its random start
        if k not in names:
            assert torch.equal(v, before[k]), k


def test_lm_init_refuses_other_dimensions():
    from pipeline.common import PipelineError
    from pipeline.model import Classifier, init_classifier_from_lm

    lm = tiny_lm(hidden=8)
    with pytest.raises(PipelineError, match=r"train.hidden \(16\) must equal train_lm.hidden \(8\)"):
        init_classifier_from_lm(Classifier(60, 8, 16, 1, True, 0.0), lm.state_dict(), lm.config)


@pytest.mark.parametrize("unfreeze_epoch", [0, 2])
def test_fit_from_lm_starts_from_its_weights_and_unfreezes_them_on_schedule(unfreeze_epoch):
    from pipeline.train import build_model, fit
    from test_train import toy_data

    lm = tiny_lm(hidden=8)
    init = {"state_dict": lm.state_dict(), "config": lm.config, "lr_mult": 0.5, "unfreeze_epoch": unfreeze_epoch, "digest": "x"}
    params = dataclasses.replace(load_params("train", path=ROOT / "params.yaml")["train"], embed_dim=8, hidden=8, layers=1,
                                 batch_size=16, epochs=2, patience=5, threads=1, lr=0.03)
    torch.set_num_threads(1)
    start = build_model(params, 60, None, init)
    assert torch.equal(start.fwd[0].weight_hh_l0, lm.lstm[0].weight_hh_l0)  # the build step copies the LM
    out = fit(params, 60, toy_data(200, 0), toy_data(50, 1), torch.device("cpu"), lm=init)["model"]
    frozen = torch.equal(out.fwd[0].weight_ih_l0, lm.lstm[0].weight_ih_l0)
    assert frozen == (unfreeze_epoch >= params.epochs)
    assert not torch.equal(out.out.weight, start.out.weight)


def test_only_the_lm_stages_depend_on_the_lm(lm_repo):
    import yaml

    stages = yaml.safe_load((lm_repo / "dvc.yaml").read_text())["stages"]
    users = {name for name, s in stages.items() if "models/lm.pt" in s.get("deps", [])}
    assert users == {"generate", "train_from_lm"}
    run(["dvc", "repro", "evaluate_from_lm"], lm_repo)
    for name in ("train_from_lm", "evaluate_from_lm"):
        assert (lm_repo / f"metrics/{name}.json").is_file()
    assert json.loads((lm_repo / "metrics/evaluate_from_lm.json").read_text())["reviews"] == 2000
    assert not (lm_repo / "models/classifier.pt").exists()  # the scratch classifier was not needed
