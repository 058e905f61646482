"""Small helpers every stage shares: the project error, atomic outputs, progress, torch threads."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator



class PipelineError(Exception):
    """A problem the user can fix (bad input, bad params): shown as one line, no traceback."""


class Terminated(BaseException):
    """SIGTERM (a `kill`, `dvc queue kill`, a CI timeout), raised like Ctrl-C so cleanup runs."""


def _terminate(signum, frame):
    raise Terminated()


class Parser(argparse.ArgumentParser):
    """argparse for the CLIs, whose usage errors are one `error:` line like every other error."""

    def error(self, message: str):
        raise PipelineError(f"{self.prog}: {message} (see {self.prog} --help)")


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(); turn PipelineError into one line on stderr and exit 1.

    Temporaries a killed run left behind are removed first; SIGTERM is handled like Ctrl-C: the
    `finally` blocks of the atomic writers delete this run's temporaries, and one line says why.
    """
    # Under `dvc repro` stdout is a pipe: flush each line so progress shows as it happens.
    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if Path("dvc.yaml").is_file():  # in the project, not wherever a CLI happens to run
            sweep_stale()
        main()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("error: terminated (SIGTERM); outputs left as they were", file=sys.stderr)
        sys.exit(143)


# Where stages write. Temporaries are named .<output>.<pid>.<random>.tmp (or .old): the pid says
# whether the run that made one is still alive.
OUTPUT_ROOTS = ("data", "models", "metrics", "plots", "reports", "dvclive")
_STALE_PID = re.compile(r"^\..+?\.(\d+)\.[^.]+\.(?:tmp|old)$")
_STALE_ANY = re.compile(r"^\..+\.[^.]+\.(?:tmp|old)$")  # also those of versions before the pid


def _alive(pid: int, since: float) -> bool:
    """Whether process `pid` still runs and is the one that made a temporary at time `since`.

    A killed process whose parent died too stays a zombie until init reaps it, and its pid can
    be reused later: on Linux both count as dead (state Z/X, or started after the temporary).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] in ("Z", "X"):
            return False
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        started = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return started <= since + 1  # btime has a one-second resolution
    except (OSError, ValueError, IndexError, StopIteration):  # not Linux, or gone meanwhile
        return True


def sweep_stale(roots=OUTPUT_ROOTS) -> list[Path]:
    """Delete the temporaries of killed runs (SIGKILL, power cut) under the output folders."""
    removed = []
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for p in list(root.rglob(".*")):
            m = _STALE_PID.match(p.name)
            if not (m or _STALE_ANY.match(p.name)):
                continue
            try:
                if m and _alive(int(m[1]), p.lstat().st_mtime):
                    continue
            except FileNotFoundError:  # its run finished meanwhile
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix + ".tmp", dir=path.parent)
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
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; swap it in for `path` only if the block succeeds.

    A failed stage leaves the previous output (or none), never half of one. On Linux the swap is
    one atomic exchange (renameat2), so a reader sees the old folder or the new one, never none;
    elsewhere it is two renames, with a moment in between where `path` is missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only; outputs get the usual mode
    try:
        yield tmp
        _fsync(tmp)
        if not path.exists():
            os.replace(tmp, path)
        elif not _exchange(tmp, path):  # tmp now holds the old folder, removed below
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        _fsync(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where the OS, the C
    library or the filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library older than glibc 2.28
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it,
    and setting it to read it leaves a moment in which another thread creates files as 0o666)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so a rename survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
