"""Stage train: fit the LSTM classifier on train, keep the best-on-valid weights.

Outputs: models/classifier.pt, metrics/train.json, per-epoch curves in dvclive/train/.
Each epoch ends with models/train.resume.pt; after an interruption, train.resume carries on
from it and ends with the same weights an uninterrupted run would have.

With --from-lm it is stage train_from_lm: the same classifier and `train` params, its embedding
and first forward LSTM layer(s) copied from models/lm.pt (pipeline.model.init_classifier_from_lm),
trained at lr * train_from_lm.lm_lr_mult and frozen for train_from_lm.unfreeze_epoch epochs;
outputs models/classifier_lm.pt, metrics/train_from_lm.json, dvclive/train_from_lm/.
With --from-lm --backward it is stage train_from_lm_backward: the same from models/lm_backward.pt,
reading every review last word first as that LM did; outputs named *_backward.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline import data, distributed, paths, training
from pipeline.common import Parser, PipelineError, run_main
from pipeline.labels import read_labels
from pipeline.model import Classifier, init_classifier_from_lm, lm_param_names, load_lm_init
from pipeline.params import TrainParams, load_params
from pipeline.training import autocast


def run_epoch(model, seqs, labels, batches, device, optimizer=None, scheduler=None, clip=0.0, scaler=None,
              precision="auto", pad_multiple=1):
    """One pass over `batches`; trains when an optimizer is given. Returns (mean loss, accuracy, tokens).

    Under torchrun each rank runs its share of every global batch; the results are summed over ranks.
    """
    binary = model_classes(model) == 2
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum") if binary else nn.CrossEntropyLoss(reduction="sum")
    model.train(optimizer is not None)
    total_loss, correct, n, tokens = 0.0, 0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for b in batches:
            b, weight = distributed.shard(b)  # this rank's reviews; weight * summed loss -> global mean
            ids, lengths = data.collate([seqs[i] for i in b], pad_multiple)
            y = data.to_device(torch.from_numpy(labels[b].astype(np.float32 if binary else np.int64)), device)
            with autocast(device, precision):
                logits = model(data.to_device(ids, device), data.to_device(lengths, device)).float()
            loss = loss_fn(logits, y)
            if optimizer is not None:
                training.step(loss * weight, optimizer, model.parameters(), clip, scaler)  # * weight: loss / len(b) in one process
                scheduler.step()
            if weight == 0:  # a stand-in review, for a rank with no share of this batch
                continue
            total_loss += loss.item()
            pred = (logits > 0).float() if binary else logits.argmax(1)
            correct += int((pred == y).sum())
            n += len(b)
            tokens += int(lengths.sum())
    total_loss, correct, n, tokens = distributed.all_sum(total_loss, correct, n, tokens)
    return total_loss / max(n, 1), correct / max(n, 1), tokens


def model_classes(model) -> int:
    return (model.module if hasattr(model, "module") else model).config["classes"]  # DDP wraps the model


def build_model(params: TrainParams, vocab_size: int, vectors: np.ndarray | None, lm: dict | None = None,
                classes: int = 2) -> Classifier:
    torch.manual_seed(params.seed)
    model = Classifier(vocab_size, params.embed_dim, params.hidden, params.layers, params.bidirectional, params.dropout,
                       classes, params.pooling)
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
        vectors: np.ndarray | None = None, log: Callable[[dict], None] | None = None, lm: dict | None = None,
        classes: int = 2) -> dict:
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

    model = build_model(params, vocab_size, vectors, lm, classes).to(device)
    net = distributed.wrap(model, device)  # DDP under torchrun; `model` stays the bare weights
    pretrained_names = set(lm_param_names(model.config, lm["config"])) if lm is not None else set()
    pretrained = [p for n, p in model.named_parameters() if n in pretrained_names]
    groups = [{"params": [p for n, p in model.named_parameters() if n not in pretrained_names]}]
    if pretrained:
        groups.append({"params": pretrained, "lr": params.lr * lm["lr_mult"]})
    optimizer = torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = math.ceil(len(train_seqs) / params.batch_size)
    schedule = training.lr_lambda(params.lr_schedule, params.warmup, steps_per_epoch * params.epochs)
    schedules = [schedule]
    if pretrained:  # the LM's weights stay put (lr 0) for unfreeze_epoch epochs; requires_grad would upset DDP
        frozen_steps = lm["unfreeze_epoch"] * steps_per_epoch
        schedules.append(lambda step: schedule(step) if step >= frozen_steps else 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    scaler = training.grad_scaler(device, params.precision)

    sig = training.signature(params, vocab_size=vocab_size, n_train=len(train_seqs), classes=classes,
                             data=training.data_digest(train_seqs, train_y, valid_seqs, valid_y, vectors))
    if lm is not None:
        sig.update(lm_lr_mult=lm["lr_mult"], unfreeze_epoch=lm["unfreeze_epoch"], lm_digest=lm["digest"])
    resume = training.Resume(resume_path, sig, "train")
    state = resume.restore(device, log, model=model, optimizer=optimizer, scheduler=scheduler)
    if state is not None:
        print(f"train: resuming after epoch {state['epoch']} from {resume_path}")
    else:
        state = {"epoch": 0, "best": None, "best_score": float("-inf"), "best_epoch": 0, "bad_epochs": 0, "history": []}
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
        tr_loss, tr_acc, n = run_epoch(net, train_seqs, train_y, batches, device, optimizer, scheduler, params.clip, scaler,
                                        params.precision)
        seconds = time.perf_counter() - t0
        tokens += n
        va_loss, va_acc, _ = run_epoch(net, valid_seqs, valid_y, valid_batches, device, precision=params.precision)
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
        if distributed.is_main():
            resume.save(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        state=state)
    if state["bad_epochs"] >= params.patience:
        print(f"train: early stop, {params.monitor} has not improved for {params.patience} epochs")
    return {**state, "model": model, "tokens": tokens, "seconds": time.perf_counter() - start, "resumed_at": resumed_at,
            "padded_fraction": data.padded_fraction(train_len, data.bucket_batches(train_len, params.batch_size, np.random.default_rng(params.seed)))}


def load_data(params: TrainParams, split: str, reverse: bool = False):
    seqs, labels, _ = data.load_split(paths.VOCAB / f"{split}.parquet")
    return [data.classifier_input(s, params.max_len, params.head_fraction, reverse) for s in seqs], labels


def curve_metrics(row: dict) -> dict:
    return {k.replace("_", "/", 1): round(row[k], 6) for k in ("train_loss", "train_acc", "valid_loss", "valid_acc")}


def main(argv: list[str] | None = None) -> None:
    ap = Parser(prog="python -m pipeline.train", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--from-lm", action="store_true",
                    help="stage train_from_lm: start from models/lm.pt (params section train_from_lm), own outputs")
    ap.add_argument("--backward", action="store_true",
                    help="with --from-lm, stage train_from_lm_backward: start from the backward LM, reviews reversed")
    args = ap.parse_args(argv)
    if args.backward and not args.from_lm:
        raise PipelineError("--backward starts the classifier from the backward language model: give --from-lm too")
    out = (paths.TRAIN_FROM_LM_BACKWARD if args.backward else paths.TRAIN_FROM_LM) if args.from_lm else paths.TRAIN
    sections = load_params("train", "train_from_lm") if args.from_lm else load_params("train")
    params: TrainParams = sections["train"]
    distributed.relaunch(params.nproc, "pipeline.train")  # train.nproc > 1: continue under torchrun
    threads, device = training.setup(params, "train", distributed.local_world())
    device = distributed.init(device)
    vocab_size = len(data.read_vocab(paths.VOCAB_FILE))
    names = read_labels(paths.VOCAB_LABELS)
    vectors = np.load(paths.VOCAB_VECTORS) if paths.VOCAB_VECTORS.is_file() else None
    lm = None
    if args.from_lm:
        from_lm = sections["train_from_lm"]
        lm = load_lm_init(paths.LM_BACKWARD if args.backward else paths.LM, from_lm.lm_lr_mult, from_lm.unfreeze_epoch)
    # The direction follows the LM the weights come from, not the flag: a classifier reads as its LM read.
    reverse = lm is not None and lm["reverse"]
    train, valid = load_data(params, "train", reverse), load_data(params, "valid", reverse)

    # Rank 0 alone writes curves, metrics and weights; all ranks hold the same all-reduced numbers.
    with training.curves(out.live, curve_metrics, enabled=distributed.is_main()) as log:
        result = fit(params, vocab_size, train, valid, device, out.resume if params.resume else None, vectors, log, lm,
                     len(names))
    distributed.report(out.stage)
    if not distributed.is_main():
        return

    best = result["history"][result["best_epoch"] - 1]
    training.finish(out, result["model"], result["best"],
                    {"max_len": params.max_len, "head_fraction": params.head_fraction, "labels": names,
                     **({"reverse": True} if reverse else {})},  # absent = left to right, as before the key
                    {"best_epoch": result["best_epoch"], "epochs_run": result["epoch"],
                     **{k: round(best[k], 6) for k in ("valid_loss", "valid_acc", "train_loss", "train_acc")},
                     "padded_fraction": round(result["padded_fraction"], 4)},
                    threads, result, device, f"best epoch {result['best_epoch']}, valid acc {best['valid_acc']:.4f}")

if __name__ == "__main__":
    run_main(main)
