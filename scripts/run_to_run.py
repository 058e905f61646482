"""Is one training step bit-for-bit the same every time, in one process? The search for a rare drift.

Builds the classifier of params.yaml's `train` section with its seed, one padded batch of
random token ids (seeded), and runs forward + backward on the same weights and batch N times,
hashing the loss and every gradient each time. Prints one JSON line: how many distinct hashes
the N repeats gave (1 = run-to-run deterministic at this thread count), per thread count.

    python scripts/run_to_run.py --repeats 300 --threads 1 2
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.params import load_params  # noqa: E402
from pipeline.train import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--length", type=int, default=400)
    ap.add_argument("--vocab", type=int, default=20_000)
    args = ap.parse_args()

    params = load_params("train")["train"]
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(0)
    lengths = torch.from_numpy(np.sort(rng.integers(args.length // 2, args.length + 1, args.batch))[::-1].copy())
    ids = torch.from_numpy(rng.integers(4, args.vocab, (args.batch, args.length)))
    ids[torch.arange(args.length).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    y = torch.from_numpy(rng.integers(0, 2, args.batch).astype(np.float32))
    for threads in args.threads:
        torch.set_num_threads(threads)
        model = build_model(params, args.vocab, None)
        model.train()
        seen = collections.Counter()
        for _ in range(args.repeats):
            torch.manual_seed(1)  # the same dropout masks every time
            model.zero_grad(set_to_none=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids, lengths), y)
            loss.backward()
            h = hashlib.md5(loss.detach().numpy().tobytes())
            for p in model.parameters():
                h.update(p.grad.numpy().tobytes())
            seen[h.hexdigest()] += 1
        print(json.dumps({"threads": threads, "repeats": args.repeats, "distinct": len(seen),
                          "counts": sorted(seen.values(), reverse=True)}), flush=True)


if __name__ == "__main__":
    main()
