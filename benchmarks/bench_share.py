"""Full-data artifacts, end to end: stage times, `dvc status`, `dvc push` to S3 and `dvc pull` into a fresh clone.

Copies the project into a scratch git+DVC repo, points `download.source` at an archive pinned by
hash, runs `dvc repro <target>` one stage at a time, then pushes everything DVC tracks to a real
S3-compatible server (moto) on 127.0.0.1, clones the repo and pulls. Prints one JSON object per
line: wall seconds of each command, DVC objects in the bucket, bytes pushed, the load average.

    python -m benchmarks.bench_share --archive ../shared/data/aclImdb_v1-text.tar.gz \
        --sha256 b3ea9abf41a0fd29824b9c1aa68d7533ee679c479ba71fa5804f3ba1b6f9044d
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["pipeline", "conf", "dvc.yaml", "params.yaml", "data/sample", "data/vectors/README.md", ".dvc/config",
         ".dvcignore", ".gitignore"]
BUCKET = "bench"


def sh(cmd: list[str], cwd: Path, env: dict, out: list | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    if out is not None:
        out.append(p.stdout)
    return round(time.perf_counter() - t0, 2)


def emit(**row) -> None:
    print(json.dumps({**row, "load_avg": round(os.getloadavg()[0], 2)}), flush=True)


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"moto did not start on {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", required=True, help="the dataset archive (local path)")
    ap.add_argument("--sha256", required=True)
    ap.add_argument("--stages", nargs="+", default=["download", "tokenize", "vocab"],
                    help="stages run in this order (each `dvc repro --single-item`), then shared")
    args = ap.parse_args()

    import boto3
    import yaml

    work = Path(tempfile.mkdtemp(prefix="bench_share."))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "CI": "true", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_EC2_METADATA_DISABLED": "true", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}
    moto, url = start_moto()
    try:
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                     aws_secret_access_key="x").create_bucket(Bucket=BUCKET)
        repo = work / "repo"
        for name in FILES:
            src, dst = ROOT / name, repo / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["download"]["source"] = f"{Path(args.archive).resolve()}@sha256:{args.sha256}"
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q", "-f"]):
            sh(cmd, repo, env)
        shutil.copy2(ROOT / ".dvc/config", repo / ".dvc/config")
        for cmd in (["dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/store"],
                    ["dvc", "remote", "modify", "s3", "endpointurl", url]):
            sh(cmd, repo, env)
        sh(["git", "add", "-A"], repo, env)
        sh(["git", "commit", "-qm", "init"], repo, env)

        for stage in args.stages:
            out: list[str] = []
            seconds = sh(["dvc", "repro", "--single-item", stage], repo, env, out)
            said = [line for line in out[0].splitlines() if line.startswith(f"{stage}:")]  # the stage's summary
            emit(step=f"dvc repro {stage}", seconds=seconds, stage_says=said[-1] if said else None)
        emit(step="dvc status", seconds=sh(["dvc", "status"], repo, env))
        if (repo / "data/tokens").is_dir():  # to compare with another version's tokens
            emit(step="tokens", md5={p.name: hashlib.md5(p.read_bytes()).hexdigest()
                                     for p in sorted((repo / "data/tokens").glob("*.parquet"))})
        sh(["git", "add", "-A"], repo, env)
        sh(["git", "commit", "-qm", "run"], repo, env)
        emit(step="dvc push", seconds=sh(["dvc", "push"], repo, env))
        s3 = boto3.resource("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                            aws_secret_access_key="x")
        objects = list(s3.Bucket(BUCKET).objects.all())
        emit(step="remote", objects=len(objects), bytes=sum(o.size for o in objects))

        clone = work / "clone"
        sh(["git", "clone", "-q", str(repo), str(clone)], work, env)
        emit(step="dvc pull (fresh clone)", seconds=sh(["dvc", "pull", *args.stages], clone, env))
        status = subprocess.run(["dvc", "status", *args.stages], cwd=clone, env=env, capture_output=True, text=True)
        emit(step="dvc status (fresh clone)", seconds=sh(["dvc", "status", *args.stages], clone, env),
             output=status.stdout.strip())
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
