"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

    python -m pipeline.train                                  # train.nproc > 1: re-launches itself under torchrun
    torchrun --standalone --nproc_per_node=2 -m pipeline.train  # or launch it yourself (multi-node: torchrun's args)

Sharding: `train.batch_size` is the *global* batch. Every rank draws the same global list of
length-bucketed batches (same seed) and takes every world-th review of each batch (`shard`).
Each rank's loss is weighted so that DDP's gradient average equals the mean over the whole
global batch: the optimizer sees the gradient a 1-process run would, up to float reduction
order, and the number of steps per epoch does not depend on the world size. A batch is sorted
by length, so a strided share gives every rank the same amount of work.

Outside torchrun (no WORLD_SIZE in the environment) every helper is a no-op for one process,
so fit() and run_epoch() work unchanged in tests and benchmarks.
"""
from __future__ import annotations

import atexit
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from pipeline.common import PipelineError

# Per-rank evidence: this rank's share of the work (train = batches with gradients).
counts = {"train_batches": 0, "train_reviews": 0, "valid_batches": 0, "valid_reviews": 0}


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def local_world() -> int:
    """Processes on this machine (they share its cores)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def relaunch(nproc: int, module: str) -> None:
    """With nproc > 1 and not yet under torchrun, replace this process by torchrun running `module`.

    The DVC stage command stays `python -m pipeline.train`; `dvc exp run -S train.nproc=2` is all
    it takes. Under torchrun already (e.g. multi-node), torchrun's own arguments win.
    """
    if nproc <= 1 or under_torchrun():
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, *sys.argv[1:]]
    print(f"{module.rsplit('.', 1)[-1]}: {nproc} processes: {' '.join(cmd[1:])}", flush=True)
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def init(device: torch.device) -> torch.device:
    """Join the process group when under torchrun; return this rank's device.

    gloo on CPU, nccl on CUDA (one GPU per local rank). Ranks other than 0 print nothing on
    stdout: their epoch lines would repeat rank 0's, since metrics are all-reduced.
    """
    if not under_torchrun() or active():
        return device
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise PipelineError(f"{local_world()} processes on this machine but {torch.cuda.device_count()} GPUs: "
                                "run one process per GPU (train.nproc, or torchrun's --nproc_per_node)")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    dist.init_process_group(backend(device))
    atexit.register(teardown)
    if not is_main():
        sys.stdout = open(os.devnull, "w")
    return device


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` when distributed, else `model` itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(batch: np.ndarray) -> tuple[np.ndarray, float]:
    """This rank's reviews of a global batch and the weight of their summed loss.

    sum over ranks of (weight * this rank's summed loss), averaged by DDP over `world` ranks,
    is the mean loss of the global batch. A rank left without reviews (a last batch smaller
    than the world) still runs one review with weight 0, so every rank joins every all-reduce.
    """
    n, w = len(batch), world()
    mine = batch[rank() :: w]
    split = "train" if torch.is_grad_enabled() else "valid"
    if len(mine) == 0:
        return batch[:1], 0.0
    counts[f"{split}_batches"] += 1
    counts[f"{split}_reviews"] += len(mine)
    return mine, w / n


def _device() -> torch.device:
    """Where collectives want their tensors: the current GPU for nccl, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(*values: float) -> list[float]:
    """Sums over ranks (float64); the values themselves for one process."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return [type(v)(x) for v, x in zip(values, t.tolist())]


def check_agree(value: int, what: str) -> None:
    """Stop if ranks disagree, e.g. on the epoch they resume from (a resume file not on every node)."""
    if not active():
        return
    t = torch.tensor([value, -value], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    hi, lo = t[0].item(), -t[1].item()
    if hi != lo:
        raise PipelineError(f"ranks disagree on {what} ({lo:g} to {hi:g}): models/ must be on a filesystem every node shares")


def report(stage: str) -> None:
    """One line per rank on stderr: which rank this is and its share of the work, summed over the epochs run."""
    how = dist.get_backend() if active() else "single process"
    print(f"{stage}: rank {rank()}/{world()} (local rank {local_rank()}, {how}), all epochs: "
          f"{counts['train_batches']} train batches, {counts['train_reviews']} train reviews, "
          f"{counts['valid_batches']} valid batches", file=sys.stderr, flush=True)
