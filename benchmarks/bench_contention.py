"""Two trainings at once, as `dvc queue start -j 2` runs them: do they beat running one after the other?

For each setting (an environment for OpenMP, and torch threads per process), times the
classifier's training step (pipeline.train.run_epoch, the same batches) in one process alone,
then in two processes started together, and reports each one's tokens/s against the solo run.
Two at once are worth it when both finish before two solo runs back to back would: each at
>= 50% of its solo speed (45% is the floor the CPU-speed issue asks for).

    python -m benchmarks.bench_contention                       # data/vocab/train.parquet, train params
    python -m benchmarks.bench_contention --batches 30 --settings default passive

Run it on an idle machine: anything else running is a third process. One JSON line per setting.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# name -> (environment, torch threads per process; 0 = all cores, as train.threads: 0 gives)
# pipeline/__init__.py sets GOMP_SPINCOUNT=1000 unless the environment sets it or OMP_WAIT_POLICY.
SETTINGS = {
    "active": ({"OMP_WAIT_POLICY": "ACTIVE"}, 0),  # spin without end
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),  # sleep at once: the project's setting before spin1k
    "spin1k": ({"GOMP_SPINCOUNT": "1000"}, 0),  # spin 1,000 rounds, then sleep: the project's setting
    "spin10k": ({"GOMP_SPINCOUNT": "10000"}, 0),
    "spin100k": ({"GOMP_SPINCOUNT": "100000"}, 0),
    "one_thread": ({}, 1),
}


def worker(data: Path, batches: int, threads: int) -> None:
    """Time `batches` training batches (after 3 of warm-up); print tokens/s."""
    import numpy as np
    import torch

    from pipeline import data as D
    from pipeline.common import torch_threads
    from pipeline.params import load_params
    from pipeline.train import build_model, run_epoch
    from pipeline.training import lr_lambda

    p = load_params("train")["train"]
    n = torch_threads(threads)
    seqs, labels, _ = D.load_split(data)
    seqs = [D.truncate(s, p.max_len, p.head_fraction) for s in seqs]
    all_batches = D.bucket_batches(np.array([len(s) for s in seqs]), p.batch_size, np.random.default_rng(0))
    model = build_model(p, len(D.read_vocab(data.parent / "vocab.tsv")), None)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("constant", 0.0, 1))
    cpu = torch.device("cpu")
    run_epoch(model, seqs, labels, all_batches[:3], cpu, opt, sched)
    t0 = time.perf_counter()
    _, _, tokens = run_epoch(model, seqs, labels, all_batches[3 : 3 + batches], cpu, opt, sched)
    print(json.dumps({"tokens_per_s": tokens / (time.perf_counter() - t0), "threads": n}))


def launch(args, env: dict, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.bench_contention", "--worker", "--data", str(args.data),
           "--batches", str(args.batches), "--threads", str(threads)]
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return subprocess.Popen(cmd, env={**base, **env}, stdout=subprocess.PIPE, text=True)


def result(p: subprocess.Popen) -> dict:
    out, _ = p.communicate()
    if p.returncode:
        sys.exit(f"worker failed ({p.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/vocab/train.parquet"))
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.data, args.batches, args.threads)

    for name in args.settings:
        env, threads = SETTINGS[name]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        solo = result(launch(args, env, threads))
        solo_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pair = [launch(args, env, threads), launch(args, env, threads)]
        both = [result(p) for p in pair]
        pair_s = time.perf_counter() - t0
        print(json.dumps({
            "setting": name, "env": env, "threads": solo["threads"], "batches": args.batches,
            "solo_tokens_per_s": round(solo["tokens_per_s"]),
            "pair_tokens_per_s": [round(b["tokens_per_s"]) for b in both],
            "pair_fraction_of_solo": [round(b["tokens_per_s"] / solo["tokens_per_s"], 3) for b in both],
            "solo_wall_s": round(solo_s, 1), "pair_wall_s": round(pair_s, 1),
            "pair_beats_sequential": pair_s < 2 * solo_s,
            "load_before": round(load, 2),
        }), flush=True)


if __name__ == "__main__":
    main()
