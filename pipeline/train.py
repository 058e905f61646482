"""Stage train: fit the LSTM classifier on train, keep the best-on-valid weights.

Outputs: models/classifier.pt, metrics/train.json, per-epoch curves in dvclive/train/.
Each epoch ends with models/train.resume.pt; after an interruption, train.resume carries on
from it and ends with the same weights an uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline import data, distributed
from pipeline.common import PipelineError, run_main, save_torch, torch_threads, write_json
from pipeline.model import Classifier, init_classifier_from_lm, lm_param_names, load_lm_init
from pipeline.params import TrainParams, load_params
from pipeline.vocab import read_vocab

VOCAB_DIR = Path("data/vocab")
VECTORS = VOCAB_DIR / "vectors.npy"  # written by the vocab stage when vocab.vectors is set
MODEL = Path("models/classifier.pt")
RESUME = Path("models/train.resume.pt")
METRICS = Path("metrics/train.json")
LIVE_DIR = "dvclive/train"
LM = Path("models/lm.pt")
# Stage train_from_lm (train.main(init="lm")): the same classifier started from the LM, its own outputs.
FROM_LM = dict(model=Path("models/classifier_lm.pt"), resume=Path("models/train_from_lm.resume.pt"),
               metrics=Path("metrics/train_from_lm.json"), live="dvclive/train_from_lm")


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is cuda but no CUDA device is available")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA where supported, else fp16 (with a grad scaler); off on CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def lr_lambda(schedule: str, warmup: float, total: int) -> Callable[[int], float]:
    """Multiplier of the base lr at each step: linear warm-up, then constant/cosine/linear decay."""
    warm = int(warmup * total)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return 1.0

    return f


def run_epoch(model, seqs, labels, batches, device, optimizer=None, scheduler=None, clip=0.0, scaler=None):
    """One pass over `batches`; trains when an optimizer is given. Returns (mean loss, accuracy, tokens).

    Under torchrun each rank runs its share of every global batch; the results are summed over ranks.
    """
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    model.train(optimizer is not None)
    total_loss, correct, n, tokens = 0.0, 0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for b in batches:
            b, weight = distributed.shard(b)  # this rank's reviews; weight * summed loss -> global mean
            ids, lengths = data.collate([seqs[i] for i in b])
            y = data.to_device(torch.from_numpy(labels[b].astype(np.float32)), device)
            with autocast(device):
                logits = model(data.to_device(ids, device), data.to_device(lengths, device)).float()
            loss = loss_fn(logits, y)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                mean = loss * weight  # loss / len(b) in one process
                if scaler is not None:  # fp16 only: scale so small gradients survive
                    scaler.scale(mean).backward()
                    scaler.unscale_(optimizer)
                else:
                    mean.backward()
                if clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
            if weight == 0:  # a stand-in review, for a rank with no share of this batch
                continue
            total_loss += loss.item()
            correct += int(((logits > 0).float() == y).sum())
            n += len(b)
            tokens += int(lengths.sum())
    total_loss, correct, n, tokens = distributed.all_sum(total_loss, correct, n, tokens)
    return total_loss / max(n, 1), correct / max(n, 1), tokens


def signature(params: TrainParams, vocab_size: int, n_train: int) -> dict:
    """What a resume file must match (same params and data shape), or it is ignored."""
    sig = dataclasses.asdict(params)
    for key in ("resume", "threads", "device", "nproc"):  # settings that do not change the math
        sig.pop(key)
    return {**sig, "vocab_size": vocab_size, "n_train": n_train}


def build_model(params: TrainParams, vocab_size: int, vectors: np.ndarray | None, lm: dict | None = None) -> Classifier:
    torch.manual_seed(params.seed)
    model = Classifier(vocab_size, params.embed_dim, params.hidden, params.layers, params.bidirectional, params.dropout)
    if vectors is not None:
        if vectors.shape != (vocab_size, params.embed_dim):
            raise PipelineError(
                f"train.embed_dim must match the pretrained vectors: vectors are {vectors.shape[1]}-d, "
                f"embed_dim is {params.embed_dim}"
            )
        model.embedding.weight.data.copy_(torch.from_numpy(vectors))
    if lm is not None:  # embedding and first LSTM layer(s) from the language model (pipeline.model.load_lm_init)
        init_classifier_from_lm(model, lm["state_dict"], lm["config"])
    return model


def fit(params: TrainParams, vocab_size: int, train, valid, device: torch.device, resume_path: Path | None = None,
        vectors: np.ndarray | None = None, log: Callable[[dict], None] | None = None, lm: dict | None = None) -> dict:
    """Train with early stopping on valid loss. `train`/`valid` are (seqs, labels), already truncated.

    With `resume_path`, state is saved there after every epoch and picked up again if it
    matches these params. Returns the best weights, the per-epoch history and counters.
    With `lm` (pipeline.model.load_lm_init), the weights copied from the language model train at
    lr * lm["lr_mult"] and stay frozen for the first lm["unfreeze_epoch"] epochs.
    """
    train_seqs, train_y = train
    valid_seqs, valid_y = valid
    train_len = np.array([len(s) for s in train_seqs])
    valid_batches = data.bucket_batches(np.array([len(s) for s in valid_seqs]), params.batch_size * 4, None)

    model = build_model(params, vocab_size, vectors, lm).to(device)
    net = distributed.wrap(model, device)  # DDP under torchrun; `model` stays the bare weights
    pretrained_names = set(lm_param_names(model.config, lm["config"])) if lm is not None else set()
    pretrained = [p for n, p in model.named_parameters() if n in pretrained_names]
    groups = [{"params": [p for n, p in model.named_parameters() if n not in pretrained_names]}]
    if pretrained:
        groups.append({"params": pretrained, "lr": params.lr * lm["lr_mult"]})
    optimizer = torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = math.ceil(len(train_seqs) / params.batch_size)
    schedule = lr_lambda(params.lr_schedule, params.warmup, steps_per_epoch * params.epochs)
    schedules = [schedule]
    if pretrained:  # the LM's weights stay put (lr 0) for unfreeze_epoch epochs; requires_grad would upset DDP
        frozen_steps = lm["unfreeze_epoch"] * steps_per_epoch
        schedules.append(lambda step: schedule(step) if step >= frozen_steps else 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and not torch.cuda.is_bf16_supported() else None

    sig = signature(params, vocab_size, len(train_seqs))
    if lm is not None:
        sig.update(lm_lr_mult=lm["lr_mult"], unfreeze_epoch=lm["unfreeze_epoch"], lm_digest=lm["digest"])
    state = {"epoch": 0, "best": None, "best_score": float("-inf"), "best_epoch": 0, "bad_epochs": 0, "history": []}
    if resume_path is not None and resume_path.is_file():
        saved = torch.load(resume_path, map_location=device, weights_only=True)
        if saved.get("signature") == sig:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = saved["state"]
            print(f"train: resuming after epoch {state['epoch']} from {resume_path}")
        else:
            print(f"train: ignoring {resume_path}, it was made with other params")
    resumed_at = state["epoch"]
    distributed.check_agree(resumed_at, "the epoch to resume from")

    tokens = 0
    start = time.perf_counter()
    while state["epoch"] < params.epochs and state["bad_epochs"] < params.patience:
        epoch = state["epoch"]
        # Seeds derived from (seed, epoch): a resumed run draws exactly what an uninterrupted one would.
        torch.manual_seed(params.seed * 1000 + epoch + (distributed.rank() << 32))  # ranks > 0: own dropout masks
        batches = data.bucket_batches(train_len, params.batch_size, np.random.default_rng([params.seed, epoch]))
        t0 = time.perf_counter()
        tr_loss, tr_acc, n = run_epoch(net, train_seqs, train_y, batches, device, optimizer, scheduler, params.clip, scaler)
        seconds = time.perf_counter() - t0
        tokens += n
        va_loss, va_acc, _ = run_epoch(net, valid_seqs, valid_y, valid_batches, device)
        row = {"epoch": epoch + 1, "train_loss": tr_loss, "train_acc": tr_acc, "valid_loss": va_loss, "valid_acc": va_acc}
        state["history"].append(row)
        # valid_acc keeps improving for an epoch or two after valid_loss turns up (the model grows
        # over-confident), so the monitored value is a param; higher is better for both.
        score = va_acc if params.monitor == "valid_acc" else -va_loss
        if score > state["best_score"]:
            state.update(best_score=score, best=copy.deepcopy(model.state_dict()), best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        print(f"epoch {epoch + 1}: train loss {tr_loss:.4f} acc {tr_acc:.4f} | valid loss {va_loss:.4f} acc {va_acc:.4f}"
              f" | {n / seconds:,.0f} tokens/s")
        if log:
            log(row)
        if resume_path is not None and distributed.is_main():
            save_torch({"signature": sig, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "state": state}, resume_path)
    if state["bad_epochs"] >= params.patience:
        print(f"train: early stop, {params.monitor} has not improved for {params.patience} epochs")
    return {**state, "model": model, "tokens": tokens, "seconds": time.perf_counter() - start, "resumed_at": resumed_at,
            "padded_fraction": data.padded_fraction(train_len, data.bucket_batches(train_len, params.batch_size, np.random.default_rng(params.seed)))}


def load_data(params: TrainParams, split: str):
    seqs, labels, _ = data.load_split(VOCAB_DIR / f"{split}.parquet")
    return [data.truncate(s, params.max_len, params.head_fraction) for s in seqs], labels


def main(init: str = "scratch") -> None:
    """init "scratch" is stage train; "lm" is stage train_from_lm, with its own outputs (FROM_LM)."""
    out = FROM_LM if init == "lm" else dict(model=MODEL, resume=RESUME, metrics=METRICS, live=LIVE_DIR)
    params: TrainParams = load_params()["train"]
    # train.nproc > 1: continue under torchrun
    distributed.relaunch(params.nproc, "pipeline.train_from_lm" if init == "lm" else "pipeline.train")
    threads = torch_threads(params.threads, distributed.local_world())
    device = distributed.init(pick_device(params.device))
    if not (VOCAB_DIR / "vocab.tsv").is_file():
        raise PipelineError(f"{VOCAB_DIR}/vocab.tsv not found (run the vocab stage first)")
    vocab_size = len(read_vocab(VOCAB_DIR / "vocab.tsv"))
    vectors = np.load(VECTORS) if VECTORS.is_file() else None
    train, valid = load_data(params, "train"), load_data(params, "valid")

    from dvclive import Live

    lm = None
    if init == "lm":
        from_lm = load_params()["train_from_lm"]
        lm = load_lm_init(LM, from_lm.lm_lr_mult, from_lm.unfreeze_epoch)
    resume = out["resume"] if params.resume else None
    resuming = resume is not None and resume.is_file()
    # Rank 0 alone writes curves, metrics and weights; all ranks hold the same all-reduced numbers.
    with (Live(out["live"], dvcyaml=None, save_dvc_exp=False, resume=resuming) if distributed.is_main()
          else contextlib.nullcontext()) as live:
        def log(row):
            for k in ("train_loss", "train_acc", "valid_loss", "valid_acc"):
                live.log_metric(k.replace("_", "/", 1), round(row[k], 6))
            live.next_step()

        result = fit(params, vocab_size, train, valid, device, resume, vectors, log if live is not None else None, lm)
    distributed.report("train_from_lm" if init == "lm" else "train")
    if not distributed.is_main():
        return

    best = result["history"][result["best_epoch"] - 1]
    save_torch({"config": result["model"].config, "state_dict": {k: v.cpu() for k, v in result["best"].items()},
                "max_len": params.max_len, "head_fraction": params.head_fraction, "threads": threads}, out["model"])
    out["resume"].unlink(missing_ok=True)
    write_json(out["metrics"], {
        "best_epoch": result["best_epoch"],
        "epochs_run": result["epoch"],
        "valid_loss": round(best["valid_loss"], 6),
        "valid_acc": round(best["valid_acc"], 6),
        "train_loss": round(best["train_loss"], 6),
        "train_acc": round(best["train_acc"], 6),
        "parameters": sum(p.numel() for p in result["model"].parameters()),
        "padded_fraction": round(result["padded_fraction"], 4),
        "threads": threads,  # with the CPU type, what the bytes of a rerun depend on
    })
    rate = result["tokens"] / max(result["seconds"], 1e-9)
    print(f"train: best epoch {result['best_epoch']}, valid acc {best['valid_acc']:.4f} "
          f"({result['seconds']:.1f}s, {rate:,.0f} train tokens/s, {device})")


if __name__ == "__main__":
    run_main(main)
