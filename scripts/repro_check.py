"""Does a stage give the same bytes every time? Rerun it N times, each in a fresh scratch copy.

Copies the project (code, conf, params, dvc.yaml) into a scratch git+DVC repo, runs `dvc repro`
of the stages once to build their inputs, then N times: copies that repo to a new path, forces
the stage (`dvc repro --force --single-item`), and hashes every output its dvc.yaml entry lists
(outs, metrics, plots; each file of a folder). Prints one JSON line per stage: for each output the
number of distinct md5s over the N runs (1 = reproducible) and the md5s themselves.

    python scripts/repro_check.py train train_lm train_from_lm --runs 10
    python scripts/repro_check.py train --runs 3 -S train.epochs=2     # params changed first (Hydra syntax)
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
from pathlib import Path

import yaml
from scratch import digests, make_base, outputs, sh  # this folder is sys.path[0]

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stages", nargs="+")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="params override, e.g. train.epochs=2")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="repro_check."))
    try:
        base = make_base(work / "base")
        if args.overrides:  # composed by DVC itself, as a user's `dvc exp run -S` would be
            sh(["dvc", "exp", "run", *sum((["-S", o] for o in args.overrides), []), *args.stages], base)
        else:
            sh(["dvc", "repro", *args.stages], base)
        stages = yaml.safe_load((base / "dvc.yaml").read_text())["stages"]
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


if __name__ == "__main__":
    main()
