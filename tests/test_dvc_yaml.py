"""dvc.yaml lists, for every stage, each pipeline module the stage's code imports."""
from __future__ import annotations

import ast
import re

import yaml
from conftest import ROOT


def pipeline_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """The pipeline modules `module` imports, directly or through other pipeline modules."""
    seen = set() if seen is None else seen
    path = ROOT / "pipeline" / f"{module}.py"
    if module in seen or not path.is_file():
        return seen
    seen.add(module)
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


def test_every_imported_module_is_a_dependency_of_its_stage():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        module = re.search(r"-m pipeline\.(\w+)", stage["cmd"])[1]
        deps = {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}
        lacking = sorted(f"pipeline/{m}.py" for m in pipeline_imports(module) if f"pipeline/{m}.py" not in deps)
        if lacking:
            missing[name] = lacking
    assert missing == {}, f"stages that import modules dvc.yaml does not list: {missing}"
