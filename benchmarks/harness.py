"""What every throughput benchmark here needs so that it cannot fool itself: warm arms, interleaved
rounds, median and spread, and a record of the machine and its load beside the figures.
"""
from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Callable

import torch

from pipeline.training import keep_freed_memory


def machine(malloc: str = "kept") -> dict:
    """CPU, ISA extensions that pick kernels, thread and allocator settings and load: what a figure
    depends on. malloc "kept" sets glibc's malloc as the training stages do
    (pipeline.training.keep_freed_memory); "default" leaves it."""
    kept = malloc == "kept" and keep_freed_memory()
    model, flags = platform.processor(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
        "isa": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "caches": caches(),
        "torch_threads": torch.get_num_threads(), "malloc": "kept" if kept else "default",
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_CBWR", "MKL_DYNAMIC",
                                                "THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")},
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def caches() -> dict[str, str]:
    """Cache sizes as the OS reports them ({"L1d": "48K", "L2": "2048K", ...}). A VM that names its
    CPU only "Intel(R) Xeon(R) Processor" and shows the same flags on two days may still be another
    generation, and the full-data classifier's bits differed between two such days."""
    out = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((d / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        out[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = size
    return out


def interleave(arms: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each arm once per round, in A B B A ... order, so a drift in machine load (or a
    cache another arm warmed) falls on every arm alike. Each arm is expected to be warm already."""
    names = list(arms)
    figures: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else reversed(names):
            figures[n].append(arms[n]())
    return figures


def summary(values: list[float]) -> dict:
    """Median and the spread around it; one round alone is not a figure."""
    med = statistics.median(values)
    return {"median": round(med), "min": round(min(values)), "max": round(max(values)),
            "spread": round((max(values) - min(values)) / med, 3) if med else None, "rounds": len(values)}


def ratios(figures: dict[str, list[float]], base: str) -> dict[str, dict]:
    """Each arm against `base`: the ratio of medians, and the range of the per-round ratios (each
    round's two arms ran back to back, under the same load)."""
    out = {}
    for name, values in figures.items():
        if name == base:
            continue
        per_round = [a / b for a, b in zip(values, figures[base])]
        out[name] = {"of_medians": round(statistics.median(values) / statistics.median(figures[base]), 3),
                     "per_round_min": round(min(per_round), 3), "per_round_max": round(max(per_round), 3)}
    return out


def finish(record: dict, figures: dict[str, list[float]], base: str) -> dict:
    """The JSON line: the settings, each arm's summary, the ratios to `base`, the load after."""
    record = dict(record)
    record["tokens_per_s"] = {n: summary(v) for n, v in figures.items()}
    record["ratio_to_" + base] = ratios(figures, base)
    record["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return record
