"""What the last commit holds: files as `git show HEAD:<path>` gives them, for the report's diff.

The report runs inside `dvc repro`, which holds DVC's lock, so it cannot call `dvc metrics diff`.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml


def git_show(rev_path: str) -> str | None:
    """`git show <rev>:<path>`'s text, or None when git, the repo, the commit or the file is missing."""
    try:
        p = subprocess.run(["git", "show", rev_path], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def head_commit() -> str | None:
    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def _previous(path: Path, parse, error):
    """The file as committed at HEAD (path relative to the working directory), parsed, or None."""
    text = git_show(f"HEAD:./{path.as_posix()}")
    if text is None:
        return None
    try:
        return parse(text)
    except error:
        return None


def previous_json(path: Path):
    return _previous(path, json.loads, json.JSONDecodeError)


def previous_yaml(path: Path):
    return _previous(path, yaml.safe_load, yaml.YAMLError)
