"""Build data/sample/aclImdb_sample.tar.gz: a small, stratified, deterministic IMDB sample.

    python scripts/make_sample.py ../shared/data/aclImdb_v1-text.tar.gz

Same layout as the official archive, so the download stage treats it like the real thing.
The same input and seed give the same bytes (sorted members, fixed mtimes, no gzip timestamp).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import random
import re
import tarfile
from pathlib import Path

# (split, folder) -> reviews kept; labelled folders are 50/50 so every split is balanced.
COUNTS = {
    ("train", "pos"): 1000,
    ("train", "neg"): 1000,
    ("test", "pos"): 1000,
    ("test", "neg"): 1000,
    ("train", "unsup"): 2000,
}
REVIEW = re.compile(r"^aclImdb/(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")
MTIME = 1309046400  # 2011-06-26, the official archive's date


def sample_members(src: Path, seed: int) -> dict[str, bytes]:
    """Pick reviews per (split, folder), sampling ids with a seeded RNG, stratified by rating."""
    by_folder: dict[tuple[str, str], dict[str, bytes]] = {k: {} for k in COUNTS}
    readme = None
    with tarfile.open(src, "r:gz") as tar:
        for m in tar:
            if m.name == "aclImdb/README":
                readme = tar.extractfile(m).read()
            match = REVIEW.match(m.name)
            if match and m.isfile() and (match[1], match[2]) in by_folder:
                by_folder[(match[1], match[2])][m.name] = tar.extractfile(m).read()
    rng = random.Random(seed)
    chosen: dict[str, bytes] = {}
    for key, n in COUNTS.items():
        files = by_folder[key]
        if len(files) < n:
            raise SystemExit(f"error: {src} has {len(files)} reviews in {key}, need {n}")
        # Stratify by rating so the sample keeps the archive's rating mix.
        by_rating: dict[str, list[str]] = {}
        for name in sorted(files, key=lambda s: int(REVIEW.match(s)[3])):
            by_rating.setdefault(REVIEW.match(name)[4], []).append(name)
        total = len(files)
        picks: list[str] = []
        for rating in sorted(by_rating, key=int):
            names = by_rating[rating]
            k = round(n * len(names) / total)
            picks += rng.sample(names, min(k, len(names)))
        rest = sorted(set(files) - set(picks), key=lambda s: int(REVIEW.match(s)[3]))
        picks = picks[:n] + rng.sample(rest, max(0, n - len(picks)))
        chosen.update({name: files[name] for name in picks})
    if readme is not None:
        chosen["aclImdb/README"] = readme
    return chosen


def write_tar_gz(members: dict[str, bytes], out: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        all_dirs = sorted({str(Path(*Path(n).parts[:i])) for n in members for i in range(1, len(Path(n).parts))})
        for d in all_dirs:
            info = tarfile.TarInfo(d + "/")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(members[name]), 0o644, MTIME
            tar.addfile(info, io.BytesIO(members[name]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())
    tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="the full aclImdb .tar.gz")
    ap.add_argument("--out", type=Path, default=Path("data/sample/aclImdb_sample.tar.gz"))
    ap.add_argument("--seed", type=int, default=2011)
    args = ap.parse_args()
    members = sample_members(args.source, args.seed)
    write_tar_gz(members, args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {len(members)} files, {args.out.stat().st_size:,} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
