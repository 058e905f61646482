"""Peak memory of tokenize with an outsized review in its input, against the same input without it.

Three runs on the bundled sample, each in a scratch folder:
  1. download + tokenize as they are: the baseline peak RSS of tokenize;
  2. tokenize with one review replaced by the largest review download lets through
     (pipeline.raw.MAX_REVIEW_BYTES of text): its peak RSS and the ratio to the baseline;
  3. download of an archive holding one 200 MB review: refused with one line before any output.
Peak RSS is the largest resident set of tokenize and its worker processes (getrusage of the
children). One JSON line.

    python -m benchmarks.bench_tokenize_rss
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from pipeline import paths, raw

ROOT = Path(__file__).resolve().parents[1]


def scratch(work: Path, name: str, source: str | None = None) -> Path:
    d = work / name
    shutil.copytree(ROOT / "data/sample", d / "data/sample")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if source:
        params["download"]["source"] = source
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    return d


def peak_run(cmd: list[str], cwd: Path) -> tuple[int, int, str]:
    """(exit code, peak RSS in MB of the command and its children, stderr)."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(p.stderr); print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "true"}
    p = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=cwd, capture_output=True, text=True, env=env)
    code, kb = p.stdout.split()[-2:]
    return int(code), int(kb) // 1024, p.stderr.strip()


def huge_archive(path: Path, megabytes: int) -> str:
    """An aclImdb-shaped tar.gz whose one train review is `megabytes` MB of words; its sha256."""
    review = (b"this film goes on and on " * 42_000)[: 1 << 20] * megabytes
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in (("aclImdb/train/pos/0_9.txt", review), ("aclImdb/test/neg/0_1.txt", b"bad")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--huge-mb", type=int, default=200)
    args = ap.parse_args()
    tokenize = [sys.executable, "-m", "pipeline.tokenize"]
    work = Path(tempfile.mkdtemp(prefix="bench_tokenize_rss."))
    try:
        base = scratch(work, "base")
        code, _, err = peak_run([sys.executable, "-m", "pipeline.download"], base)
        assert code == 0, err
        code, base_mb, err = peak_run(tokenize, base)
        assert code == 0, err

        big = scratch(work, "big")
        table = pq.read_table(base / paths.RAW)
        texts = table["text"].to_pylist()
        i = pc.index(table["split"], "train").as_py()
        texts[i] = ("a very long review " * (raw.MAX_REVIEW_BYTES // 19 + 1))[: raw.MAX_REVIEW_BYTES]
        (big / paths.RAW).parent.mkdir(parents=True)
        raw.write(table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string())), big / paths.RAW)
        code, big_mb, err = peak_run(tokenize, big)
        assert code == 0, err

        archive = work / "huge.tar.gz"
        sha = huge_archive(archive, args.huge_mb)
        huge = scratch(work, "huge", f"{archive}@sha256:{sha}")
        code, huge_mb, err = peak_run([sys.executable, "-m", "pipeline.download"], huge)
        print(json.dumps({
            "tokenize_peak_rss_mb": base_mb,
            "tokenize_peak_rss_mb_with_largest_review": big_mb,
            "largest_review_chars": raw.MAX_REVIEW_BYTES,
            "ratio": round(big_mb / base_mb, 3),
            f"download_of_a_{args.huge_mb}_mb_review": {"exit": code, "stderr": err, "peak_rss_mb": huge_mb,
                                                        "wrote_raw": (huge / paths.RAW).exists()},
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
