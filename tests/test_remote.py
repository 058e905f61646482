"""Sharing artifacts through DVC remotes, and experiment workflows, with real `dvc` commands.

The S3 tests run against a real S3-compatible server (moto's server mode) on 127.0.0.1, started and
stopped here, with IAM authentication switched on so that a wrong secret key is really refused.

One person ("alice") runs `dvc repro`, commits, `git push`es to a bare origin and `dvc push`es to S3;
colleagues clone the origin. The repro and the queued experiment grid are shared by the tests of this
module (module-scoped fixtures); the tests only read that shared state or work in their own clones.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import env, make_repo, run

boto3 = pytest.importorskip("boto3", reason="the S3 tests need the dev extra: pip install -e '.[dev]'")
pytest.importorskip("dvc_s3", reason="the S3 tests need dvc-s3: pip install -e '.[dev]'")
pytest.importorskip("moto.server", reason="the S3 tests need moto[server]: pip install -e '.[dev]'")

BUCKET = "imdb-lstm"
STAGES = ["download", "tokenize", "vocab", "train", "evaluate"]
ARTIFACTS = ["data/raw", "data/tokens", "data/vocab", "models/classifier.pt"]
GRID = ["0.001", "0.0005"]  # train.lr of the queued experiments


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(repo: Path, rel: str) -> dict[str, str]:
    path = repo / rel
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def ran_stages(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


# --------------------------------------------------------------------------- the S3 server


@pytest.fixture(scope="module", autouse=True)
def aws_isolated(tmp_path_factory):
    """Keep the user's AWS profile, credentials and instance metadata out of every command run here."""
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                mp.delenv(name)
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="module")
def s3(tmp_path_factory, aws_isolated):
    """A moto S3 server on 127.0.0.1 with a bucket and one IAM user allowed s3:*, auth enforced.

    Yields url, bucket and the user's key id and secret. DVC does not create buckets: we do, as admin,
    before switching authentication on.
    """
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited {proc.returncode}:\n{log.read_text()}")
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not answer on {url}:\n{log.read_text()}") from None
                time.sleep(0.1)

        admin = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="admin", aws_secret_access_key="admin")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="dvc")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="dvc", PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="dvc")["AccessKey"]
        boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
        # From now on every request must be signed by a known key with a policy that allows it.
        req = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).close()

        yield SimpleNamespace(url=url, bucket=BUCKET, key_id=key["AccessKeyId"], secret=key["SecretAccessKey"],
                              client=boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                                                  aws_access_key_id=key["AccessKeyId"],
                                                  aws_secret_access_key=key["SecretAccessKey"]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def add_s3_remote(repo: Path, s3, name: str = "s3", secret: str | None = None, default: bool = False,
                  endpoint: str | None = None, local: bool = False) -> None:
    """The README recipe: url and endpoint in .dvc/config (or .dvc/config.local), credentials in config.local."""
    scope = ["--local"] if local else []
    run(["dvc", "remote", "add", *scope, *(["-d"] if default else []), name, f"s3://{s3.bucket}/store"], repo)
    run(["dvc", "remote", "modify", *scope, name, "endpointurl", endpoint or s3.url], repo)
    run(["dvc", "remote", "modify", "--local", name, "access_key_id", s3.key_id], repo)
    run(["dvc", "remote", "modify", "--local", name, "secret_access_key", secret or s3.secret], repo)


def clone(origin: Path, dest: Path, s3=None) -> Path:
    """A colleague's fresh clone: git only, no DVC cache; their own credentials in .dvc/config.local."""
    run(["git", "clone", "-q", str(origin), str(dest)], dest.parent)
    if s3 is not None:
        run(["dvc", "remote", "modify", "--local", "s3", "access_key_id", s3.key_id], dest)
        run(["dvc", "remote", "modify", "--local", "s3", "secret_access_key", s3.secret], dest)
    return dest


# --------------------------------------------------------------------------- the shared repro


@pytest.fixture(scope="module")
def alice(tmp_path_factory, s3):
    """The tiny pipeline reproduced once, committed, pushed to a bare git origin and to S3 (default remote)."""
    base = tmp_path_factory.mktemp("team")
    origin = base / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], base)
    repo = make_repo(base / "alice")
    add_s3_remote(repo, s3, default=True)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    first = run(["dvc", "repro"], repo)
    assert ran_stages(first.stdout) == set(STAGES), first.stdout
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline run, S3 remote"], repo)
    run(["git", "push", "-q", "origin", "main"], repo)
    pushed = run(["dvc", "push"], repo)
    return SimpleNamespace(repo=repo, origin=origin, base=base, push_output=pushed.stdout)


@pytest.fixture(scope="module")
def grid(alice):
    """A 2-experiment grid queued and run by a queue worker in alice's repo; name -> train.lr."""
    repo = alice.repo
    queued = run(["dvc", "exp", "run", "--queue", "-S", f"train.lr={','.join(GRID)}"], repo)
    assert queued.stdout.count("Queued experiment") == len(GRID), queued.stdout
    # The worker `queue start` leaves behind inherits its stdout: a captured pipe would stay open,
    # and the test hang, for as long as the worker lives. Its output goes to a file instead.
    with open(alice.base / "queue-start.log", "w+") as log:
        started = subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=repo, env=env(), stdout=log,
                                 stderr=subprocess.STDOUT)
        log.seek(0)
        assert started.returncode == 0, log.read()
    deadline = time.monotonic() + 600
    while True:
        time.sleep(5)  # each `dvc queue status` costs a second of CPU: poll gently
        status = run(["dvc", "queue", "status"], repo).stdout
        if not any(state in status for state in ("Queued", "Running")):
            break
        if time.monotonic() > deadline:
            run(["dvc", "queue", "stop", "--kill"], repo, check=False)
            raise AssertionError(f"the queue did not finish in 10 minutes:\n{status}")
    if "Failed" in status:
        logs = [run(["dvc", "queue", "logs", line.split()[1]], repo, check=False).stdout
                for line in status.splitlines() if "Failed" in line]
        raise AssertionError(status + "\n".join(logs))
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    names = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                lr = rev["data"]["params"]["params.yaml"]["data"]["train"]["lr"]
                names[rev["name"]] = lr
    return SimpleNamespace(names=names, status=status, rows=rows)


# --------------------------------------------------------------------------- the default remote


def test_default_remote_is_a_per_user_directory_that_works_out_of_the_box(tmp_path, monkeypatch):
    """The committed .dvc/config: analytics off, core.remote set; push and a fresh clone's pull need no setup."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # `~` in the remote url resolves here
    repo = make_repo(tmp_path / "a")
    config = dict(line.split("=", 1) for line in run(["dvc", "config", "--list", "--project"], repo).stdout.split())
    assert config["core.analytics"] == "false"
    assert config["core.remote"] == "local-store"
    assert "url = ~/.cache/dvc-remote/imdb-lstm-pipeline" in (repo / ".dvc/config").read_text()
    store = tmp_path / "home/.cache/dvc-remote/imdb-lstm-pipeline"
    assert config["remote.local-store.url"] == str(store)  # DVC expands `~`

    # A small tracked directory stands in for the pipeline's outputs (the S3 tests push those).
    extra = repo / "data/extra"
    extra.mkdir()
    for i in range(3):
        (extra / f"part-{i}.txt").write_text(f"review {i}\n" * 100)
    run(["dvc", "add", "data/extra"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "track data/extra"], repo)
    pushed = run(["dvc", "push"], repo)  # no -r: the default remote
    assert "4 files pushed" in pushed.stdout, pushed.stdout  # 3 files + the directory listing
    assert len([p for p in (store / "files/md5").rglob("*") if p.is_file()]) == 4

    b = tmp_path / "b"
    run(["git", "clone", "-q", str(repo), str(b)], tmp_path)
    run(["dvc", "pull", "data/extra.dvc"], b)  # no setup at all in the clone
    assert digest(b, "data/extra") == digest(repo, "data/extra")
    assert json.loads(run(["dvc", "status", "--json", "data/extra.dvc"], b).stdout) == {}
    assert json.loads(run(["dvc", "status", "-c", "--json", "data/extra.dvc"], b).stdout) == {}


# --------------------------------------------------------------------------- S3 round trip


@pytest.fixture(scope="module")
def bob(alice, s3, tmp_path_factory):
    """A colleague's fresh clone of the origin, with their own credentials, after `dvc pull`."""
    repo = clone(alice.origin, tmp_path_factory.mktemp("bob") / "bob", s3)
    pulled = run(["dvc", "pull"], repo)
    return SimpleNamespace(repo=repo, pull_output=pulled.stdout)


def test_push_to_s3_then_fresh_clone_pulls_everything_in_sync(alice, s3, bob):
    assert "files pushed" in alice.push_output, alice.push_output
    stored = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="store/files/md5/")
    assert stored["KeyCount"] > 0

    committed = (bob.repo / ".dvc/config").read_text()
    assert s3.url in committed and "s3://" in committed
    assert s3.secret not in committed and s3.key_id not in committed  # credentials stay in config.local
    assert s3.secret in (bob.repo / ".dvc/config.local").read_text()
    run(["git", "check-ignore", "-q", ".dvc/config.local"], bob.repo)  # never committed

    assert "files fetched" in bob.pull_output, bob.pull_output
    for rel in ARTIFACTS:
        assert digest(bob.repo, rel) == digest(alice.repo, rel), rel

    status = run(["dvc", "status"], bob.repo).stdout
    assert "Data and pipelines are up to date" in status, status
    cloud = run(["dvc", "status", "-c"], bob.repo).stdout
    assert "Cache and remote 's3' are in sync" in cloud, cloud
    assert json.loads(run(["dvc", "status", "-c", "--json"], bob.repo).stdout) == {}
    again = run(["dvc", "repro"], bob.repo)
    assert ran_stages(again.stdout) == set(), again.stdout
    assert "Data and pipelines are up to date" in again.stdout, again.stdout


def test_wrong_secret_key_is_refused_with_a_clear_error(alice, s3, tmp_path):
    bob = clone(alice.origin, tmp_path / "bob")
    add_s3_remote(bob, s3, name="bad", secret="not-the-secret", local=True)
    p = run(["dvc", "pull", "-r", "bad"], bob, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    # S3 refuses the signature: 403 on HEAD requests (no body), SignatureDoesNotMatch on others.
    assert "ERROR: failed to" in out and ("Forbidden" in out or "SignatureDoesNotMatch" in out), out
    assert "not-the-secret" not in out
    assert not (bob / "data/vocab").exists()


def test_unreachable_endpoint_fails_fast_with_a_clear_error(alice, s3, tmp_path, monkeypatch):
    bob = clone(alice.origin, tmp_path / "bob")
    closed = f"http://127.0.0.1:{free_port()}"
    add_s3_remote(bob, s3, name="down", endpoint=closed, local=True)
    run(["dvc", "remote", "modify", "--local", "down", "connect_timeout", "2"], bob)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries; DVC has no remote option for them
    start = time.monotonic()
    p = run(["dvc", "pull", "-r", "down"], bob, check=False)
    took = time.monotonic() - start
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "ERROR" in out and "Could not connect to the endpoint URL" in out and closed in out, out
    assert took < 60, took


# --------------------------------------------------------------------------- experiments


def test_queued_grid_runs_once_upstream_and_exp_show_compares(alice, grid):
    assert sorted(grid.names.values()) == sorted(float(lr) for lr in GRID), grid.names
    assert grid.status.count("Success") == len(GRID), grid.status

    # Params and metrics side by side, one row per experiment.
    # DVC prefixes a metric with its file when another metrics file has the same name (`--keep` is re.match).
    keep = r"Experiment|train\.lr$|(metrics/evaluate\.json:)?(accuracy|roc_auc)$"
    csv = run(["dvc", "exp", "show", "--csv", "--drop", ".*", "--keep", keep], alice.repo).stdout
    header, *lines = csv.strip().splitlines()
    cols = [c.removeprefix("metrics/evaluate.json:") for c in header.split(",")]
    assert {"Experiment", "train.lr", "accuracy", "roc_auc"} <= set(cols), csv
    by_name = {row.split(",")[cols.index("Experiment")]: row.split(",") for row in lines}
    for name, lr in grid.names.items():
        row = by_name[name]
        assert float(row[cols.index("train.lr")]) == lr
        assert 0.0 <= float(row[cols.index("accuracy")]) <= 1.0

    # Each experiment ran only train and evaluate; download/tokenize/vocab came from the cache.
    for name in grid.names:
        logs = run(["dvc", "queue", "logs", name], alice.repo).stdout
        assert ran_stages(logs) == {"train", "evaluate"}, logs
        for stage in ["download", "tokenize", "vocab"]:
            assert f"Stage '{stage}' didn't change, skipping" in logs, logs


def test_exp_push_and_pull_between_clones(alice, grid, s3, bob, tmp_path):
    name = next(iter(grid.names))
    pushed = run(["dvc", "exp", "push", "origin", name], alice.repo)
    assert name in pushed.stdout, pushed.stdout
    refs = run(["git", "ls-remote", str(alice.origin), "refs/exps/*"], alice.repo).stdout
    assert refs.strip(), "no experiment refs on origin"

    # Carol clones and shares bob's cache (one machine, one cache: the baseline data is already there).
    carol = clone(alice.origin, tmp_path / "carol", s3)
    run(["dvc", "cache", "dir", "--local", str(bob.repo / ".dvc/cache")], carol)
    # The experiment's model exists only in alice's cache and on S3, so far.
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], alice.repo).stdout.split()
    ref = next(r for r in refs if r.endswith(f"/{name}"))
    lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], alice.repo).stdout)
    md5 = next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models/classifier.pt")
    model_object = bob.repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    assert not model_object.exists()

    assert name not in run(["dvc", "exp", "list", "--all-commits"], carol).stdout
    assert name in run(["dvc", "exp", "list", "--all-commits", "origin"], carol).stdout
    pulled = run(["dvc", "exp", "pull", "origin", name], carol)
    assert name in pulled.stdout, pulled.stdout
    assert name in run(["dvc", "exp", "list", "--all-commits"], carol).stdout
    assert model_object.is_file()  # fetched from S3

    # Applying it needs no rerun: params, metrics and every output match alice's experiment.
    run(["dvc", "exp", "apply", name], carol)
    assert json.loads(run(["dvc", "status", "--json"], carol).stdout) == {}
    assert json.loads(run(["dvc", "status", "-c", "--json"], carol).stdout) == {}
    assert f"lr: {grid.names[name]}" in (carol / "params.yaml").read_text()
    assert hashlib.md5((carol / "models/classifier.pt").read_bytes()).hexdigest() == md5
    shown = json.loads(run(["dvc", "exp", "show", "--json"], alice.repo).stdout)
    ev = next(rev["data"]["metrics"]["metrics/evaluate.json"]["data"]
              for row in shown for exp in row.get("experiments") or [] for rev in exp["revs"] if rev["name"] == name)
    assert json.loads((carol / "metrics/evaluate.json").read_text()) == ev


def test_metrics_diff_between_commits_and_between_experiments(alice, grid):
    a, b = sorted(grid.names)
    between_exps = json.loads(run(["dvc", "metrics", "diff", a, b, "--json"], alice.repo).stdout)
    ev = between_exps["metrics/evaluate.json"]
    assert set(ev) >= {"accuracy", "loss", "roc_auc"}
    assert ev["loss"]["old"] != ev["loss"]["new"]  # different learning rates, different models

    # A branch from an experiment is an ordinary commit: diff it against the baseline commit.
    run(["dvc", "exp", "branch", a, "tuned"], alice.repo)
    between_commits = json.loads(run(["dvc", "metrics", "diff", "main", "tuned", "--json"], alice.repo).stdout)
    ev = between_commits["metrics/evaluate.json"]
    assert ev["loss"]["old"] != ev["loss"]["new"]
    assert "metrics/vocab.json" not in between_commits  # upstream metrics unchanged: not in the diff
    params = json.loads(run(["dvc", "params", "diff", "main", "tuned", "--json"], alice.repo).stdout)
    assert params["params.yaml"]["train.lr"]["new"] == grid.names[a]


def test_plots_diff_writes_html(alice, grid, tmp_path):
    a = sorted(grid.names)[0]
    out = tmp_path / "plots"
    run(["dvc", "plots", "diff", "main", a, "-o", str(out)], alice.repo)
    index = out / "index.html"
    assert index.is_file()
    html = index.read_text()
    for plot in ["plots/evaluate/roc.json", "plots/evaluate/confusion.json", "Training curves (loss)"]:
        assert plot in html, plot
    assert "main" in html and a in html
