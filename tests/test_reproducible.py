"""Same code, params and data -> same bytes: every training stage, rerun, in a copy at another path."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import yaml
from conftest import make_repo, run

TRAINING = ["train", "train_lm", "train_from_lm"]


def tracked_outputs(repo) -> dict[str, str]:
    """md5 of every file the training stages write (models, metrics, curves)."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    out = {}
    for name in TRAINING:
        for kind in ("outs", "metrics", "plots"):
            for entry in stages[name].get(kind, []):
                path = repo / (entry if isinstance(entry, str) else next(iter(entry)))
                for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
                    if f.is_file():
                        out[str(f.relative_to(repo))] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_a_rerun_of_each_training_stage_in_a_fresh_copy_gives_the_same_bytes(tmp_path):
    first = make_repo(tmp_path / "a")
    run(["dvc", "repro", *TRAINING], first)
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-qm", "run"], first)
    before = tracked_outputs(first)
    assert any(p.endswith(".pt") for p in before) and len(before) > 10
    # On CPU the thread count can change the last bits of a sum: it is recorded with the outputs.
    ckpt = torch.load(first / "models/classifier.pt", weights_only=True)
    assert ckpt["threads"] == json.loads((first / "metrics/train.json").read_text())["threads"] == 1  # TINY

    second = tmp_path / "elsewhere" / "b"
    shutil.copytree(first, second, symlinks=True)
    run(["dvc", "repro", "--force", "--single-item", *TRAINING], second)
    assert tracked_outputs(second) == before
    # Nothing tracked changed (no wall clock, path or host in any output), and DVC agrees.
    assert run(["git", "status", "--porcelain"], second).stdout == ""
    assert "Data and pipelines are up to date" in run(["dvc", "status", *TRAINING], second).stdout
