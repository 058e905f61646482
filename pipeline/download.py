"""Stage download: fetch the aclImdb archive, verify its sha256, extract it safely to data/raw/."""
from __future__ import annotations

import hashlib
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from pipeline.common import PipelineError, atomic_dir, atomic_file, progress, run_main, write_json
from pipeline.params import load_params

RAW_DIR = Path("data/raw")
METRICS = Path("metrics/download.json")
CACHE_DIR = Path("data/downloads")  # verified archives, kept so a rerun does not fetch again
EXPECTED = ["aclImdb/train/pos", "aclImdb/train/neg", "aclImdb/train/unsup", "aclImdb/test/pos", "aclImdb/test/neg"]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def local_path(url: str) -> Path | None:
    """The filesystem path of a local source (plain path or file:// URL), else None."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and url[1:3] in (":\\", ":/")):
        return Path(url)
    return None


def fetch_http(url: str, dest: Path, timeout: float, retries: int) -> None:
    """Stream `url` to `dest`, retrying transient failures with backoff."""
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_file(dest) as tmp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with open(tmp, "wb") as f, progress(total=total, unit="B", unit_scale=True, desc="download") as bar:
                    for block in iter(lambda: resp.read(1 << 16), b""):
                        f.write(block)
                        bar.update(len(block))
            return
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == retries:
                raise PipelineError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            if attempt == retries:
                reason = getattr(e, "reason", e)
                raise PipelineError(
                    f"cannot reach {url} ({reason}); use a local path or the bundled sample "
                    f"(download.source=sample)"
                ) from None
        time.sleep(min(2**attempt, 30))


def fetch(url: str, sha256: str, timeout: float, retries: int) -> Path:
    """Return a verified local copy of the archive at `url`."""
    path = local_path(url)
    if path is not None:
        if not path.is_file():
            raise PipelineError(f"archive not found: {path}")
    else:
        name = Path(urllib.parse.urlparse(url).path).name or "archive.tar.gz"
        path = CACHE_DIR / name
        if not (path.is_file() and sha256_of(path) == sha256):
            fetch_http(url, path, timeout, retries)
    found = sha256_of(path)
    if found != sha256:
        if local_path(url) is None:
            path.unlink(missing_ok=True)
        raise PipelineError(f"sha256 mismatch for {url}: expected {sha256}, found {found}")
    return path


def safe_extract(archive: Path, dest: Path) -> int:
    """Extract regular files and folders only; refuse links, devices and paths leaving `dest`."""
    count = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                name = m.name
                if name.startswith("/") or ".." in Path(name).parts:
                    raise PipelineError(f"unsafe path in archive {archive.name}: {name}")
                if not (m.isfile() or m.isdir()):
                    raise PipelineError(f"refusing link or special member in archive {archive.name}: {name}")
                tar.extract(m, dest, filter="data")
                count += m.isfile()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        if isinstance(e, OSError) and not isinstance(e, (EOFError,)) and e.errno is not None:
            raise PipelineError(f"cannot extract {archive.name}: {e.strerror}") from None
        raise PipelineError(f"{archive.name} is not a valid .tar.gz archive (truncated or corrupt: {e})") from None
    missing = [p for p in EXPECTED if not (dest / p).is_dir()]
    if missing:
        raise PipelineError(f"archive {archive.name} lacks the aclImdb layout: missing {', '.join(missing)}")
    return count


def main() -> None:
    params = load_params()["download"]
    source = params.sources[params.source]
    start = time.perf_counter()
    archive = fetch(source.url, source.sha256, params.timeout, params.retries)
    with atomic_dir(RAW_DIR) as tmp:
        n = safe_extract(archive, tmp)
        counts = {p.replace("aclImdb/", ""): sum(1 for _ in (tmp / p).glob("*.txt")) for p in EXPECTED}
    write_json(METRICS, {"source": params.source, "sha256": source.sha256, "files": n, "reviews": counts})
    print(f"download: {params.source} -> {RAW_DIR} ({n} files, {time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    run_main(main)
