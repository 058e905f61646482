"""Stage train: fit the LSTM classifier on train, keep the best-on-valid checkpoint.

Outputs: models/classifier.pt, metrics/train.json, per-epoch curves in dvclive/train/.
An interrupted run leaves models/train.resume.pt; with train.resume it carries on from there.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import data
from pipeline.common import PipelineError, atomic_file, cpu_count, run_main, write_json
from pipeline.model import Classifier
from pipeline.params import TrainParams, load_params
from pipeline.vocab import read_vocab

VOCAB_DIR = Path("data/vocab")
MODEL = Path("models/classifier.pt")
RESUME = Path("models/train.resume.pt")
METRICS = Path("metrics/train.json")
LIVE_DIR = "dvclive/train"


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is cuda but no CUDA device is available")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA (cuDNN LSTM runs it natively); a no-op on CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def lr_lambda(schedule: str, warmup: float, total: int):
    warm = max(1, int(warmup * total))

    def f(step: int) -> float:
        if step < warm and warmup > 0:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm)) if warmup > 0 else min(1.0, step / max(1, total))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return 1.0

    return f


def run_epoch(model, seqs, labels, batches, device, optimizer=None, scheduler=None, clip=0.0, scaler=None):
    """One pass over `batches`; trains when an optimizer is given. Returns (mean loss, accuracy, tokens)."""
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    model.train(optimizer is not None)
    total_loss, correct, n, tokens = 0.0, 0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for b in batches:
            ids, lengths = data.collate([seqs[i] for i in b])
            y = torch.from_numpy(labels[b].astype(np.float32)).to(device)
            ids = ids.to(device, non_blocking=True)
            with autocast(device):
                logits = model(ids, lengths).float()
            loss = loss_fn(logits, y)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                (loss / len(b)).backward() if scaler is None else scaler.scale(loss / len(b)).backward()
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
            total_loss += loss.item()
            correct += int(((logits > 0).float() == y).sum())
            n += len(b)
            tokens += int(lengths.sum())
    return total_loss / max(n, 1), correct / max(n, 1), tokens


def signature(params: TrainParams, vocab_size: int, n_train: int) -> dict:
    """What a resume file must match: the same params and data shape, or it is ignored."""
    sig = dataclasses.asdict(params)
    sig.pop("resume")
    sig.pop("threads")
    return {**sig, "vocab_size": vocab_size, "n_train": n_train}


def main() -> None:
    params: TrainParams = load_params()["train"]
    torch.set_num_threads(params.threads or cpu_count())
    device = pick_device(params.device)
    itos = read_vocab(VOCAB_DIR / "vocab.tsv") if (VOCAB_DIR / "vocab.tsv").is_file() else None
    if itos is None:
        raise PipelineError(f"{VOCAB_DIR}/vocab.tsv not found (run the vocab stage first)")
    cut = lambda seqs: [data.truncate(s, params.max_len, params.head_fraction) for s in seqs]  # noqa: E731
    train_seqs, train_y, _ = data.load_split(VOCAB_DIR / "train.parquet")
    valid_seqs, valid_y, _ = data.load_split(VOCAB_DIR / "valid.parquet")
    train_seqs, valid_seqs = cut(train_seqs), cut(valid_seqs)
    train_len = np.array([len(s) for s in train_seqs])
    valid_len = np.array([len(s) for s in valid_seqs])
    valid_batches = data.bucket_batches(valid_len, params.batch_size * 4, None)

    torch.manual_seed(params.seed)
    model = Classifier(len(itos), params.embed_dim, params.hidden, params.layers, params.bidirectional, params.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = math.ceil(len(train_seqs) / params.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(params.lr_schedule, params.warmup, steps_per_epoch * params.epochs)
    )
    use_fp16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if use_fp16 else None

    sig = signature(params, len(itos), len(train_seqs))
    state = {"epoch": 0, "best": None, "best_loss": float("inf"), "bad_epochs": 0, "history": []}
    if params.resume and RESUME.is_file():
        saved = torch.load(RESUME, map_location=device, weights_only=True)
        if saved.get("signature") == sig:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = saved["state"]
            print(f"train: resuming after epoch {state['epoch']} from {RESUME}")
    resumed = state["epoch"] > 0

    from dvclive import Live

    start = time.perf_counter()
    train_tokens = 0
    with Live(LIVE_DIR, dvcyaml=None, save_dvc_exp=False, resume=resumed) as live:
        for epoch in range(state["epoch"], params.epochs):
            # Seeds derived from (seed, epoch), so a resumed run draws what an uninterrupted one would.
            torch.manual_seed(params.seed * 1000 + epoch)
            rng = np.random.default_rng([params.seed, epoch])
            batches = data.bucket_batches(train_len, params.batch_size, rng)
            t0 = time.perf_counter()
            tr_loss, tr_acc, tokens = run_epoch(
                model, train_seqs, train_y, batches, device, optimizer, scheduler, params.clip, scaler
            )
            train_tokens += tokens
            va_loss, va_acc, _ = run_epoch(model, valid_seqs, valid_y, valid_batches, device)
            row = {"epoch": epoch + 1, "train_loss": tr_loss, "train_acc": tr_acc, "valid_loss": va_loss, "valid_acc": va_acc}
            state["history"].append(row)
            for k in ("train_loss", "train_acc", "valid_loss", "valid_acc"):
                live.log_metric(k.replace("_", "/", 1), round(row[k], 6), plot=True)
            live.next_step()
            print(f"epoch {epoch + 1}: train loss {tr_loss:.4f} acc {tr_acc:.4f} | valid loss {va_loss:.4f} "
                  f"acc {va_acc:.4f} | {tokens / (time.perf_counter() - t0):,.0f} tokens/s")
            if va_loss < state["best_loss"]:
                state.update(best_loss=va_loss, best=copy.deepcopy(model.state_dict()), best_epoch=epoch + 1, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch + 1
            with atomic_file(RESUME) as tmp:
                torch.save({"signature": sig, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "state": state}, tmp)
            if state["bad_epochs"] >= params.patience:
                print(f"train: early stop, valid loss has not improved for {params.patience} epochs")
                break
    elapsed = time.perf_counter() - start

    best = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
    with atomic_file(MODEL) as tmp:
        torch.save({"config": model.config, "state_dict": {k: v.cpu() for k, v in state["best"].items()},
                    "max_len": params.max_len, "head_fraction": params.head_fraction}, tmp)
    RESUME.unlink(missing_ok=True)
    write_json(METRICS, {
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "valid_loss": round(best["valid_loss"], 6),
        "valid_acc": round(best["valid_acc"], 6),
        "train_loss": round(best["train_loss"], 6),
        "train_acc": round(best["train_acc"], 6),
        "parameters": sum(p.numel() for p in model.parameters()),
        "padded_fraction": round(data.padded_fraction(train_len, data.bucket_batches(train_len, params.batch_size, np.random.default_rng(params.seed))), 4),
    })
    rate = f", {train_tokens / elapsed:,.0f} train tokens/s" if not resumed else ""
    print(f"train: best epoch {state['best_epoch']} valid acc {best['valid_acc']:.4f} ({elapsed:.1f}s{rate}, {device})")


if __name__ == "__main__":
    run_main(main)
