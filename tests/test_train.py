"""Training pieces: padding-correct model, length buckets, and resume after an interruption."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import data
from pipeline import model as model_module
from pipeline.model import Classifier, reverse_padded
from pipeline.params import load_params
from pipeline.train import fit
from conftest import ROOT, SAMPLE
from toys import Interrupt, toy_data


def test_reverse_padded_reverses_within_length_and_is_its_own_inverse():
    x = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [9, 0, 0, 0, 0]])
    lengths = torch.tensor([3, 5, 1])
    r = reverse_padded(x, lengths)
    assert r.tolist() == [[3, 2, 1, 0, 0], [8, 7, 6, 5, 4], [9, 0, 0, 0, 0]]
    assert torch.equal(reverse_padded(r, lengths), x)


@pytest.mark.parametrize("bidirectional,layers,pooling", [(True, 2, "maxmean"), (False, 1, "maxmean"), (True, 1, "concat"),
                                                          (False, 2, "concat")])
def test_prediction_does_not_depend_on_padding(bidirectional, layers, pooling):
    torch.manual_seed(0)
    model = Classifier(50, 8, 6, layers, bidirectional, 0.0, pooling=pooling).eval()
    seq = torch.tensor([[5, 9, 11, 3, 7]])
    alone = model(seq, torch.tensor([5]))
    padded = torch.cat([seq, torch.zeros(1, 20, dtype=torch.long)], dim=1)
    batch = torch.cat([padded, torch.randint(1, 50, (1, 25))])  # next to a longer review
    together = model(batch, torch.tensor([5, 25]))
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-6)


def test_padding_to_a_multiple_changes_the_batch_shape_but_not_the_loss_or_gradients():
    seqs = [np.arange(1, 6), np.arange(3, 14), np.array([], dtype=np.int64)]
    ids, lengths = data.collate(seqs)
    ids16, lengths16 = data.collate(seqs, 16)
    assert ids.shape == (3, 11) and ids16.shape == (3, 16)
    assert torch.equal(lengths16, lengths) and torch.equal(ids16[:, :11], ids)
    assert (ids16[:, 11:] == data.PAD_ID).all()
    grads = []
    for x, n in ((ids, lengths), (ids16, lengths16)):
        torch.manual_seed(0)
        model = Classifier(50, 8, 6, 2, True, 0.0, pooling="concat")
        model(x, n).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", ["maxmean", "concat"])
def test_empty_review_gives_a_finite_logit(pooling):
    model = Classifier(50, 8, 6, 1, True, 0.0, pooling=pooling).eval()
    out = model(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 2]))
    assert torch.isfinite(out).all()


def test_concat_pooling_reads_each_directions_final_state():
    """The last state is the forward LSTM's after the last real token and the backward LSTM's after
    the first: what each returns as its final hidden state when run on the review alone."""
    torch.manual_seed(0)
    model = Classifier(50, 8, 6, 1, True, 0.0, pooling="concat").eval()
    ids = torch.tensor([[5, 9, 11, 0, 0], [3, 4, 5, 6, 7]])
    lengths = torch.tensor([3, 5])
    with torch.no_grad():
        last = model.last_state(model.encode(ids, lengths), lengths)
        for i, n in enumerate(lengths.tolist()):
            x = model.embedding(ids[i : i + 1, :n])
            _, (h_fwd, _) = model.fwd[0](x)
            _, (h_bwd, _) = model.bwd[0](x.flip(1))
            torch.testing.assert_close(last[i], torch.cat([h_fwd[0, 0], h_bwd[0, 0]]), rtol=1e-5, atol=1e-6)
    assert model.out.in_features == 3 * 2 * 6 and model.config["pooling"] == "concat"
    assert "pooling" not in Classifier(50, 8, 6, 1, True, 0.0).config  # the default keeps old checkpoints' bytes


CHURN = """
import resource, sys, torch
from pipeline import training

def faults(n):  # minor page faults of n allocate-touch-free rounds of a 105 MB buffer (an LSTM workspace's size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        x = torch.empty(64 * 800 * 512)
        x.fill_(1.0)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults(10)
kept = training.keep_freed_memory()
faults(10)
print(default, kept, faults(10))
"""


def malloc_env() -> dict[str, str]:
    """glibc's malloc as it comes, and 4 KB pages: the page counts below are of those."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["THP_MEM_ALLOC_ENABLE"] = "0"
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_training_keeps_freed_buffers_instead_of_faulting_them_in_every_step():
    env = malloc_env()
    out = subprocess.run([sys.executable, "-c", CHURN], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    default, kept, after = out.stdout.split()
    pages = 64 * 800 * 512 * 4 // 4096
    assert kept == "True"
    assert int(default) > 9 * pages  # each round maps the buffer fresh
    assert int(after) < pages  # once warm, not even one buffer's pages fault in again


FRAGMENT = """
import os, sys, torch
from pipeline import training

assert training.keep_freed_memory()
training.TRIM_EVERY = int(sys.argv[1])

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

start, pins = resident(), []
for i in range(10):  # each buffer a little larger than the hole the last one left, as a new padded length
    x = torch.empty(12_500_000 + i * 250_000)
    x.fill_(1.0)
    pins.append(torch.ones(1000))  # a small long-lived object after it pins the hole
    del x
    training.trim_kept_heap()
print(resident() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_kept_heap_gives_back_the_holes_a_growing_length_leaves():
    env = malloc_env()
    buffer = 12_500_000 * 4  # 50 MB

    def growth(every: int) -> int:
        out = subprocess.run([sys.executable, "-c", FRAGMENT, str(every)], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True)
        return int(out.stdout)

    assert growth(1000) > 6 * buffer  # never trimmed: every hole stays resident
    assert growth(1) < 3 * buffer  # trimmed each step: the holes' pages go back


HUGE = """
import pipeline  # first, as `python -m pipeline.<stage>` does: torch reads the setting at its first allocation
import torch

x = torch.ones(4 << 20)  # 16 MB
addr, inside = x.data_ptr(), False
for line in open("/proc/self/smaps"):
    if not line[0].isupper():  # a mapping's first line: start-end perms ...
        start, end = (int(a, 16) for a in line.split()[0].split("-"))
        inside = start <= addr < end
    elif inside and line.startswith("VmFlags:"):
        print(line.split(":", 1)[1])
"""


@pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage").exists(), reason="Linux with THP")
def test_big_tensors_ask_for_huge_pages_unless_turned_off():
    def vm_flags(setting: str | None) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        if setting is not None:
            env["THP_MEM_ALLOC_ENABLE"] = setting
        out = subprocess.run([sys.executable, "-c", HUGE], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True)
        return out.stdout.split()

    assert "hg" in vm_flags(None)  # madvise(MADV_HUGEPAGE) on the tensor's pages
    assert "hg" not in vm_flags("0")


def test_truncate_keeps_head_and_tail():
    seq = np.arange(100)
    out = data.truncate(seq, 10, 0.3)
    assert out.tolist() == [0, 1, 2, 93, 94, 95, 96, 97, 98, 99]
    assert data.truncate(seq[:5], 10, 0.3).tolist() == [0, 1, 2, 3, 4]


def sample_lengths() -> np.ndarray:
    """Word counts of the bundled sample's train reviews, cut at train.max_len."""
    max_len = load_params("train", path=ROOT / "params.yaml")["train"].max_len
    with tarfile.open(SAMPLE) as tar:
        lengths = [len(tar.extractfile(m).read().split()) for m in tar if m.isfile() and "/train/" in m.name and "unsup" not in m.name]
    return np.minimum(np.array(lengths), max_len)


def test_length_buckets_cut_padding_on_the_sample():
    lengths = sample_lengths()
    assert len(lengths) == 2000
    rng = np.random.default_rng(0)
    bucketed = data.padded_fraction(lengths, data.bucket_batches(lengths, 64, rng))
    shuffled = data.padded_fraction(lengths, np.array_split(rng.permutation(len(lengths)), len(lengths) // 64))
    assert bucketed < 0.10, bucketed
    assert shuffled > 0.30, shuffled


def test_bucket_batches_cover_every_index_once_and_depend_on_the_seed():
    lengths = np.random.default_rng(1).integers(1, 300, size=1000)
    a = data.bucket_batches(lengths, 32, np.random.default_rng(7))
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    b = data.bucket_batches(lengths, 32, np.random.default_rng(7))
    c = data.bucket_batches(lengths, 32, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    params = dataclasses.replace(
        load_params("train", path=ROOT / "params.yaml")["train"],
        embed_dim=8, hidden=8, batch_size=16, epochs=4, patience=5, threads=1, lr=0.03,
    )
    torch.set_num_threads(1)
    train, valid = toy_data(600, 0), toy_data(100, 1)
    full = fit(params, 40, train, valid, torch.device("cpu"), tmp_path / "a.pt")

    def stop_in_epoch_2(row):
        if row["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(params, 40, train, valid, torch.device("cpu"), tmp_path / "b.pt", log=stop_in_epoch_2)
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1
    steps = len(data.bucket_batches(np.array([len(s) for s in train[0]]), 16, np.random.default_rng(0)))
    assert all(s["step"] == steps for s in saved["optimizer"]["state"].values())

    resumed = fit(params, 40, train, valid, torch.device("cpu"), tmp_path / "b.pt")
    assert resumed["resumed_at"] == 1
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["history"] == full["history"]
    for k, v in full["best"].items():
        assert torch.equal(v, resumed["best"][k]), k
    assert full["history"][-1]["valid_acc"] > 0.7  # it learned the toy signal


def test_a_resume_file_of_other_data_with_the_same_shape_is_ignored(tmp_path, capsys):
    params = dataclasses.replace(load_params("train", path=ROOT / "params.yaml")["train"],
                                 embed_dim=8, hidden=8, batch_size=16, epochs=2, patience=5, threads=1, lr=0.03)
    torch.set_num_threads(1)
    train, valid = toy_data(200, 0), toy_data(40, 1)

    def stop_in_epoch_2(row):
        if row["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(params, 40, train, valid, torch.device("cpu"), tmp_path / "r.pt", log=stop_in_epoch_2)
    # Upstream changed (other tokens, a vocabulary of the same size): same counts, other ids.
    other = ([s[::-1].copy() for s in train[0]], train[1])
    assert [len(s) for s in other[0]] == [len(s) for s in train[0]]
    assert fit(params, 40, other, valid, torch.device("cpu"), tmp_path / "r.pt")["resumed_at"] == 0
    assert "ignoring" in capsys.readouterr().out
    with pytest.raises(Interrupt):
        fit(params, 40, train, valid, torch.device("cpu"), tmp_path / "r.pt", log=stop_in_epoch_2)
    assert fit(params, 40, train, valid, torch.device("cpu"), tmp_path / "r.pt")["resumed_at"] == 1  # same data: resumed


def test_curves_of_a_resumed_run_equal_an_uninterrupted_runs_and_a_failed_run_keeps_the_old(tmp_path, monkeypatch):
    from pipeline import training
    from pipeline.train import curve_metrics

    monkeypatch.chdir(tmp_path)  # the curves are staged under ./logs while a run goes on
    params = dataclasses.replace(load_params("train", path=ROOT / "params.yaml")["train"],
                                 embed_dim=8, hidden=8, batch_size=16, epochs=3, patience=5, threads=1, lr=0.03)
    torch.set_num_threads(1)
    train, valid = toy_data(300, 0), toy_data(60, 1)
    with training.curves(Path("a"), curve_metrics) as log:
        fit(params, 40, train, valid, torch.device("cpu"), tmp_path / "a.pt", log=log)

    (tmp_path / "b").mkdir()
    (tmp_path / "b/last-run.tsv").write_text("the last good run's curves\n")

    def stop_in_epoch_2(row):
        log(row)
        if row["epoch"] == 2:
            raise Interrupt  # after epoch 2 is logged, before it is saved: the resumed run redoes it

    with pytest.raises(Interrupt), training.curves(Path("b"), curve_metrics) as log:
        fit(params, 40, train, valid, torch.device("cpu"), tmp_path / "b.pt", log=stop_in_epoch_2)
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["last-run.tsv"]  # untouched by the failed run
    with training.curves(Path("b"), curve_metrics) as log:
        assert fit(params, 40, train, valid, torch.device("cpu"), tmp_path / "b.pt", log=log)["resumed_at"] == 1

    def files(d):
        return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}

    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a == b and len(a["plots/metrics/valid/acc.tsv"].splitlines()) == 1 + 3  # header + each epoch once
    assert not (tmp_path / "logs/b").exists()  # the staging folder is gone


def test_reversal_gradient_is_the_reversal_and_dropout_keeps_the_expected_scale():
    x = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 0])
    torch.autograd.gradcheck(lambda t: reverse_padded(t, lengths), (x,))  # the gather-only backward is exact
    drop = model_module.Dropout(0.25).train()
    torch.manual_seed(0)
    y = drop(torch.ones(200, 500))
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert abs(float((y == 0).float().mean()) - 0.25) < 0.01 and abs(float(y.mean()) - 1.0) < 0.01
    assert torch.equal(drop.eval()(x), x)


def test_bf16_autocast_trains_on_cpu_and_auto_is_fp32_there():
    from toys import toy_params

    train, valid = toy_data(96, 0), toy_data(32, 1)
    runs = {p: fit(toy_params(epochs=2, precision=p), 40, train, valid, torch.device("cpu")) for p in ("auto", "fp32", "bf16")}
    same = [torch.equal(a, b) for a, b in zip(runs["auto"]["best"].values(), runs["fp32"]["best"].values())]
    assert all(same)  # on CPU, auto is fp32: the same bytes
    assert any(not torch.equal(a, b) for a, b in zip(runs["bf16"]["best"].values(), runs["fp32"]["best"].values()))
    assert all(np.isfinite(row["train_loss"]) for row in runs["bf16"]["history"])
    assert all(v.dtype == torch.float32 for v in runs["bf16"]["best"].values())  # weights stay fp32 under autocast


def test_three_classes_train_a_softmax_head_that_learns():
    from toys import toy_params

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    seqs = []
    for y in labels:  # class k holds token 5 + k somewhere
        s = rng.integers(8, 40, rng.integers(3, 20))
        s[rng.integers(len(s))] = 5 + y
        seqs.append(s)
    result = fit(toy_params(epochs=6, patience=6), 40, (seqs[:240], labels[:240]), (seqs[240:], labels[240:]),
                 torch.device("cpu"), classes=3)
    assert result["model"].out.out_features == 3
    assert result["history"][result["best_epoch"] - 1]["valid_acc"] > 0.8  # chance is 1/3
