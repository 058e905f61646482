"""What the two trainers (classifier: pipeline.train, language model: pipeline.train_lm) share:
device and threads, mixed precision, the optimizer step, the lr schedule, resume files, curves.

Each trainer keeps only its own loop shape (epochs of batches; BPTT windows of one stream).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from pipeline import paths
from pipeline.common import PipelineError, atomic_dir, save_torch, torch_threads, write_json

# Params that do not change the math: a resume file made with other values of these still fits.
RUN_SETTINGS = ("resume", "threads", "device", "nproc")


def setup(params, section: str, share: int = 1) -> tuple[int, torch.device]:
    """Fix the thread count (recorded with the outputs) and pick the device of `section`'s params."""
    threads = torch_threads(params.threads, share)
    if params.device == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"{section}.device is cuda but no CUDA device is available")
    use_cuda = params.device in ("auto", "cuda") and torch.cuda.is_available()
    if not use_cuda and params.precision in ("auto", "fp32"):  # bf16: +5% speed for 2.6x the peak RSS; not kept
        keep_freed_memory()
    return threads, torch.device("cuda" if use_cuda else "cpu")


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep what a training step frees, for the next step to reuse.

    By default every buffer over the mmap threshold (128 KiB, rising to 32 MiB at most) is mapped
    fresh and unmapped on free, so each step page-faults its LSTM workspaces and activations in
    again, zeroed by the kernel. One full-data fp32 epoch of the classifier: 35.3M minor faults,
    34.0k tokens/s, peak RSS 2.3 GB by default; 0.7M faults, 44.6k tokens/s, 3.1 GB with the heap
    kept (docs/benchmarks.md). Under bf16 autocast the same setting gave +5% for 5.8 GB against
    2.2 GB, so setup() makes it for fp32 on the CPU only. A kept heap fragments, so trim_kept_heap
    gives its free pages back every TRIM_EVERY steps. Set GLIBC_TUNABLES to choose for yourself;
    returns whether the setting was made (glibc only)."""
    if not sys.platform.startswith("linux") or os.environ.get("GLIBC_TUNABLES"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    kept = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
    if kept:
        _kept_heap["trim"] = ctypes.CDLL(None).malloc_trim
    return kept


# A kept heap fragments: each new padded length asks for buffers a little larger than any free hole,
# so the heap grows at its top while small long-lived objects (oneDNN's primitive for that length)
# pin the holes below. Unchecked, the LM-initialised classifier (1x512) held 8.1 GB after 150
# batches and was killed by the OOM killer at 23 GB, a third into its first epoch; glibc's own
# malloc stays under 3.7 GB. Every TRIM_EVERY steps, malloc_trim(0) gives the free holes' pages
# back: 5.5 GB, and 1.17x glibc's own speed where the untrimmed heap gave 1.33x (docs/benchmarks.md).
TRIM_EVERY = 20
_kept_heap = {"trim": None, "steps": 0}


def trim_kept_heap() -> None:
    """Call after each optimizer step: every TRIM_EVERY steps, a kept heap gives its free pages back."""
    if _kept_heap["trim"] is None:
        return
    _kept_heap["steps"] += 1
    if _kept_heap["steps"] % TRIM_EVERY == 0:
        _kept_heap["trim"](0)


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision of the forward pass. auto: bf16 on CUDA where supported, else fp16 (with a
    grad scaler); fp32 on CPU. bf16: bf16 autocast on either. fp32: off."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if device.type == "cuda":
        dtype = torch.bfloat16 if precision == "bf16" or torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def grad_scaler(device: torch.device, precision: str = "auto") -> torch.amp.GradScaler | None:
    """fp16 needs its loss scaled so small gradients survive; bf16 and fp32 do not."""
    if device.type == "cuda" and precision == "auto" and not torch.cuda.is_bf16_supported():
        return torch.amp.GradScaler("cuda")
    return None


def step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters, clip: float,
         scaler: torch.amp.GradScaler | None) -> None:
    """Backward, optional gradient-norm clipping, optimizer step (then trim_kept_heap)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip > 0:
        nn.utils.clip_grad_norm_(parameters, clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    trim_kept_heap()


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


def signature(params, **extra) -> dict:
    """What a resume file must match (same params, data digest and shape), or it is ignored."""
    sig = {k: v for k, v in dataclasses.asdict(params).items() if k not in RUN_SETTINGS}
    return {**sig, **extra}


def data_digest(*parts) -> str:
    """sha256 of what a run learns from: arrays, or lists of arrays, in order (None: skipped).

    The resume file is not a DVC output, so it outlives a change upstream: other tokens or another
    vocabulary of the same size, resumed into, would give a model no fresh run reproduces.
    """
    h = hashlib.sha256()
    for part in parts:
        if part is None:
            continue
        arrays = part if isinstance(part, (list, tuple)) else [part]
        h.update(f"{len(arrays)};".encode())
        for a in arrays:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape};".encode())
            h.update(a.data)
    return h.hexdigest()


class Resume:
    """A training run's state after its last finished unit of work, to carry on from after a kill.

    Saved atomically; loaded only when its signature matches this run's params and data.
    """

    def __init__(self, path: Path | None, sig: dict, stage: str):
        self.path, self.sig, self.stage = path, sig, stage

    def load(self, device: torch.device) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        saved = torch.load(self.path, map_location=device, weights_only=True)
        if saved.get("signature") != self.sig:
            print(f"{self.stage}: ignoring {self.path}, it was made with other params or data")
            return None
        return saved

    def restore(self, device: torch.device, log: Callable[[dict], None] | None, **parts) -> dict | None:
        """Load a matching resume file into `parts` (name -> module/optimizer/scheduler) and log its
        history again (the curves restart with it: no step logged twice); its state, or None."""
        saved = self.load(device)
        if saved is None:
            return None
        for name, part in parts.items():
            part.load_state_dict(saved[name])
        for row in saved["state"]["history"] if log else []:
            log(row)
        return saved["state"]

    def save(self, **parts) -> None:
        if self.path is not None:
            save_torch({"signature": self.sig, **parts}, self.path)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def finish(out: paths.Trained, model: nn.Module, best: dict, checkpoint: dict, metrics: dict, threads: int,
           result: dict, device: torch.device, summary: str) -> None:
    """Write the best weights with `checkpoint`'s extras and the metrics, both with the thread count
    (with the CPU type, what the bytes of a rerun depend on); drop the resume file; one line."""
    save_torch({"config": model.config, "state_dict": {k: v.cpu() for k, v in best.items()}, **checkpoint,
                "threads": threads}, out.model)
    out.resume.unlink(missing_ok=True)
    write_json(out.metrics, {**metrics, "parameters": sum(p.numel() for p in model.parameters()), "threads": threads})
    rate = result["tokens"] / max(result["seconds"], 1e-9)
    print(f"{out.stage}: {summary} ({result['seconds'] / 60:.1f} min, {rate:,.0f} train tokens/s, {device})")


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class Curves:
    """dvclive curves of one run, tracked at `out` (e.g. dvclive/train).

    While the run goes on they are written under logs/ (untracked, to watch); they replace `out`
    only when the run ends well, so a killed or failed run leaves the last run's curves beside
    the last run's model. A resumed run logs its saved history again first: the curves of an
    interrupted-and-resumed run are those of an uninterrupted one, each step once.
    """

    def __init__(self, out: Path, metrics: Callable[[dict], dict]):
        self.out, self.metrics = Path(out), metrics
        self.staging = paths.LOGS / self.out
        self.live = None

    def __enter__(self) -> "Curves":
        from dvclive import Live

        shutil.rmtree(self.staging, ignore_errors=True)
        self.live = Live(str(self.staging), dvcyaml=None, save_dvc_exp=False, resume=False)
        self.live.__enter__()
        return self

    def log(self, row: dict) -> None:
        for name, value in self.metrics(row).items():
            self.live.log_metric(name, value)
        self.live.next_step()

    def __exit__(self, kind, value, tb) -> None:
        self.live.__exit__(kind, value, tb)
        if kind is None:
            with atomic_dir(self.out) as tmp:
                shutil.copytree(self.staging, tmp, dirs_exist_ok=True)
            shutil.rmtree(self.staging, ignore_errors=True)


@contextlib.contextmanager
def curves(out: Path, metrics: Callable[[dict], dict], enabled: bool = True) -> Iterator[Callable[[dict], None] | None]:
    """Curves(out, metrics) as a context giving its log function; nothing (None) where disabled
    (ranks other than 0 under torchrun: all ranks hold the same all-reduced numbers)."""
    if not enabled:
        yield None
        return
    with Curves(out, metrics) as c:
        yield c.log
