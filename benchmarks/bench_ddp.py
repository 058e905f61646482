"""Training throughput with DistributedDataParallel on CPU (gloo): 1 process against 2.

    python benchmarks/bench_ddp.py                      # data/vocab/train.parquet, params.yaml's train section
    python benchmarks/bench_ddp.py --batches 20 --rounds 3

Times the project's own training step (pipeline.train.run_epoch: forward + backward + DDP
all-reduce + optimizer step) on the same global length-bucketed batches of train.batch_size,
in three set-ups: 1 process x 1 thread, 2 processes (torchrun, gloo) x 1 thread each, and
1 process x 2 threads for context. With 2 processes each rank runs half of every global batch,
so all three do the same math. tokens/s counts real (unpadded) tokens of all ranks together.
Set-ups alternate round by round, so drifting machine load hits them alike; the best round
counts. Prints one JSON object per line: one per run, then the summary with the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from the project root: `pipeline` is the project's
SETUPS = [("1proc_1thread", 1, 1), ("2proc_1thread", 2, 1), ("1proc_2threads", 1, 2)]


def worker(args) -> None:
    """One set-up's measurement; under torchrun when 2 processes. Rank 0 prints one JSON line."""
    import numpy as np
    import torch

    from pipeline import data, distributed
    from pipeline.params import load_params
    from pipeline.train import build_model, run_epoch

    p = load_params("train")["train"]
    torch.set_num_threads(args.threads)
    device = distributed.init(torch.device("cpu"))
    seqs, labels, _ = data.load_split(args.data)
    seqs = [data.truncate(s, p.max_len, p.head_fraction) for s in seqs]
    lengths = np.array([len(s) for s in seqs])
    batches = data.bucket_batches(lengths, p.batch_size, np.random.default_rng(p.seed))
    warm, timed = batches[:3], batches[3 : 3 + args.batches]
    vocab = int(max(int(s.max()) for s in seqs if len(s)) + 1)

    model = build_model(p, vocab, None).to(device)
    net = distributed.wrap(model, device)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    run_epoch(net, seqs, labels, warm, device, opt, sched, p.clip)  # warm-up: oneDNN primitives; ends in a sync
    t0 = time.perf_counter()
    _, _, tokens = run_epoch(net, seqs, labels, timed, device, opt, sched, p.clip)  # ends with an all-reduce
    seconds = time.perf_counter() - t0
    if distributed.is_main():
        print(json.dumps({"tokens": int(tokens), "seconds": seconds, "world": distributed.world(),
                          "threads": torch.get_num_threads(), "batches": len(timed),
                          "padded_fraction": round(data.padded_fraction(lengths, timed), 4)}), flush=True)


def measure(nproc: int, threads: int, args) -> dict:
    me = [str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--batches", str(args.batches),
          "--data", str(args.data)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *me]
    else:
        cmd = [sys.executable, *me]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-4000:]}")
    return json.loads([line for line in p.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/vocab/train.parquet"))
    ap.add_argument("--batches", type=int, default=12, help="global batches timed per run (after 3 warm-up ones)")
    ap.add_argument("--rounds", type=int, default=2, help="alternate the set-ups this many times")
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.data.is_file():
        sys.exit(f"{args.data} not found (run `dvc repro vocab` first)")

    from pipeline.params import load_params

    p = load_params("train")["train"]
    best: dict[str, float] = {}
    for r in range(args.rounds):
        for name, nproc, threads in SETUPS:
            m = measure(nproc, threads, args)
            rate = m["tokens"] / m["seconds"]
            best[name] = max(best.get(name, 0.0), rate)
            print(json.dumps({"benchmark": "ddp_run", "round": r + 1, "setup": name, "processes": nproc,
                              "threads_per_process": threads, "tokens_per_s": round(rate)}), flush=True)
    print(json.dumps({
        "benchmark": "ddp_throughput", "data": str(args.data), "batches": m["batches"], "rounds": args.rounds,
        "batch_size": p.batch_size, "embed_dim": p.embed_dim, "hidden": p.hidden, "layers": p.layers,
        "bidirectional": p.bidirectional, "max_len": p.max_len, "padded_fraction": m["padded_fraction"],
        **{f"{k}_tokens_per_s": round(v) for k, v in best.items()},
        "ratio_2proc_vs_1proc": round(best["2proc_1thread"] / best["1proc_1thread"], 3),
        "ratio_2threads_vs_1proc": round(best["1proc_2threads"] / best["1proc_1thread"], 3),
    }), flush=True)


if __name__ == "__main__":
    main()
