"""Stage download: fetch the aclImdb archive, verify its sha256, stream it into data/raw/reviews.parquet.

Sources are a local path, a file:// URL or an http(s):// URL, then the mirrors in order.
Over HTTP the archive streams into data/downloads/<sha256 prefix>/<name>.part, resumes with a
Range request after a dropped connection, and loses the .part suffix once its sha256 matches,
so a rerun with the same hash reuses it without touching the network.
The archive is never extracted: its reviews go straight into one table (pipeline/raw.py), which
DVC hashes, pushes and pulls as one file instead of 100,008.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import pyarrow as pa

from pipeline import labels, paths, raw, tables
from pipeline.common import PipelineError, atomic_file, progress, run_main, write_json
from pipeline.params import load_params, resolve_source

RAW = paths.RAW
LEGACY_DIR = paths.RAW_LEGACY
METRICS = paths.metrics("download")
CACHE_DIR = paths.DOWNLOADS
BLOCK = 1 << 16
MAX_BACKOFF = 60.0
USER_AGENT = "imdb-lstm-pipeline (python-urllib)"
OFFLINE_HINT = (
    "use a local copy (download.source=/path/to/archive.tar.gz@sha256:<hex>) "
    "or the bundled sample (download.source=sample)"
)
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class Transient(Exception):
    """A failure worth retrying on the same URL (5xx, dropped connection, timeout)."""

    def __init__(self, reason: str, offline: bool = False):
        super().__init__(reason)
        self.offline = offline  # the network itself looks unreachable: worth the offline hint


class SourceFailed(Transient):
    """This URL cannot give the archive (404, DNS, bad hash...); the next mirror may."""


# ---------------------------------------------------------------- sources


def local_path(url: str) -> Path | None:
    """The filesystem path of a local source (plain path or file:// URL), None for http(s)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise PipelineError(f"file URL with a remote host is not supported: {url}")
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "" or re.match(r"^[A-Za-z]:[\\/]", url):  # C:\ is a path, not a scheme
        return Path(url).expanduser()
    raise PipelineError(f"unsupported URL scheme {parsed.scheme!r} in {url} (use a path, file://, http:// or https://)")


def cache_path(url: str, sha256: str) -> Path:
    """Where a verified download of `url` lives; keyed by hash so mirrors share one copy."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "archive.tar.gz"
    return CACHE_DIR / sha256[:16] / name


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mismatch(url: str, expected: str, found: str) -> str:
    return f"sha256 mismatch for {url}: expected {expected}, found {found}"


# ---------------------------------------------------------------- HTTP


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"^\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*$", value or "")
    return int(m[1]) if m else None


def _write_failed(e: OSError, path: Path) -> PipelineError:
    if e.errno in NO_SPACE:
        return PipelineError(
            f"no space left writing {path}: {e.strerror} (disk full?); free some space and rerun, "
            f"the partial download is kept and resumes"
        )
    return PipelineError(f"cannot write {path}: {e.strerror}")


def fetch_once(url: str, part: Path, timeout: float) -> None:
    """One HTTP attempt: append to `part` from its current size; raise Transient or SourceFailed.

    A server that ignores Range answers 200 with the whole file: start `part` over. The body is
    checked against Content-Length because http.client returns short reads silently.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except (ValueError, http.client.InvalidURL) as e:
        raise SourceFailed(f"invalid URL ({_one_line(e)})") from None
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # the part is no prefix of this file: start over
            part.unlink(missing_ok=True)
            raise Transient(f"HTTP 416 for a resume at byte {offset}") from None
        if e.code >= 500 or e.code in (408, 429):
            raise Transient(f"HTTP {e.code} {e.reason}") from None
        raise SourceFailed(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _network_error(e.reason) from None
    except (OSError, http.client.HTTPException) as e:
        raise _network_error(e) from None
    with resp:
        if resp.status == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise Transient(f"server resumed at the wrong byte ({resp.headers.get('Content-Range')})")
            mode = "ab"
        else:
            offset, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        _stream(resp, part, mode, offset, expected, url)


def _stream(resp, part: Path, mode: str, offset: int, expected: int | None, url: str) -> None:
    got = 0
    total = offset + expected if expected is not None else None
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        f = open(part, mode)
    except OSError as e:
        raise _write_failed(e, part) from None
    desc = Path(urllib.parse.urlparse(url).path).name or "download"
    with f, progress(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
        while True:
            try:
                block = resp.read1(BLOCK)  # what has arrived: a stall then loses nothing
            except (OSError, http.client.HTTPException) as e:
                raise Transient(f"connection lost after {offset + got} bytes ({_reason(e)})") from None
            if not block:
                break
            try:
                f.write(block)
            except OSError as e:
                raise _write_failed(e, part) from None
            got += len(block)
            bar.update(len(block))
    if expected is not None and got < expected:
        raise Transient(f"connection closed after {offset + got} of {total} bytes")


def _reason(e: BaseException) -> str:
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timed out"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _network_error(reason) -> Exception:
    """Classify a failure to connect: DNS means offline or a wrong host, the rest may pass."""
    if isinstance(reason, socket.gaierror):
        return SourceFailed(f"cannot resolve host ({reason.strerror}): no network or a wrong host name?", offline=True)
    if isinstance(reason, ssl.SSLError):
        return SourceFailed(f"TLS error ({reason.reason or reason})")
    if isinstance(reason, BaseException):
        reason = _reason(reason)
    return Transient(f"cannot connect ({reason})", offline=True)


def download(url: str, part: Path, timeout: float, retries: int, backoff: float,
             fetch: Callable[[str, Path, float], None] = fetch_once,
             sleep: Callable[[float], None] = time.sleep) -> None:
    """Fetch `url` into `part`, retrying transient failures with exponential backoff.

    An attempt that got bytes resets the count: a flaky link that keeps making progress should
    finish, while a dead one still stops after `retries` attempts in a row with nothing gained.
    """
    failures = attempts = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        attempts += 1
        try:
            fetch(url, part, timeout)
            return
        except SourceFailed:
            raise
        except Transient as e:
            gained = (part.stat().st_size if part.exists() else 0) > before
            failures = 1 if gained else failures + 1
            if failures > retries:
                tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
                raise SourceFailed(f"{e}, gave up after {tries}", offline=e.offline) from None
            wait = min(backoff * 2 ** (failures - 1), MAX_BACKOFF)
            print(f"download: {url}: {e}; retry {failures}/{retries} in {wait:g}s", flush=True)
            sleep(wait)


# ---------------------------------------------------------------- obtaining a verified archive


def verified_local(path: Path, url: str, sha256: str) -> Path:
    """A local archive, verified in place; never deleted, since it is the user's file."""
    if path.is_dir():
        raise SourceFailed(f"{path} is a folder; download.source needs the archive file (.tar.gz) itself")
    if not path.is_file():
        raise SourceFailed(f"no such file {path}")
    found = sha256_of(path)
    if found != sha256:
        raise SourceFailed(mismatch(url, sha256, found))
    return path


def verified_http(url: str, sha256: str, dest: Path, timeout: float, retries: int, backoff: float) -> Path:
    """Download `url` to `dest` (kept as `dest`.part until its hash matches)."""
    part = dest.with_name(dest.name + ".part")
    download(url, part, timeout, retries, backoff)
    found = sha256_of(part)
    if found != sha256:
        part.unlink(missing_ok=True)  # a resume from these bytes could never match
        raise SourceFailed(mismatch(url, sha256, found))
    os.replace(part, dest)
    return dest


def cached(dest: Path, sha256: str) -> bool:
    if not dest.is_file():
        return False
    if sha256_of(dest) == sha256:
        return True
    dest.unlink()  # damaged since it was verified: fetch again
    return False


def obtain(urls: list[str], sha256: str, timeout: float, retries: int, backoff: float) -> Path:
    """A verified local copy of the archive: the first of `urls` that gives the right bytes."""
    dest = cache_path(urls[0], sha256)
    if any(local_path(u) is None for u in urls) and cached(dest, sha256):
        return dest
    failures: list[tuple[str, SourceFailed]] = []
    for url in urls:
        path = local_path(url)
        try:
            if path is not None:
                return verified_local(path, url, sha256)
            return verified_http(url, sha256, dest, timeout, retries, backoff)
        except SourceFailed as e:
            failures.append((url, e))
            if url != urls[-1]:
                print(f"download: {url}: {e}; trying the next mirror", flush=True)
    raise PipelineError(_all_failed(failures))


def _one_line(e: BaseException) -> str:
    return " ".join((getattr(e, "strerror", None) or str(e) or type(e).__name__).split())


def _all_failed(failures: list[tuple[str, SourceFailed]]) -> str:
    if len(failures) == 1:
        (url, e), = failures
        msg = f"download of {url} failed: {e}"
    else:
        msg = f"all {len(failures)} sources failed: " + "; ".join(f"{u}: {e}" for u, e in failures)
    if any(e.offline for _, e in failures):
        msg += f"; {OFFLINE_HINT}"
    return msg


# ---------------------------------------------------------------- stage


def fetch(params, key: str) -> tuple[str, object, Path]:
    """(name, Source, verified local copy) of download.<key>."""
    name, source = resolve_source(params, key)
    path = obtain([source.url, *source.mirrors], source.sha256, params.timeout, params.retries, params.backoff)
    return name, source, path


def read_tables(params, name: str, path: Path, fmt: str) -> tuple[pa.Table, list[str], dict]:
    """The raw table and label map of a table source, its test table (or a stratified split) and unlabelled texts."""
    columns = [params.text_column, params.label_column]
    files = {}

    def labelled(key: str, file: Path, file_fmt: str):
        cols = tables.read_columns(file, file_fmt, columns)
        rows, texts, labels, counts = tables.clean_rows(cols[params.text_column], cols[params.label_column], file.name)
        files[key] = counts
        return rows, texts, labels

    train = labelled("source", path, fmt)
    if params.test_source:
        _, test_src, test_path = fetch(params, "test_source")
        test = labelled("test_source", test_path, _table_format(test_src.url, "test_source"))
    else:
        keep, held = raw.stratified_split(train[2], params.test_fraction, params.seed)
        test = tuple([part[i] for i in held] for part in train)
        train = tuple([part[i] for i in keep] for part in train)
    unsup = ([], [], [])
    if params.unsup_source:
        _, unsup_src, unsup_path = fetch(params, "unsup_source")
        cols = tables.read_columns(unsup_path, _table_format(unsup_src.url, "unsup_source"), [params.text_column])
        rows, texts, _, files["unsup_source"] = tables.clean_rows(cols[params.text_column], None, unsup_path.name)
        unsup = (rows, texts, [None] * len(texts))
    names = labels.label_map(train[2], test[2], path.name)
    index = {n: i for i, n in enumerate(names)}
    table = raw.from_rows({split: (texts, [index[y] if y is not None else None for y in labels], rows)
                           for split, (rows, texts, labels) in (("train", train), ("unsup", unsup), ("test", test))})
    skipped = {k: sum(c[k] for c in files.values()) for k in ("empty_text", "missing_label")}
    if any(skipped.values()):
        print(f"download: skipped {skipped['empty_text']:,} rows with an empty text and {skipped['missing_label']:,} "
              f"without a label (counted in {METRICS})")
    per_label = {n: 0 for n in names}
    for y in train[2] + test[2]:
        per_label[y] += 1
    return table, names, {
        "format": fmt, "columns": {"text": params.text_column, "label": params.label_column},
        "reviews": {"train": len(train[1]), "test": len(test[1]), "unsup": len(unsup[1])},
        "skipped": skipped, "bad_utf8": sum(c["bad_utf8"] for c in files.values()), "files": files, "labels": per_label,
    }


def _table_format(url: str, key: str) -> str:
    fmt = tables.table_format(url)
    if fmt is None:
        raise PipelineError(f"download.{key} must be a table (.csv .tsv .jsonl .parquet), got {url}")
    return fmt


def main() -> None:
    params = load_params("download")["download"]
    start = time.perf_counter()
    name, source, path = fetch(params, "source")
    fmt = tables.table_format(source.url)
    if fmt is None:
        if params.test_source or params.unsup_source:
            raise PipelineError("download.test_source and download.unsup_source are for table sources: "
                                "an aclImdb archive has its own test and unlabelled reviews")
        table, names, counts = raw.read_aclimdb(path, params.label_column)
        counts = {**counts, "label_column": params.label_column}
    else:
        table, names, counts = read_tables(params, name, path, fmt)
    try:
        # The table and its label map are a pair: the old table goes first and the new one lands
        # last, so a run killed in between leaves no table rather than one with the wrong labels.
        RAW.unlink(missing_ok=True)
        with atomic_file(paths.RAW_LABELS) as tmp:
            labels.write_labels(tmp, names)
        with atomic_file(RAW) as tmp:
            raw.write(table, tmp)
    except OSError as e:
        if e.errno in NO_SPACE:
            raise PipelineError(f"no space left writing {RAW}: {e.strerror} (disk full?)") from None
        raise PipelineError(f"cannot write {RAW}: {_one_line(e)}") from None
    if LEGACY_DIR.is_dir():  # a workspace from before the table: 100k files nothing reads any more
        shutil.rmtree(LEGACY_DIR)
    # Only what the sources determine, so a rerun writes the same bytes and DVC sees no change.
    write_json(METRICS, {"source": name, "sha256": source.sha256, **counts})
    print(f"download: {name} -> {RAW} ({table.num_rows} texts, {len(names)} labels, {time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    run_main(main)
