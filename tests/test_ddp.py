"""Data-parallel training: torchrun with 2 gloo processes on CPU gives the 1-process results.

Tolerance, measured with dropout 0 (dropout masks depend on each rank's batch shape, so with
dropout the runs agree in distribution only): the optimizer sees the same global-batch mean
gradient, so the runs differ only by float summation order. Measured: weights within ~1e-6,
metrics equal to 6 decimals. Asserted: losses within 1e-4, accuracies within one review.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline import data, distributed
from pipeline.model import Classifier
from pipeline.train import fit
from conftest import ROOT, env, make_repo, run, update_params
from toys import toy_data, toy_params

LOSS_TOL = 1e-4


def assert_close_history(a: list[dict], b: list[dict], n_valid: int, n_train: int) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for x, y in zip(a, b):
        for k in ("train_loss", "valid_loss"):
            assert abs(x[k] - y[k]) <= LOSS_TOL, (k, x, y)
        assert abs(x["valid_acc"] - y["valid_acc"]) <= 1 / n_valid + 1e-9, (x, y)
        assert abs(x["train_acc"] - y["train_acc"]) <= 1 / n_train + 1e-9, (x, y)


@pytest.mark.parametrize("world", [2, 3])
def test_shard_deals_each_review_once_and_weights_give_the_global_mean(monkeypatch, world):
    lengths = np.random.default_rng(0).integers(1, 300, size=1001)
    batches = data.bucket_batches(lengths, 32, np.random.default_rng(3))
    batches.append(np.array([7]))  # smaller than the world: the other ranks run a stand-in with weight 0
    monkeypatch.setattr(distributed, "world", lambda: world)
    seen, weight_sum = [], np.zeros(len(batches))
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        for i, b in enumerate(batches):
            mine, w = distributed.shard(b)
            assert len(mine) >= 1
            if w:
                seen += mine.tolist()
                weight_sum[i] += w * len(mine)
                assert len(b) // world <= len(mine) <= -(-len(b) // world)  # balanced
    assert sorted(seen) == sorted(np.concatenate(batches).tolist())
    np.testing.assert_allclose(weight_sum / world, 1.0)  # DDP's mean over ranks -> sum of losses / len(batch)


def test_fit_under_torchrun_matches_one_process_and_resumes_exactly(tmp_path):
    """torchrun, 2 gloo ranks: fit() equals the 1-process fit within the tolerance; resume is exact."""
    out = tmp_path / "out"
    out.mkdir()
    e = {**env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests/ddp_worker.py"), str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(x["rank"], x["world"]) for x in ranks] == [(0, 2), (1, 2)]
    assert all(x["train_batches"] > 0 and x["valid_batches"] > 0 for x in ranks)
    # 593 reviews in 38 global batches of 16 (the last holds 1); rank 1 has no share of the last one.
    # Epochs trained: 4 straight through + 2 before the interruption + 3 after the resume.
    assert ranks[0]["train_reviews"] + ranks[1]["train_reviews"] == 593 * 9
    assert ranks[0]["train_batches"] == 38 * 9 and ranks[1]["train_batches"] == 37 * 9

    res = torch.load(out / "result.pt", weights_only=True)
    assert res["resumed_at"] == 1
    assert res["resumed"] == res["full"]
    for k, v in res["best_full"].items():
        assert torch.equal(v, res["best_resumed"][k]), k

    torch.set_num_threads(1)
    one = fit(toy_params(), 40, toy_data(593, 0), toy_data(100, 1), torch.device("cpu"))
    assert_close_history(res["full"], one["history"], n_valid=100, n_train=593)
    for k, v in one["best"].items():
        torch.testing.assert_close(res["best_full"][k], v, rtol=1e-3, atol=1e-4)  # measured: 3e-5
    assert one["history"][-1]["valid_acc"] > 0.7  # it learned the toy signal


def test_train_stage_with_nproc_2_matches_one_process(tmp_path):
    """train.nproc=2: the stage (`python -m pipeline.train`, as `dvc exp run -S train.nproc=2` runs it)
    re-launches itself under torchrun; both ranks work, rank 0 alone writes."""
    repo = make_repo(tmp_path / "repo", {"train": {"dropout": 0.0, "lr": 0.01}})
    run(["dvc", "repro", "-q", "train"], repo)
    one = json.loads((repo / "metrics/train.json").read_text())

    update_params(repo / "params.yaml", {"train": {"nproc": 2}})
    p = run(["dvc", "repro", "train"], repo)
    log = p.stdout + p.stderr
    assert "--nproc_per_node=2" in log, log
    for r in (0, 1):
        assert f"train: rank {r}/2 (local rank {r}, gloo)" in log, log
    assert log.count("epoch 1: train loss") == 1, log  # rank 1 prints no epoch lines
    two = json.loads((repo / "metrics/train.json").read_text())

    assert two["best_epoch"] == one["best_epoch"] and two["epochs_run"] == one["epochs_run"]
    for k in ("train_loss", "valid_loss"):
        assert abs(two[k] - one[k]) <= LOSS_TOL, (k, one, two)
    assert abs(two["valid_acc"] - one["valid_acc"]) <= 1 / 200 + 1e-9, (one, two)  # 200 valid reviews in the sample

    ckpt = torch.load(repo / "models/classifier.pt", weights_only=True)
    model = Classifier(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert not (repo / "models/train.resume.pt").exists()
    assert len((repo / "dvclive/train/plots/metrics/valid/loss.tsv").read_text().splitlines()) == 1 + two["epochs_run"]
