"""Toy data and params shared by the training tests (not a test module: test files do not import each other)."""
from __future__ import annotations

import dataclasses

import numpy as np
from conftest import ROOT

from pipeline.params import load_params


def toy_data(n: int, seed: int):
    """Reviews of random tokens; positive ones contain token 5. Learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    seqs = []
    for y in labels:
        s = rng.integers(6, 40, rng.integers(3, 30))
        if y:
            s[rng.integers(len(s))] = 5
        seqs.append(s)
    return seqs, labels


class Interrupt(Exception):
    pass


def toy_params(**changes):
    """params.yaml's train section for the toy data; dropout 0 so 1 and 2 processes can agree closely."""
    base = dict(embed_dim=8, hidden=8, batch_size=16, epochs=4, patience=5, threads=1, lr=0.03, dropout=0.0)
    return dataclasses.replace(load_params("train", path=ROOT / "params.yaml")["train"], **{**base, **changes})
