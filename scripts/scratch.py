"""Scratch git+DVC copies of the project, for the scripts that rerun or kill stages (not for tests)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["pipeline", "conf", "dvc.yaml", "params.yaml", "data/sample", "data/vectors/README.md", ".dvc/config",
         ".dvcignore", ".gitignore"]


def env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "CI": "true",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "r", "GIT_AUTHOR_EMAIL": "r@x", "GIT_COMMITTER_NAME": "r", "GIT_COMMITTER_EMAIL": "r@x"}


def sh(cmd: list[str], cwd: Path) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}) in {cwd}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def outputs(stage: dict) -> list[str]:
    """Every path a dvc.yaml stage writes."""
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


def digests(repo: Path, paths: list[str]) -> dict[str, str]:
    out = {}
    for rel in paths:
        path = repo / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            out[str(f.relative_to(repo))] = hashlib.md5(f.read_bytes()).hexdigest() if f.exists() else "missing"
    return out


def make_base(base: Path) -> Path:
    """Copy the project into `base` and make it a committed git+DVC repo."""
    for name in FILES:
        src, dst = ROOT / name, base / name
        if not src.exists():  # e.g. conf/ in a checkout from before the recipes
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy2(src, dst)
    sh(["git", "init", "-q", "-b", "main"], base)
    sh(["dvc", "init", "-q", "-f"], base)
    shutil.copy2(ROOT / ".dvc/config", base / ".dvc/config")
    sh(["git", "add", "-A"], base)
    sh(["git", "commit", "-qm", "init"], base)
    return base
