"""Kill a stage at a random point, rerun it, and check that nothing was lost or left behind.

For each stage: a scratch git+DVC copy of the project runs `dvc repro <stage>` once, commits,
and times a forced rerun (its outputs are the reference). Then, for each signal, a fresh copy
starts `dvc repro --force --single-item <stage>`, sends the signal to the whole process group
(DVC and the stage, as Ctrl-C, `kill`, a CI timeout or an OOM kill would) at a random moment
of the reference run's duration, and reruns `dvc repro --single-item <stage>`, as a user would
(DVC may restore the outputs from its cache: the stage's "is cached - skipping run"). Then it
kills a forced run again at the same moment and reruns the stage forced, so the stage itself runs
after a kill: it must sweep the killed run's temporaries and, with `resume: true`, carry on from the
last saved state to the same bytes. Checked after the rerun:
the outputs equal the reference byte for byte, no temporary of the project's naming
(`.<name>.<pid>.<random>.tmp` / `.old`) is left under the output folders, `git status` is clean,
and `dvc status` of the stage is up to date. One JSON line per (stage, signal). Where the
signal cut DVC off while it wrote dvc.lock (DVC writes it in place), the line says so and the
probe restores it with `git checkout -- dvc.lock`, as a user would, before the rerun.

    python scripts/kill_probe.py download tokenize train train_lm --seed 0
    python scripts/kill_probe.py train -S train.epochs=2 --signals KILL     # params changed first
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from scratch import digests, env, make_base, outputs, sh  # this folder is sys.path[0]

OUTPUT_ROOTS = ("data", "models", "metrics", "plots", "reports", "dvclive")
TEMPORARY = re.compile(r"^\..+\.(tmp|old)$")


def strays(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for root in OUTPUT_ROOTS if (repo / root).is_dir()
                  for p in (repo / root).rglob(".*") if TEMPORARY.match(p.name))


def repro(repo: Path, stage: str, force: bool) -> tuple[float, str]:
    """`dvc repro` of the stage alone: (seconds, its output). Unforced, DVC may restore
    the outputs dvc.lock records from its cache instead of running the stage ("is cached -
    skipping run, checking out outputs"); then no code of the project runs to sweep up."""
    start = time.perf_counter()
    out = sh(["dvc", "repro", *(["--force"] if force else []), "--single-item", stage], repo)
    return time.perf_counter() - start, out


def killed_run(repo: Path, stage: str, sig: signal.Signals, delay: float) -> dict:
    """Start a forced rerun, signal its process group after `delay` seconds; what happened."""
    p = subprocess.Popen(["dvc", "repro", "--force", "--single-item", stage], cwd=repo, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        p.wait(timeout=delay)
        finished = True  # it ended before the signal: the probe drew too late a moment
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, sig)
        finished = False
    out, _ = p.communicate()
    return {"finished_before_signal": finished, "exit": p.returncode, "last_line": (out.strip().splitlines() or [""])[-1]}


def kill(repo: Path, stage: str, name: str, delay: float) -> tuple[dict, int, bool]:
    """A killed forced run; the temporaries it left; whether it cut dvc.lock off (then restored).

    DVC writes dvc.lock in place (dvc/utils/serialize/_common.py, open "w+"): killed at that
    moment, it leaves a cut-off file, DVC's own behaviour. dvc.lock is in git: one command fixes it.
    """
    killed = killed_run(repo, stage, getattr(signal, f"SIG{name}"), delay)
    left = len(strays(repo))
    broken = subprocess.run(["dvc", "status", stage], cwd=repo, env=env(), capture_output=True).returncode != 0
    if broken:
        sh(["git", "checkout", "--", "dvc.lock"], repo)
    return killed, left, broken


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stages", nargs="+")
    ap.add_argument("--signals", nargs="+", default=["KILL", "TERM"], choices=["KILL", "TERM", "INT"])
    ap.add_argument("--seed", type=int, default=0, help="of the moments drawn")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="params override, e.g. train.epochs=2")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    work = Path(tempfile.mkdtemp(prefix="kill_probe."))
    try:
        base = make_base(work / "base")
        if args.overrides:  # composed by DVC itself, as a user's `dvc exp run -S` would be
            sh(["dvc", "exp", "run", *sum((["-S", o] for o in args.overrides), []), "download"], base)
            sh(["git", "add", "-A"], base)
            sh(["git", "commit", "-qm", "params"], base)
        stages = yaml.safe_load((base / "dvc.yaml").read_text())["stages"]
        for stage in args.stages:
            sh(["dvc", "repro", stage], base)
            sh(["git", "add", "-A"], base)
            sh(["git", "commit", "-qm", f"{stage} run", "--allow-empty"], base)
            seconds, _ = repro(base, stage, force=True)  # the reference, and how long a run takes
            reference = digests(base, outputs(stages[stage]))
            for name in args.signals:
                repo = work / f"{stage}-{name}"
                shutil.copytree(base, repo, symlinks=True)
                delay = rng.uniform(0.1, 0.9) * seconds
                killed, left, lock_broken = kill(repo, stage, name, delay)
                rerun, out = repro(repo, stage, force=False)
                ran = f"Running stage '{stage}'" in out
                after = digests(repo, outputs(stages[stage]))
                result = {
                    "stage": stage, "signal": name, "at_s": round(delay, 2), "run_s": round(seconds, 2), **killed,
                    "temporaries_after_kill": left, "dvc_lock_cut_off_by_the_kill": lock_broken,
                    # 1. as a user would: `dvc repro` (DVC may restore the outputs from its cache)
                    "rerun_s": round(rerun, 2), "rerun_ran_the_stage": ran, "rerun_outputs_equal": after == reference,
                }
                # 2. the stage itself, forced: it sweeps the killed run's temporaries and, with
                # resume on, carries on from the killed run's last saved state
                _, left, broken = kill(repo, stage, name, delay)
                forced, out = repro(repo, stage, force=True)
                after = digests(repo, outputs(stages[stage]))
                result.update({
                    "temporaries_after_second_kill": left, "dvc_lock_cut_off_by_the_second_kill": broken,
                    "forced_rerun_s": round(forced, 2), "resumed": "resuming" in out, "outputs_equal": after == reference,
                    "differing": sorted(k for k in reference.keys() | after.keys() if reference.get(k) != after.get(k)),
                    "temporaries_after_rerun": strays(repo),
                    "git_status": sh(["git", "status", "--porcelain"], repo).splitlines(),
                    "dvc_status_clean": "up to date" in sh(["dvc", "status", stage], repo),
                })
                result["ok"] = (result["rerun_outputs_equal"] and result["outputs_equal"] and not result["git_status"]
                                and result["dvc_status_clean"] and not result["temporaries_after_rerun"])
                print(json.dumps(result), flush=True)
                shutil.rmtree(repo)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
