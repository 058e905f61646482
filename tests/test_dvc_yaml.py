"""dvc.yaml lists, for every stage, exactly the pipeline modules the stage's code imports; stage
modules do not import each other; every path of pipeline/paths.py is one dvc.yaml names."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml
from conftest import ROOT


def pipeline_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """The pipeline modules `module` imports, directly or through other pipeline modules."""
    seen = set() if seen is None else seen
    path = ROOT / "pipeline" / f"{module}.py"
    if module in seen or not path.is_file():
        return seen
    seen.add(module)
    seen.add("__init__")  # every `pipeline.x` import runs the package's __init__ first
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
            names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")]
        for name in names:
            pipeline_imports(name, seen)
    return seen


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    return re.search(r"-m pipeline\.(\w+)", stage["cmd"])[1]


def direct_imports(module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse((ROOT / "pipeline" / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
            found.add(node.module.split(".")[1])
    return found


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    wrong = {}
    for name, stage in stages().items():
        deps = {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}
        listed = {d for d in deps if d.startswith("pipeline/")}
        imported = {f"pipeline/{m}.py" for m in pipeline_imports(stage_module(stage))}
        if listed != imported:
            wrong[name] = {"missing": sorted(imported - listed), "not imported": sorted(listed - imported)}
    assert wrong == {}, f"dvc.yaml deps differ from what the stages import: {wrong}"


def test_no_stage_module_imports_another():
    modules = {stage_module(s) for s in stages().values()}
    crossing = {m: sorted(direct_imports(m) & (modules - {m})) for m in modules}
    assert {m: c for m, c in crossing.items() if c} == {}


def test_every_declared_path_is_named_in_dvc_yaml():
    from pipeline import paths

    text = (ROOT / "dvc.yaml").read_text()
    declared = [v for k, v in vars(paths).items() if k.isupper() and isinstance(v, Path)]
    for record in (v for v in vars(paths).values() if isinstance(v, (paths.Trained, paths.Evaluated))):
        declared += [getattr(record, f) for f in ("model", "metrics", "live", "plots", "mistakes") if hasattr(record, f)]
        declared += list(getattr(record, "models", ()))
    untracked = {paths.DOWNLOADS, paths.RAW_LEGACY, paths.LOGS}  # not outputs: caches, old layouts, logs
    # a file inside a folder output (data/vocab/vocab.tsv) is named by its folder
    missing = sorted(str(p) for p in declared if p not in untracked and f" {p}" not in text and f" {p.parent}\n" not in text)
    assert missing == []


def test_dvc_lock_records_the_code_as_committed():
    """A code change without a `dvc repro` would make a fresh clone's run disagree with dvc.lock
    (and rerun stages nobody asked for): every pipeline module dvc.lock lists has the md5 it records."""
    import hashlib

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stale = sorted({d["path"] for s in lock.values() for d in s.get("deps", [])
                    if d["path"].startswith("pipeline/")
                    and hashlib.md5((ROOT / d["path"]).read_bytes()).hexdigest() != d.get("md5")})
    assert stale == [], f"run `dvc repro` and commit dvc.lock: it records other versions of {stale}"
