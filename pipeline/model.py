"""The sentiment classifier: Embedding -> (bi)LSTM -> masked max+mean pooling -> Linear."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import data
from pipeline.common import PipelineError


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length; padding stays at the end.

    A bidirectional nn.LSTM on a right-padded batch starts its backward pass on the padding,
    so every backward state of a short review has read pad tokens first. Running the backward
    LSTM on per-sequence-reversed input keeps it clean without pack_padded_sequence, which is
    10-40x slower on CPU. The index is its own inverse, so it also maps outputs back.
    """
    t = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    lengths = lengths.to(x.device).unsqueeze(1)
    idx = torch.where(t < lengths, lengths - 1 - t, t)
    if x.dim() == 3:
        idx = idx.unsqueeze(-1).expand(-1, -1, x.size(2))
    return x.gather(1, idx)


class Classifier(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, layers: int, bidirectional: bool, dropout: float):
        super().__init__()
        self.config = dict(
            vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden, layers=layers,
            bidirectional=bidirectional, dropout=dropout,
        )
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        dirs = 2 if bidirectional else 1
        sizes = [embed_dim] + [hidden * dirs] * (layers - 1)
        # One single-layer LSTM per layer and direction, so each backward pass sees only real tokens.
        self.fwd = nn.ModuleList(nn.LSTM(n, hidden, batch_first=True) for n in sizes)
        self.bwd = nn.ModuleList(nn.LSTM(n, hidden, batch_first=True) for n in sizes) if bidirectional else None
        self.out = nn.Linear(2 * hidden * dirs, 1)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, time, features) states; positions past each length are garbage, to be masked."""
        x = self.drop(self.embedding(ids))
        for i, fwd in enumerate(self.fwd):
            h, _ = fwd(x)
            if self.bwd is not None:
                hb, _ = self.bwd[i](reverse_padded(x, lengths))
                h = torch.cat([h, reverse_padded(hb, lengths)], dim=-1)
            x = self.drop(h) if i < len(self.fwd) - 1 else h
        return x

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logit of the positive class, one per review."""
        h = self.encode(ids, lengths)
        mask = (torch.arange(ids.size(1), device=ids.device).unsqueeze(0) < lengths.to(ids.device).unsqueeze(1)).unsqueeze(-1)
        n = lengths.to(h.device).clamp(min=1).unsqueeze(1).to(h.dtype)
        mean = (h * mask).sum(1) / n
        # An empty review has no valid state: its max is defined as 0 rather than -inf.
        mx = h.masked_fill(~mask, float("-inf")).amax(1)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        return self.out(self.drop(torch.cat([mx, mean], dim=-1))).squeeze(-1)


def build(config: dict) -> Classifier:
    return Classifier(**config)


def load_classifier(path: Path = Path("models/classifier.pt"), device: str = "cpu"):
    if not path.is_file():
        raise PipelineError(f"model {path} not found (run the train stage first: dvc repro train)")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = build(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


@torch.no_grad()
def predict_proba(model, seqs: list[np.ndarray], batch_size: int) -> np.ndarray:
    """Positive-class probabilities in input order, batched by length for speed."""
    lengths = np.array([len(s) for s in seqs])
    probs = np.zeros(len(seqs), dtype=np.float64)
    for b in data.bucket_batches(lengths, batch_size, None):
        ids, lens = data.collate([seqs[i] for i in b])
        probs[b] = torch.sigmoid(model(ids, lens).float()).numpy()
    return probs
