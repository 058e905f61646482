"""Run by test_ddp.py under `torchrun --standalone --nproc_per_node=2`: fit() on toy data with DDP.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_DIR

Trains once straight through, once interrupted after epoch 1 and resumed (rank 0 saves the
resume file, every rank loads it). Each rank writes OUT_DIR/rank<r>.json (its share of the
work); rank 0 also writes OUT_DIR/result.pt (histories and best weights of both runs).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pipeline import distributed
from pipeline.train import fit
from toys import Interrupt, toy_data, toy_params  # this folder is sys.path[0]


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    device = distributed.init(torch.device("cpu"))
    assert distributed.world() == 2, distributed.world()
    params = toy_params()
    train, valid = toy_data(593, 0), toy_data(100, 1)  # 593 = 37 * 16 + 1: rank 1 gets no review of the last batch

    full = fit(params, 40, train, valid, device, out / "a.pt")

    def stop_in_epoch_2(row):
        if row["epoch"] == 2:
            raise Interrupt

    try:
        fit(params, 40, train, valid, device, out / "b.pt", log=stop_in_epoch_2)
        raise AssertionError("not interrupted")
    except Interrupt:
        pass
    resumed = fit(params, 40, train, valid, device, out / "b.pt")

    r = distributed.rank()
    (out / f"rank{r}.json").write_text(json.dumps({"rank": r, "world": distributed.world(), **distributed.counts}))
    if distributed.is_main():
        torch.save({"full": full["history"], "resumed": resumed["history"], "resumed_at": resumed["resumed_at"],
                    "best_full": full["best"], "best_resumed": resumed["best"]}, out / "result.pt")


if __name__ == "__main__":
    main()
