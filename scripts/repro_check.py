"""Does a stage give the same bytes every time? Rerun it N times, each in a fresh scratch copy.

Copies the project (code, conf, params, dvc.yaml) into a scratch git+DVC repo, runs `dvc repro`
of the stages once to build their inputs, then N times: copies that repo to a new path, forces
the stage (`dvc repro --force --single-item`), and hashes every output its dvc.yaml entry lists
(outs, metrics, plots; each file of a folder). Prints one JSON line per stage: for each output the
number of distinct md5s over the N runs (1 = reproducible) and the md5s themselves.

    python scripts/repro_check.py train train_lm train_from_lm --runs 10
    python scripts/repro_check.py train --runs 3 -S train.epochs=2     # params changed first (Hydra syntax)
    python scripts/repro_check.py --whole --runs 8    # the whole pipeline forced, as a fresh clone's `dvc repro`

With --whole, each run is `dvc repro --force` of every stage in one fresh copy (stages then run
after one another in one DVC process, as in a user's first `dvc repro`), and the first run, the one
that built the copy, counts too.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
from pathlib import Path

import yaml
from scratch import ROOT, digests, make_base, outputs, sh  # this folder is sys.path[0]

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stages", nargs="*")
    ap.add_argument("--whole", action="store_true", help="force the whole pipeline in each run")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="params override, e.g. train.epochs=2")
    args = ap.parse_args()
    if not args.stages and not args.whole:
        ap.error("name the stages to rerun, or --whole")

    work = Path(tempfile.mkdtemp(prefix="repro_check."))
    try:
        base = make_base(work / "base")
        if args.overrides:  # composed by DVC itself, as a user's `dvc exp run -S` would be
            sh(["dvc", "exp", "run", *sum((["-S", o] for o in args.overrides), []), *args.stages], base)
        else:
            sh(["dvc", "repro", *args.stages], base)
        stages = yaml.safe_load((base / "dvc.yaml").read_text())["stages"]
        if args.whole:
            whole(base, work, stages, args)
            return
        for stage in args.stages:
            seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
            for i in range(args.runs):
                run = work / f"{stage}-{i}"  # a new path each time: nothing may depend on where it ran
                shutil.copytree(base, run, symlinks=True)
                sh(["dvc", "repro", "--force", "--single-item", stage], run)
                for path, md5 in digests(run, outputs(stages[stage])).items():
                    seen[path][md5] += 1
                shutil.rmtree(run)
            print(json.dumps({
                "stage": stage, "runs": args.runs, "overrides": args.overrides,
                "distinct": {p: len(c) for p, c in sorted(seen.items())},
                "reproducible": all(len(c) == 1 for c in seen.values()),
                "md5s": {p: dict(c) for p, c in sorted(seen.items()) if len(c) > 1},
            }), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def whole(base: Path, work: Path, stages: dict, args) -> None:
    every = [path for stage in stages.values() for path in outputs(stage)]
    first = digests(base, every)
    seen = {path: collections.Counter([md5]) for path, md5 in first.items()}
    for i in range(1, args.runs):
        run = work / f"whole-{i}"
        shutil.copytree(base, run, symlinks=True)
        sh(["dvc", "repro", "--force"], run)
        now = digests(run, every)
        for path, md5 in now.items():
            seen.setdefault(path, collections.Counter())[md5] += 1
        print(json.dumps({"run": i, "differ_from_first": sorted(p for p, m in now.items() if m != first.get(p))}), flush=True)
        shutil.rmtree(run)
    # Against what the project's dvc.lock records: files only (a folder's hash is DVC's own), and not
    # the report, whose "change against the last commit" reads the project's git history.
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"] if not args.overrides else {}
    recorded = {o["path"]: o["md5"] for name, stage in lock.items() if name != "report" for o in stage.get("outs", [])
                if not o.get("md5", "").endswith(".dir")}
    print(json.dumps({
        "whole": True, "runs": args.runs, "overrides": args.overrides,
        "differ_from_dvc_lock": {p: dict(seen[p]) for p, md5 in sorted(recorded.items()) if p in seen and set(seen[p]) != {md5}},
        "reproducible": all(len(c) == 1 for c in seen.values()),
        "md5s": {p: dict(c) for p, c in sorted(seen.items()) if len(c) > 1},
    }), flush=True)


if __name__ == "__main__":
    main()
