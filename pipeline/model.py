"""The sentiment classifier: Embedding -> (bi)LSTM -> masked max+mean (+ last state) pooling -> Linear."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import data
from pipeline.common import PipelineError


def _reversal_index(lengths: torch.Tensor, steps: int, device) -> torch.Tensor:
    t = torch.arange(steps, device=device).unsqueeze(0)
    lengths = lengths.to(device).unsqueeze(1)
    return torch.where(t < lengths, lengths - 1 - t, t)


class _Permute(torch.autograd.Function):
    """x.gather(1, idx) for an index that is its own inverse: the gradient is gathered the same way,
    where autograd's generic gather backward would scatter-add (twice the time on CPU)."""

    @staticmethod
    def forward(ctx, x, idx):
        ctx.save_for_backward(idx)
        return x.gather(1, idx)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        return grad.gather(1, idx), None


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length; padding stays at the end.

    A bidirectional nn.LSTM on a right-padded batch starts its backward pass on the padding,
    so every backward state of a short review has read pad tokens first. Running the backward
    LSTM on per-sequence-reversed input keeps it clean without pack_padded_sequence, which is
    10-40x slower on CPU. The index is its own inverse, so it also maps outputs back.
    """
    idx = _reversal_index(lengths, x.size(1), x.device)
    if x.dim() == 3:
        idx = idx.unsqueeze(-1).expand(-1, -1, x.size(2))
    return _Permute.apply(x, idx)


class Dropout(nn.Module):
    """Element-wise dropout, as nn.Dropout, with its mask drawn by torch.rand: on CPU nn.Dropout's
    bernoulli_ took 15% of a classifier step (55 ms for a 64x400x128 batch against 17 ms)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = (torch.rand(x.shape, device=x.device) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * mask


class Classifier(nn.Module):
    """Two classes: one logit (of class 1) and a sigmoid; K > 2: K logits and a softmax."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, layers: int, bidirectional: bool, dropout: float,
                 classes: int = 2, pooling: str = "maxmean"):
        super().__init__()
        if pooling not in ("maxmean", "concat"):
            raise ValueError(f"pooling must be maxmean or concat, got {pooling!r}")
        self.config = dict(
            vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden, layers=layers,
            bidirectional=bidirectional, dropout=dropout, classes=classes,
        )
        if pooling != "maxmean":  # absent = maxmean: checkpoints from before the option keep their bytes and load
            self.config["pooling"] = pooling
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.drop = Dropout(dropout)
        dirs = 2 if bidirectional else 1
        sizes = [embed_dim] + [hidden * dirs] * (layers - 1)
        # One single-layer LSTM per layer and direction, so each backward pass sees only real tokens.
        self.fwd = nn.ModuleList(nn.LSTM(n, hidden, batch_first=True) for n in sizes)
        self.bwd = nn.ModuleList(nn.LSTM(n, hidden, batch_first=True) for n in sizes) if bidirectional else None
        self.out = nn.Linear((3 if pooling == "concat" else 2) * hidden * dirs, 1 if classes == 2 else classes)

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
        """Two classes: the logit of class 1, one per review; K > 2: (reviews, K) logits."""
        h = self.encode(ids, lengths)
        mask = (torch.arange(ids.size(1), device=ids.device).unsqueeze(0) < lengths.to(ids.device).unsqueeze(1)).unsqueeze(-1)
        n = lengths.to(h.device).clamp(min=1).unsqueeze(1).to(h.dtype)
        mean = (h * mask).sum(1) / n
        # An empty review has no valid state: its max is defined as 0 rather than -inf.
        mx = h.masked_fill(~mask, float("-inf")).amax(1)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        pooled = [mx, mean]
        if self.config.get("pooling") == "concat":
            pooled.insert(0, self.last_state(h, lengths))
        logits = self.out(self.drop(torch.cat(pooled, dim=-1)))
        return logits.squeeze(-1) if logits.size(-1) == 1 else logits

    def last_state(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Each direction's state after reading the whole review: forward at the last real token,
        backward at the first; zeros for an empty review."""
        lengths = lengths.to(h.device)
        last = h[torch.arange(h.size(0), device=h.device), (lengths.clamp(min=1) - 1)]
        if self.bwd is not None:
            k = self.config["hidden"]
            last = torch.cat([last[:, :k], h[:, 0, k:]], dim=-1)
        return last * (lengths > 0).unsqueeze(1).to(last.dtype)


def build(config: dict) -> Classifier:
    return Classifier(**config)


def read_checkpoint(path: Path, kind: str, cls, device: str = "cpu"):
    """Load a checkpoint of `kind` ("classifier" or "language model") and build its model.

    Every failure is one line naming the file and what it holds: not a checkpoint at all, a
    pickle that weights_only refuses (it would run code), or the other kind of model.
    """
    import pickle
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # neither torch's zip format nor a pickle
        raise PipelineError(f"{path} is not a PyTorch checkpoint")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), "")
        raise PipelineError(f"{path} is refused: it holds objects other than tensors and plain data, which "
                            f"loading would run as code" + (f" ({why[:120]})" if why else "")) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PipelineError(f"{path} is not a PyTorch checkpoint ({first[:120]})") from None
    if not isinstance(ckpt, dict) or not {"config", "state_dict"} <= set(ckpt):
        raise PipelineError(f"{path} is a PyTorch file but not a checkpoint of this project (no config/state_dict)")
    try:
        model = cls(**ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, KeyError):
        other = "language model" if kind == "classifier" else "classifier"
        looks = other if ("itos" in ckpt) == (other == "language model") else "model of another shape"
        raise PipelineError(f"{path} holds a {looks}, not a {kind}") from None
    model.eval()
    return model, ckpt


def checkpoint_labels(ckpt: dict, path: Path) -> list[str]:
    """The class names a classifier was trained with; checkpoints from before the label map are neg/pos."""
    names = ckpt.get("labels", ["neg", "pos"])
    if len(names) != ckpt["config"].get("classes", 2):
        raise PipelineError(f"{path} names {len(names)} labels for a {ckpt['config'].get('classes', 2)}-class model")
    return list(names)


def load_classifier(path: Path, device: str = "cpu"):
    if not path.is_file():
        raise PipelineError(f"model {path} not found (run the train stage first: dvc repro train)")
    return read_checkpoint(path, "classifier", Classifier, device)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(reviews, classes) probabilities from the classifier's output, whichever head it has."""
    logits = logits.float()
    if logits.dim() == 1:
        p = torch.sigmoid(logits)
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def predict_proba(model, seqs: list[np.ndarray], batch_size: int) -> np.ndarray:
    """(reviews, classes) probabilities in input order, batched by length for speed."""
    lengths = np.array([len(s) for s in seqs])
    probs = np.zeros((len(seqs), model.config.get("classes", 2)), dtype=np.float64)
    for b in data.bucket_batches(lengths, batch_size, None):
        ids, lens = data.collate([seqs[i] for i in b])
        probs[b] = probabilities(model(ids, lens)).numpy()
    return probs


def load_members(files: list[Path] | tuple[Path, ...] | list[str]) -> tuple[list[tuple[Classifier, dict]], list[str]]:
    """One classifier, or several to average (an ensemble), and their class names, which must agree."""
    files = [Path(f) for f in files]
    members = [load_classifier(p) for p in files]
    names = [checkpoint_labels(ckpt, p) for (_, ckpt), p in zip(members, files)]
    sizes = {ckpt["config"]["vocab_size"] for _, ckpt in members}
    for p, n in zip(files[1:], names[1:]):
        if n != names[0]:
            raise PipelineError(f"{p} was trained on the classes {n}, {files[0]} on {names[0]}: an ensemble needs the same classes")
    if len(sizes) > 1:
        raise PipelineError(f"{', '.join(map(str, files))} were trained on different vocabularies: an ensemble needs one")
    return members, names[0]


def ensemble_proba(members: list[tuple[Classifier, dict]], seqs: list[np.ndarray], batch_size: int) -> np.ndarray:
    """(reviews, classes) probabilities of whole encoded reviews, the mean over the members; each
    reads the reviews as it was trained to (its checkpoint's max_len, head_fraction, direction)."""
    probs = [predict_proba(model, [data.classifier_input(s, ckpt["max_len"], ckpt["head_fraction"], ckpt.get("reverse", False))
                                   for s in seqs], batch_size) for model, ckpt in members]
    return probs[0] if len(probs) == 1 else np.mean(probs, axis=0)


# ---------------------------------------------------------------------------------------------
# The language model (stage train_lm) and the mapping of its weights onto the Classifier.


class LockedDropout(nn.Module):
    """Variational dropout: one mask per sequence, shared over time steps (AWD-LSTM)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, time, features)
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


class LanguageModel(nn.Module):
    """Word-level LSTM LM: tied embedding -> LSTM layers -> (projection) -> adaptive softmax.

    The embedding matrix *is* the output layer's weights: the adaptive softmax's head rows for
    the shortlist and each tail's output rows, concatenated. With div_value 1 every tail's
    output layer is embed_dim wide, so all of it can be tied. Each layer is its own single-layer
    nn.LSTM, like Classifier.fwd, so layer i maps onto the classifier's forward LSTM i.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, layers: int, cutoffs: list[int],
                 dropout_emb: float = 0.0, dropout_in: float = 0.0, dropout_hidden: float = 0.0,
                 dropout_out: float = 0.0, weight_drop: float = 0.0):
        super().__init__()
        cutoffs = [c for c in cutoffs if c < vocab_size]
        self.config = dict(
            vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden, layers=layers, cutoffs=list(cutoffs),
            dropout_emb=dropout_emb, dropout_in=dropout_in, dropout_hidden=dropout_hidden,
            dropout_out=dropout_out, weight_drop=weight_drop,
        )
        self.lstm = nn.ModuleList(nn.LSTM(embed_dim if i == 0 else hidden, hidden, batch_first=True) for i in range(layers))
        self.proj = nn.Linear(hidden, embed_dim, bias=False) if hidden != embed_dim else None
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(embed_dim, vocab_size, cutoffs, div_value=1.0)
        self.shortlist = self.softmax.shortlist_size
        self.drop_in, self.drop_hidden, self.drop_out = LockedDropout(dropout_in), LockedDropout(dropout_hidden), LockedDropout(dropout_out)
        self.dropout_emb, self.weight_drop = dropout_emb, weight_drop
        with torch.no_grad():  # embedding-scale init of the tied rows
            for w in self.tied_parts():
                w.uniform_(-0.1, 0.1)

    def tied_parts(self) -> list[torch.Tensor]:
        """The parameters whose rows, in order, make the embedding matrix (the head's extra rows score clusters)."""
        return [self.softmax.head.weight] + [tail[1].weight for tail in self.softmax.tail]

    def embedding_weight(self) -> torch.Tensor:
        head, *tails = self.tied_parts()
        return torch.cat([head[: self.shortlist], *tails])

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.embedding_weight()
        if self.training and self.dropout_emb > 0:  # drop whole words, the same in every position
            w = w * w.new_empty(w.size(0), 1).bernoulli_(1 - self.dropout_emb) / (1 - self.dropout_emb)
        return nn.functional.embedding(ids, w)

    def _run(self, lstm: nn.LSTM, x, state):
        if self.training and self.weight_drop > 0:  # DropConnect: one mask on W_hh for the whole batch
            weights = {n: getattr(lstm, n) for n in lstm._flat_weights_names}
            weights["weight_hh_l0"] = nn.functional.dropout(lstm.weight_hh_l0, self.weight_drop, training=True)
            return torch.func.functional_call(lstm, weights, (x, state))
        return lstm(x, state)

    def forward(self, ids: torch.Tensor, state: list | None = None):
        """(batch, time) ids -> (batch, time, embed_dim) features for the softmax, and the new state."""
        x = self.drop_in(self.embed(ids))
        new_state = []
        for i, lstm in enumerate(self.lstm):
            x, s = self._run(lstm, x, None if state is None else state[i])
            new_state.append(s)
            x = self.drop_hidden(x) if i < len(self.lstm) - 1 else x
        if self.proj is not None:
            x = self.proj(x)
        return self.drop_out(x), new_state

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed NLL over the targets that count (not <bos>: it always follows <eos>), and their number."""
        features, targets = features.reshape(-1, features.size(-1)), targets.reshape(-1)
        keep = targets != LM_BOS_ID
        features, targets = features[keep], targets[keep]
        if targets.numel() == 0:
            return features.sum() * 0.0, 0
        with torch.autocast(features.device.type, enabled=False):  # the softmax in fp32, under bf16 autocast too
            return self.softmax(features.float(), targets).loss * targets.numel(), int(targets.numel())

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """(n, embed_dim) -> (n, vocab) log-probabilities of the next word."""
        with torch.autocast(features.device.type, enabled=False):
            return self.softmax.log_prob(features.float())


LM_BOS_ID = 2  # pipeline.vocab.BOS_ID (model.py does not import the vocab stage)


def load_lm(path: Path, device: str = "cpu"):
    if not path.is_file():
        raise PipelineError(f"language model {path} not found (run the train_lm stage first: dvc repro train_lm)")
    return read_checkpoint(path, "language model", LanguageModel, device)


def lm_param_names(classifier_config: dict, lm_config: dict) -> list[str]:
    """The classifier parameters that start from the LM: the embedding, and forward LSTM i while shapes agree.

    Layer 1 always agrees (embed_dim -> hidden, checked below); a deeper layer only in a
    unidirectional classifier, whose layer i reads hidden features as the LM's does.
    """
    for key in ("embed_dim", "hidden"):
        if lm_config[key] != classifier_config[key]:
            raise PipelineError(f"train.{key} ({classifier_config[key]}) must equal train_lm.{key} ({lm_config[key]}) "
                                "to start the classifier from the language model")
    if lm_config["vocab_size"] != classifier_config["vocab_size"]:
        raise PipelineError(f"the language model has a {lm_config['vocab_size']}-word vocabulary, the classifier "
                            f"{classifier_config['vocab_size']}: rerun train_lm on the current vocab")
    layers = min(lm_config["layers"], classifier_config["layers"])
    if classifier_config["bidirectional"]:
        layers = 1
    names = ["embedding.weight"]
    for i in range(layers):
        names += [f"fwd.{i}.{n}_l0" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    return names


def init_classifier_from_lm(classifier: Classifier, lm_state: dict, lm_config: dict) -> list[str]:
    """Copy the LM's embedding and LSTM layers into the classifier (see lm_param_names); returns the names copied.

    The LM's layer i maps onto the classifier's forward LSTM i (one direction, left to right,
    like the LM); the backward LSTMs and the output layer keep their random start.
    """
    names = lm_param_names(classifier.config, lm_config)
    lm = LanguageModel(**lm_config)
    lm.load_state_dict(lm_state)
    params = dict(classifier.named_parameters())
    with torch.no_grad():
        params["embedding.weight"].copy_(lm.embedding_weight())
        params["embedding.weight"][0].zero_()  # <pad> stays the zero vector nn.Embedding(padding_idx=0) starts with
        for name in names[1:]:
            _, i, leaf = name.split(".")
            params[name].copy_(getattr(lm.lstm[int(i)], leaf))
    return names


def load_lm_init(path: Path, lr_mult: float, unfreeze_epoch: int) -> dict:
    """What train needs to start from the LM: its weights and config, the schedule, and a digest of the file."""
    import hashlib

    _, ckpt = load_lm(path)
    return {"state_dict": ckpt["state_dict"], "config": ckpt["config"], "lr_mult": lr_mult,
            "unfreeze_epoch": unfreeze_epoch, "digest": hashlib.sha256(path.read_bytes()).hexdigest(),
            "reverse": bool(ckpt.get("reverse", False))}

