"""Fixtures: a temporary git+DVC copy of the project with a tiny config, run with real commands."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data/sample/aclImdb_sample.tar.gz"
PROJECT_FILES = [
    "pipeline", "dvc.yaml", "params.yaml", "conf", "data/sample", "data/vectors/README.md", ".dvc/config", ".dvcignore", ".gitignore",
]

# Small enough for 2 shared cores; one torch thread, since two collapse when a core is busy.
TINY = {
    "tokenize": {"workers": 1},
    "vocab": {"max_size": 2000},
    "train": {"embed_dim": 16, "hidden": 16, "max_len": 64, "batch_size": 32, "epochs": 2, "threads": 1, "patience": 2},
    "evaluate": {"n_mistakes": 5},
    # dims equal to train's, so train_from_lm can start from this LM
    "train_lm": {"token_budget": 30000, "eval_tokens": 8000, "embed_dim": 16, "hidden": 16, "cutoffs": [500, 1000],
                 "batch_size": 16, "eval_batch_size": 8, "eval_every": 0, "threads": 1},
}


def env() -> dict:
    """The test's environment: this venv first on PATH, a git identity, no analytics, no bars."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.update(
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
        DVC_NO_ANALYTICS="1", CI="true", PYTHONHASHSEED="0",
    )
    return e


def run(cmd: list[str] | str, cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a real command; on an unexpected failure show its output in the test report."""
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, shell=isinstance(cmd, str), **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    return p


def update_params(path: Path, changes: dict) -> None:
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def compose(conf: Path, overrides: list[str] = ()) -> str:
    """params.yaml as `dvc exp run` composes it from conf/ (DVC calls these same Hydra functions)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(conf.resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def shrink(dest: Path, changes: dict) -> None:
    """Apply param changes to conf/config.yaml, the source, and write params.yaml composed from it,
    so that `dvc repro` and `dvc exp run` (which recomposes params.yaml) see the same values."""
    update_params(dest / "conf/config.yaml", changes)
    (dest / "params.yaml").write_text(compose(dest / "conf"))


def make_repo(dest: Path, changes: dict | None = None) -> Path:
    """Copy the project into `dest`, shrink params, and make it a committed git+DVC repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    shrink(dest, _merge(TINY, changes or {}))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["dvc", "init", "-q", "-f"], dest)
    shutil.copy2(ROOT / ".dvc/config", dest / ".dvc/config")  # dvc init rewrites it
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "init"], dest)
    return dest


def _merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) for k, v in a.items()}
    for k, v in b.items():
        out.setdefault(k, {}).update(v)
    return out


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture(scope="session")
def raw_sample(tmp_path_factory) -> Path:
    """The bundled sample extracted once: <dir>/aclImdb/..."""
    d = tmp_path_factory.mktemp("raw")
    with tarfile.open(SAMPLE) as tar:
        tar.extractall(d, filter="data")
    return d


@pytest.fixture(scope="session")
def lm_repo(tmp_path_factory) -> Path:
    """A tiny config's repo with the language model trained (`dvc repro train_lm`), shared by the LM tests."""
    repo = make_repo(tmp_path_factory.mktemp("lm") / "repo")
    run(["dvc", "repro", "train_lm"], repo)
    return repo


# Tests that build a temporary git+DVC repo, run DVC or start a stage or CLI as a process (in
# their own code or a fixture's) are the slow part of the suite: `pytest -m "not slow"` leaves them
# out for a quick check while editing; the full suite runs them all.
SLOW_CALLS = ("make_repo(", 'run(["dvc"', '"-m", "pipeline.', 'run(["imdb-', "torch.distributed.run", "trained_model(")


def _source(func) -> str:
    import inspect

    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def pytest_collection_modifyitems(items):
    for item in items:
        if not hasattr(item, "function"):
            continue
        defs = getattr(item, "_fixtureinfo", None)
        fixtures = [d[-1].func for d in defs.name2fixturedefs.values()] if defs else []
        if any(c in _source(f) for f in [item.function, *fixtures] for c in SLOW_CALLS):
            item.add_marker(pytest.mark.slow)
