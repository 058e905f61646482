"""Sampling (pure functions), detokenization, and the generate stage and CLI on a tiny trained LM."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline.generate import Writer, detokenize, generate_ids, next_distribution, sample_next, top_p_mask
from pipeline.data import EOS_ID, UNK_ID
from conftest import run


def logits_for(n: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 3


def test_top_k_1_is_greedy_and_deterministic():
    for s in range(20):
        logits = logits_for(seed=s)
        picks = {sample_next(logits, 1.0, 1, 1.0, torch.Generator().manual_seed(g)) for g in range(10)}
        assert picks == {int(torch.argmax(logits))}


def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p():
    probs = torch.tensor([0.125, 0.5, 0.125, 0.25], dtype=torch.float64)
    kept = lambda p: set(torch.nonzero(top_p_mask(probs, p)).flatten().tolist())  # noqa: E731
    assert kept(0.3) == {1}
    assert kept(0.5) == {1}
    assert kept(0.75) == {1, 3}
    assert kept(0.76) == {1, 3, 0} or kept(0.76) == {1, 3, 2}  # a tie at 0.125: one of them is enough
    assert len(kept(0.76)) == 3
    assert kept(1.0) == {0, 1, 2, 3}
    for s in range(30):  # the property, on random distributions
        probs = torch.softmax(logits_for(seed=s).double(), 0)
        for p in (0.1, 0.5, 0.9, 0.99):
            mask = top_p_mask(probs, p)
            assert probs[mask].sum() >= p - 1e-12  # enough mass ...
            assert probs[mask].sum() - probs[mask].min() < p  # ... and no token more than needed
            assert probs[mask].min() >= probs[~mask].max() if (~mask).any() else True  # the most probable ones


def test_sampled_tokens_stay_inside_top_k_and_top_p():
    logits = logits_for(seed=3)
    dist = next_distribution(logits, 1.0, 5, 0.8)
    allowed = set(torch.topk(logits, 5).indices.tolist())
    assert set(torch.nonzero(dist).flatten().tolist()) <= allowed
    torch.testing.assert_close(dist.sum(), torch.tensor(1.0, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, 5, 0.8, g) for _ in range(200)} <= allowed


def test_temperature_towards_zero_equals_greedy():
    for s in range(10):
        logits = logits_for(seed=s)
        greedy = next_distribution(logits, 0.0)
        assert int(torch.argmax(greedy)) == int(torch.argmax(logits)) and greedy.max() == 1
        for t in (1e-3, 1e-8, 1e-30):
            torch.testing.assert_close(next_distribution(logits, t), greedy)
    assert not torch.equal(next_distribution(logits_for(), 1.0), next_distribution(logits_for(), 0.0))


def test_unk_is_never_drawn_unless_allowed():
    logits = logits_for()
    logits[UNK_ID] = 100.0
    assert next_distribution(logits, 1.0, 0, 1.0, banned=[UNK_ID])[UNK_ID] == 0
    assert sample_next(logits, 1.0, 0, 1.0, torch.Generator().manual_seed(0)) == UNK_ID


@pytest.fixture(scope="module")
def writer(lm_repo):
    return Writer(lm_repo / "models/lm.pt")


def test_same_seed_same_text_and_greedy_limits_agree(writer):
    a = writer.write("this movie", 25, 0.8, 40, 0.95, seed=1)
    assert writer.write("this movie", 25, 0.8, 40, 0.95, seed=1) == a
    assert writer.write("this movie", 25, 0.8, 40, 0.95, seed=2)["text"] != a["text"]
    assert writer.write("this film", 25, 0.8, 40, 0.95, seed=1)["continuation"] != a["continuation"]
    greedy = writer.write("this movie", 25, 0.0, 0, 1.0, seed=1)
    assert writer.write("this movie", 25, 1e-9, 0, 1.0, seed=5) == greedy
    assert writer.write("this movie", 25, 1.0, 1, 1.0, seed=7) == greedy


def test_prompt_of_unknown_words_still_generates(writer):
    r = writer.write("zxqvw blorfkt", 20, 1.0, 0, 1.0, seed=0)
    assert r["text"].lower().startswith("zxqvw blorfkt")
    assert len(r["continuation"]) > 0


def test_unk_is_not_sampled_and_eos_ends_a_sample(writer):
    words = [w for s in range(5) for w in writer.write("the", 60, 1.5, 0, 1.0, seed=s)["continuation"]]
    assert "<unk>" not in words and "<eos>" not in words and "<bos>" not in words and "<pad>" not in words
    model = writer.model
    eos_first = torch.full((1, len(writer.itos)), -1e4)
    eos_first[0, EOS_ID] = 0.0
    model.log_probs = lambda features: eos_first  # an LM certain the review is over
    try:
        assert generate_ids(model, [5, 6], 30, 1.0, 0, 1.0, seed=0) == []
    finally:
        del model.log_probs


def test_detokenize_joins_spacy_tokens_readably():
    toks = ["this", "movie", "was", "n't", "good", ",", "it", "'s", '"', "bad", '"', "(", "really", ")", ".",
            "i", "'m", "gon", "na", "cry", "!", "well", "-", "known", "actors", "..."]
    assert detokenize(toks) == "This movie wasn't good, it's \"bad\" (really). I'm gonna cry! Well-known actors..."
    assert detokenize(["ca", "n't", "stop"], capitalize=False) == "can't stop"


def generate(repo, *args, **kw):
    return run(["python", "-m", "pipeline.generate", *args], repo, **kw)


def test_cli_is_deterministic_for_a_seed(lm_repo):
    args = ["--prompt", "this movie", "--max-tokens", "30", "--temperature", "0.8", "--top-k", "40", "--top-p", "0.95", "--seed", "1"]
    first = generate(lm_repo, *args).stdout
    assert first.startswith("This movie") and len(first.split()) > 2
    assert generate(lm_repo, *args).stdout == first
    rows = [json.loads(line) for line in generate(lm_repo, *args, "--num", "2", "--json").stdout.splitlines()]
    assert [r["seed"] for r in rows] == [1, 2] and rows[0]["text"] == first.strip()


def test_stage_writes_the_same_samples_every_run(lm_repo):
    run(["dvc", "repro", "generate"], lm_repo)
    samples = (lm_repo / "reports/samples.md").read_text()
    assert samples.count("\n## ") == 5 and "## this movie" in samples
    rows = [json.loads(line) for line in (lm_repo / "reports/samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows][0] == "this movie" and len(rows) == 5 and rows[0]["text"] in samples
    m = json.loads((lm_repo / "metrics/generate.json").read_text())
    assert m["samples"] == 5 and m["mean_tokens"] > 0
    generate(lm_repo)  # the stage's command again
    assert (lm_repo / "reports/samples.md").read_text() == samples


def test_missing_model_is_a_clear_error(lm_repo):
    p = generate(lm_repo, "--prompt", "great", "--model", "models/nope.pt", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == "error: language model models/nope.pt not found (run the train_lm stage first: dvc repro train_lm)"
    assert p.stdout == ""


def test_console_script(lm_repo):
    exe = shutil.which("imdb-generate", path=run(["python", "-c", "import os;print(os.environ['PATH'])"], lm_repo).stdout.strip())
    if exe is None:
        pytest.skip("imdb-generate is not installed (pip install -e .)")
    assert run([exe, "--prompt", "this movie", "--seed", "1"], lm_repo).stdout.startswith("This movie")


@pytest.mark.parametrize("option,value,message", [
    ("--temperature", "nan", "error: --temperature must be a finite number, got nan"),
    ("--top-p", "1.5", "error: --top-p must be <= 1, got 1.5"),
    ("--max-tokens", "0", "error: --max-tokens must be >= 1, got 0"),
    ("--num", "0", "error: --num must be >= 1, got 0"),
])
def test_sampling_options_are_checked_like_params_one_line(lm_repo, option, value, message):
    p = generate(lm_repo, "--prompt", "great", option, value, check=False)
    assert (p.returncode, p.stdout, p.stderr) == (1, "", message + "\n")


def test_a_classifier_given_as_the_lm_is_one_line(lm_repo, tmp_path):
    import torch

    from pipeline.model import Classifier

    clf = Classifier(50, 8, 8, 1, True, 0.0)  # a real classifier checkpoint, as train saves it
    torch.save({"config": clf.config, "state_dict": clf.state_dict()}, tmp_path / "classifier.pt")
    p = generate(lm_repo, "--prompt", "great", "--model", str(tmp_path / "classifier.pt"), check=False)
    assert (p.returncode, p.stderr) == (1, f"error: {tmp_path / 'classifier.pt'} holds a classifier, not a language model\n")
