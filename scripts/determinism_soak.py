"""Does the same training step give the same bits every time, within one process? Repeat it and count.

Builds the sample's classifier (params.yaml `train`: bi-LSTM, random weights from the seed), draws a
few fixed batches of random ids with spread lengths, and runs forward + backward on them over and
over with the same dropout seed, hashing the loss and every gradient. The first pass is the
reference; every later pass must match it. No optimizer step, so the weights never move and any
mismatch is the kernels' (or the machine's), not the chaos of training. The heap is kept and
trimmed as a training stage keeps it. `--hog N` runs N CPU-bound processes beside it, so threads are
descheduled and woken at random moments, as in a busy `dvc repro`.

    python scripts/determinism_soak.py --steps 3000              # idle
    python scripts/determinism_soak.py --steps 3000 --hog 1      # beside a CPU-bound process
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import training  # noqa: E402  (first: pipeline/__init__ sets OpenMP and MKL up before torch loads)
from pipeline.common import torch_threads  # noqa: E402
from pipeline.model import Classifier  # noqa: E402
from pipeline.params import load_params  # noqa: E402

import torch  # noqa: E402


def hog() -> None:
    while True:
        pass


def digest(loss: torch.Tensor, model: torch.nn.Module) -> str:
    h = hashlib.md5(loss.detach().numpy().tobytes())
    for p in model.parameters():
        h.update(p.grad.numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="forward + backward passes in all")
    ap.add_argument("--batches", type=int, default=8, help="distinct fixed batches, cycled")
    ap.add_argument("--vocab", type=int, default=20000)
    ap.add_argument("--hog", type=int, default=0, help="CPU-bound processes to run beside")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    ap.add_argument("--max-len", type=int, default=None, help="longest batch (default: train.max_len)")
    ap.add_argument("--batch-size", type=int, default=None, help="reviews per batch (default: train.batch_size)")
    args = ap.parse_args()

    params = load_params("train", path=Path(__file__).resolve().parents[1] / "params.yaml")["train"]
    max_len, batch_size = args.max_len or params.max_len, args.batch_size or params.batch_size
    threads = torch_threads(args.threads)
    kept = training.keep_freed_memory()
    torch.manual_seed(params.seed)
    model = Classifier(args.vocab, params.embed_dim, params.hidden, params.layers, params.bidirectional,
                       params.dropout, pooling=params.pooling)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.batches):
        n = int(torch.randint(50, max_len + 1, (1,), generator=gen))
        lengths = torch.randint(max(1, n // 2), n + 1, (batch_size,), generator=gen)
        lengths[0] = n
        ids = torch.randint(1, args.vocab, (batch_size, n), generator=gen)
        ids[torch.arange(n).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
        batches.append((ids, lengths, torch.randint(0, 2, (batch_size,), generator=gen).float()))

    hogs = [multiprocessing.Process(target=hog, daemon=True) for _ in range(args.hog)]
    for p in hogs:
        p.start()
    reference: dict[int, str] = {}
    mismatches: list[dict] = []
    start = time.perf_counter()
    try:
        for step in range(args.steps):
            b = step % len(batches)
            ids, lengths, y = batches[b]
            torch.manual_seed(1000 + b)  # the same dropout masks each time this batch comes round
            model.zero_grad(set_to_none=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids, lengths), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # the norm's reduction, no change
            training.trim_kept_heap()
            d = digest(loss, model)
            if b not in reference:
                reference[b] = d
            elif d != reference[b]:
                mismatches.append({"step": step, "batch": b, "seconds": round(time.perf_counter() - start, 1)})
    finally:
        for p in hogs:
            p.terminate()
    print(json.dumps({
        "steps": args.steps, "batches": args.batches, "threads": threads, "hog": args.hog, "kept_heap": kept,
        "max_len": max_len, "batch_size": batch_size,
        # the same in every process, or the bits depend on something outside the step
        "reference": hashlib.md5("".join(reference[b] for b in sorted(reference)).encode()).hexdigest(),
        "mismatches": len(mismatches), "first_mismatches": mismatches[:10],
        "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
        "omp": {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "MKL_CBWR")},
        "load": os.getloadavg(),
    }), flush=True)


if __name__ == "__main__":
    main()
