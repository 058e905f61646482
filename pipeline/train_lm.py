"""Stage train_lm: a word-level LSTM language model on the train + unlabelled reviews.

Each review becomes <bos> ... <eos>; the reviews, in a seeded random order, make one stream,
cut to train_lm.token_budget tokens and split into batch_size parallel strands, read with
truncated BPTT of variable length (AWD-LSTM). Valid and test perplexity (of the best-on-valid
weights) go to metrics/train_lm.json, curves to dvclive/train_lm/, the model to models/lm.pt.

Every eval_every steps and at each epoch's end the full state (weights, optimizer, carried
hidden state, RNG) goes to models/train_lm.resume.pt; after an interruption train_lm.resume
carries on from it and ends with the same weights an uninterrupted run would have.

With --backward it is stage train_lm_backward: the same code and `train_lm` params on the
reviews reversed (each still <bos> ... <eos>, its words last to first), the backward model of
ULMFiT; outputs models/lm_backward.pt, metrics/train_lm_backward.json, dvclive/train_lm_backward/.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline import data, paths, training
from pipeline.common import Parser, PipelineError, run_main
from pipeline.data import BOS_ID, EOS_ID
from pipeline.model import LanguageModel
from pipeline.params import TrainLMParams, load_params
from pipeline.training import autocast

EVAL_SEED = 0  # valid/test order: fixed, so eval_tokens cuts the same reviews whatever train_lm.seed is


def time_log(stage: str) -> Path:
    """Wall-clock time never goes into a tracked output (a rerun would change its bytes): the
    perplexity-against-minutes curve is an untracked log beside the tracked curves."""
    return paths.LOGS / stage / "minutes.tsv"


def make_stream(seqs: list[np.ndarray], seed: int, max_tokens: int = 0, reverse: bool = False) -> np.ndarray:
    """Reviews in a seeded order, each as <bos> ids <eos>, concatenated; cut to max_tokens (0 = all).
    reverse: each review's ids last to first (the backward LM); the order of the reviews is the same."""
    order = np.random.default_rng(seed).permutation(len(seqs))
    bos, eos = np.array([BOS_ID]), np.array([EOS_ID])
    parts = []
    total = 0
    for i in order:
        parts += [bos, seqs[i][::-1] if reverse else seqs[i], eos]
        total += len(seqs[i]) + 2
        if max_tokens and total > max_tokens:  # one extra token: the last target
            break
    stream = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    return stream[: max_tokens + 1] if max_tokens else stream


def batchify(stream: np.ndarray, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, n) inputs and next-token targets: strand b is a contiguous piece of the stream."""
    n = (len(stream) - 1) // batch_size
    if n < 1:
        raise PipelineError(f"{len(stream)} tokens are too few for batch size {batch_size}: raise the token budget")
    x = torch.from_numpy(stream[: batch_size * n].reshape(batch_size, n))
    y = torch.from_numpy(stream[1 : batch_size * n + 1].reshape(batch_size, n))
    return x, y


def bptt_schedule(n: int, bptt: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(start, length) windows covering 0..n: length ~ N(bptt, 5) with p=0.95, else N(bptt/2, 5); at least 5."""
    out, i = [], 0
    while i < n:
        base = bptt if rng.random() < 0.95 else bptt / 2
        length = min(max(5, int(rng.normal(base, 5))), n - i)
        out.append((i, length))
        i += length
    return out


def detach(state):
    return [tuple(t.detach() for t in s) for s in state] if state is not None else None


@torch.no_grad()
def nll(model: LanguageModel, stream: np.ndarray, batch_size: int, bptt: int, device: torch.device,
        precision: str = "auto") -> tuple[float, int]:
    """Summed negative log-likelihood of the stream's tokens (except <bos>) and their count."""
    model.eval()
    x, y = batchify(stream, batch_size)
    total, count, state = 0.0, 0, None
    for i in range(0, x.size(1), bptt):
        with autocast(device, precision):
            features, state = model(x[:, i : i + bptt].to(device), state)
            loss, k = model.loss(features, y[:, i : i + bptt].to(device))
        total += float(loss)
        count += k
    return total, count


def perplexity(total: float, count: int) -> float:
    return math.exp(total / max(count, 1))


def build_lm(params: TrainLMParams, vocab_size: int) -> LanguageModel:
    torch.manual_seed(params.seed)
    cutoffs = list(params.cutoffs)
    if not cutoffs or cutoffs != sorted(set(cutoffs)) or cutoffs[0] <= 0:
        raise PipelineError(f"train_lm.cutoffs must be increasing positive numbers, got {cutoffs}")
    if cutoffs[0] >= vocab_size:
        raise PipelineError(f"train_lm.cutoffs must start below the vocabulary size ({vocab_size}), got {cutoffs}")
    return LanguageModel(vocab_size, params.embed_dim, params.hidden, params.layers, cutoffs, params.dropout_emb,
                         params.dropout_in, params.dropout_hidden, params.dropout_out, params.weight_drop)


def fit_lm(params: TrainLMParams, vocab_size: int, train: np.ndarray, valid: np.ndarray, device: torch.device,
           resume_path: Path | None = None, log: Callable[[dict], None] | None = None) -> dict:
    """Train on the `train` stream, checking perplexity on `valid`; returns the best weights, history, counters.

    With `resume_path`, the whole state is saved there every eval_every steps and at each
    epoch's end, and picked up again if it matches these params.
    """
    x, y = batchify(train, params.batch_size)
    schedules = [bptt_schedule(x.size(1), params.bptt, np.random.default_rng([params.seed, e])) for e in range(params.epochs)]
    total_steps = sum(len(s) for s in schedules)
    lr_at = training.lr_lambda(params.lr_schedule, params.warmup, total_steps)

    model = build_lm(params, vocab_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    scaler = training.grad_scaler(device, params.precision)

    sig = training.signature(params, vocab_size=vocab_size, n_train=len(train), data=training.data_digest(train, valid))
    resume = training.Resume(resume_path, sig, "train_lm")
    state = resume.restore(device, log, model=model, optimizer=optimizer)
    if state is not None:
        print(f"train_lm: resuming at epoch {state['epoch'] + 1}, step {state['step']} from {resume_path}")
    else:
        state = {"epoch": 0, "step": 0, "global_step": 0, "hidden": None, "rng": None, "loss_sum": 0.0, "loss_count": 0,
                 "best": None, "best_ppl": float("inf"), "best_step": 0, "history": [], "seconds": 0.0}
    resumed_at = state["global_step"]

    def elapsed() -> float:
        return state["seconds"] + time.perf_counter() - t0

    def check(epoch: float) -> None:
        """Valid perplexity: a history row, and the best weights so far."""
        va_total, va_count = nll(model, valid, params.eval_batch_size, params.bptt, device, params.precision)
        row = {"step": state["global_step"], "epoch": round(epoch, 4),
               "train_ppl": perplexity(state["loss_sum"], state["loss_count"]),
               "valid_ppl": perplexity(va_total, va_count), "minutes": elapsed() / 60}
        state["loss_sum"], state["loss_count"] = 0.0, 0
        state["history"].append(row)
        if row["valid_ppl"] < state["best_ppl"]:
            state.update(best_ppl=row["valid_ppl"], best=copy.deepcopy(model.state_dict()), best_step=row["step"])
        print(f"step {row['step']} (epoch {row['epoch']:.2f}): train ppl {row['train_ppl']:.1f} | "
              f"valid ppl {row['valid_ppl']:.1f} | {row['minutes']:.1f} min")
        if log:
            log(row)

    def save() -> None:
        resume.save(model=model.state_dict(), optimizer=optimizer.state_dict(), state={**state, "seconds": elapsed()})

    tokens = 0
    t0 = time.perf_counter()
    while state["epoch"] < params.epochs:
        epoch, schedule = state["epoch"], schedules[state["epoch"]]
        if state["step"] == 0:  # a fresh epoch; a resumed one restores the RNG it stopped with
            torch.manual_seed(params.seed * 1000 + epoch)
        else:
            training.set_rng_state(state["rng"], device)
        hidden = None if state["hidden"] is None else [tuple(t.to(device) for t in s) for s in state["hidden"]]
        while state["step"] < len(schedule):
            start, length = schedule[state["step"]]
            model.train()
            lr = params.lr * lr_at(state["global_step"]) * length / params.bptt  # longer windows, larger steps
            for g in optimizer.param_groups:
                g["lr"] = lr
            with autocast(device, params.precision):
                features, hidden = model(x[:, start : start + length].to(device, non_blocking=True), hidden)
                loss, count = model.loss(features, y[:, start : start + length].to(device, non_blocking=True))
            hidden = detach(hidden)
            training.step(loss / max(count, 1), optimizer, model.parameters(), params.clip, scaler)
            state["loss_sum"] += loss.item()
            state["loss_count"] += count
            tokens += length * params.batch_size
            state["step"] += 1
            state["global_step"] += 1
            if params.eval_every and state["step"] % params.eval_every == 0 and state["step"] < len(schedule):
                check(epoch + state["step"] / len(schedule))
                state["hidden"], state["rng"] = hidden, training.rng_state(device)
                save()
        check(epoch + 1)
        state.update(epoch=epoch + 1, step=0, hidden=None, rng=None)
        save()
    seconds = state["seconds"] + time.perf_counter() - t0
    return {**state, "model": model, "tokens": tokens, "seconds": seconds, "resumed_at": resumed_at}


def load_streams(params: TrainLMParams, reverse: bool = False) -> dict[str, np.ndarray]:
    """train = train + unsup reviews (seeded order, cut to the token budget); valid, test (cut to eval_tokens)."""
    unsup = paths.VOCAB / "unsup.parquet"
    if not unsup.is_file():
        raise PipelineError(f"{unsup} not found: the language model needs the unlabelled reviews "
                            "(set tokenize.unsup: true and vocab.use_unsup: true, then dvc repro vocab)")
    train = data.load_split(paths.VOCAB / "train.parquet")[0] + data.load_split(unsup)[0]
    return {
        "train": make_stream(train, params.seed, params.token_budget, reverse),
        "valid": make_stream(data.load_split(paths.VOCAB / "valid.parquet")[0], EVAL_SEED, params.eval_tokens, reverse),
        "test": make_stream(data.load_split(paths.VOCAB / "test.parquet")[0], EVAL_SEED, params.eval_tokens, reverse),
    }


def curve_metrics(row: dict) -> dict:
    return {"train/ppl": round(row["train_ppl"], 4), "valid/ppl": round(row["valid_ppl"], 4)}


def main(argv: list[str] | None = None) -> None:
    ap = Parser(prog="python -m pipeline.train_lm", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--backward", action="store_true", help="stage train_lm_backward: every review reversed, own outputs")
    args = ap.parse_args(argv)
    out = paths.TRAIN_LM_BACKWARD if args.backward else paths.TRAIN_LM
    sections = load_params("train_lm", "tokenize")  # tokenize.lowercase: recorded for generate's prompts
    params: TrainLMParams = sections["train_lm"]
    threads, device = training.setup(params, "train_lm")
    itos = data.read_vocab(paths.VOCAB_FILE)
    streams = load_streams(params, args.backward)
    print(f"{out.stage}: {len(streams['train']) - 1:,} training tokens, {len(itos):,}-word vocabulary, {device}")

    times_path = time_log(out.stage)
    times_path.parent.mkdir(parents=True, exist_ok=True)
    with training.curves(out.live, curve_metrics) as live_log, open(times_path, "w", encoding="utf-8") as times:
        times.write("step\tminutes\tvalid_ppl\n")

        def log(row):
            live_log(row)
            times.write(f"{row['step']}\t{row['minutes']:.3f}\t{row['valid_ppl']:.4f}\n")
            times.flush()

        result = fit_lm(params, len(itos), streams["train"], streams["valid"], device,
                        out.resume if params.resume else None, log)

    model = result["model"]
    model.load_state_dict(result["best"])
    va = nll(model, streams["valid"], params.eval_batch_size, params.bptt, device)
    te = nll(model, streams["test"], params.eval_batch_size, params.bptt, device)
    extra = {"itos": itos, "lowercase": sections["tokenize"].lowercase, **({"reverse": True} if args.backward else {})}
    training.finish(out, model, result["best"], extra, {
        "valid_ppl": round(perplexity(*va), 4),
        "test_ppl": round(perplexity(*te), 4),
        "valid_tokens": va[1],
        "test_tokens": te[1],
        "train_tokens": len(streams["train"]) - 1,
        "best_step": result["best_step"],
        "steps": result["global_step"],
        "vocab_size": len(itos),
    }, threads, result, device, f"valid ppl {perplexity(*va):.1f}, test ppl {perplexity(*te):.1f}")

if __name__ == "__main__":
    run_main(main)
