"""Small helpers every stage shares: the project error, atomic outputs, progress, torch threads."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator



class PipelineError(Exception):
    """A problem the user can fix (bad input, bad params): shown as one line, no traceback."""


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(); turn PipelineError into one line on stderr and exit 1."""
    # Under `dvc repro` stdout is a pipe: flush each line so progress shows as it happens.
    sys.stdout.reconfigure(line_buffering=True)
    try:
        main()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; outputs get the usual mode
    return Path(tmp)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; swap it in for `path` only if the block succeeds.

    A failed stage leaves the previous output (or none), never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only; outputs get the usual mode
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON with a fixed layout so identical metrics give identical bytes."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def quiet() -> bool:
    """Progress bars only for a person at a terminal: not in CI, not in logs."""
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


def progress(iterable: Iterable | None = None, **kwargs):
    from tqdm import tqdm

    kwargs.setdefault("disable", quiet())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def torch_threads(threads: int, share: int = 1) -> int:
    """Fix torch's thread count (0 = this process's share of the cores) and its deterministic
    kernels; return the count, which a stage records with its outputs: on CPU it can change the
    last bits of a sum, so it belongs to what a rerun must match."""
    import torch

    n = threads or max(1, cpu_count() // share)
    torch.set_num_threads(n)
    torch.use_deterministic_algorithms(True)
    return n


def save_torch(obj, path: str | os.PathLike) -> None:
    """torch.save, atomically and reproducibly.

    Saved by file name, torch names the zip's inner folder after the file, here a random
    temporary name, so identical weights would give different bytes. Through a file handle
    the folder is always "archive".
    """
    import torch

    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
