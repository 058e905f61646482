import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.common import atomic_dir, atomic_file


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_file_gets_the_usual_mode_not_mkstemps_owner_only(tmp_path, umask_022):
    out = tmp_path / "metrics" / "m.json"
    with atomic_file(out) as tmp:
        tmp.write_text("{}")
    assert out.read_text() == "{}"
    assert out.stat().st_mode & 0o777 == 0o644


def test_atomic_file_leaves_nothing_when_the_block_fails(tmp_path):
    out = tmp_path / "m.json"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_atomic_dir_swaps_in_whole_and_keeps_old_on_failure(tmp_path, umask_022):
    out = tmp_path / "vocab"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    assert out.stat().st_mode & 0o777 == 0o755
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab"]


def test_stale_temporaries_of_dead_runs_are_swept_live_ones_kept(tmp_path, monkeypatch):
    import os
    import subprocess

    from pipeline.common import sweep_stale

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    stale = [tmp_path / f"models/.classifier.pt.{dead.pid}.ab12.tmp", tmp_path / "models/.train.resume.pt.x1y2.tmp"]
    live = tmp_path / f"models/.lm.pt.{os.getpid()}.cd34.tmp"
    keep = tmp_path / "models/classifier.pt"
    for p in [*stale, live, keep]:
        p.write_text("x")
    (tmp_path / "data/.raw.q9.tmp").mkdir(parents=True)  # an extraction folder of an old version
    assert sorted(sweep_stale()) == sorted([Path("data/.raw.q9.tmp"), *(p.relative_to(tmp_path) for p in stale)])
    assert live.exists() and keep.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_zombie_or_a_reused_pid_does_not_keep_a_temporary(tmp_path, monkeypatch):
    import os
    import subprocess
    import time

    from pipeline.common import sweep_stale

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    zombie = subprocess.Popen(["true"])  # ends, and stays a zombie until waited for
    time.sleep(0.3)
    newer = subprocess.Popen(["sleep", "30"])  # alive, but started after the temporary below
    try:
        of_zombie = tmp_path / f"data/.tokens.{zombie.pid}.ab12.tmp"
        of_reused = tmp_path / f"data/.raw.{newer.pid}.cd34.tmp"
        mine = tmp_path / f"data/.vocab.{os.getpid()}.ef56.tmp"
        for p in (of_zombie, of_reused, mine):
            p.mkdir()
        os.utime(of_reused, (time.time() - 3600, time.time() - 3600))  # made an hour before `newer` started
        assert sorted(sweep_stale()) == sorted(p.relative_to(tmp_path) for p in (of_zombie, of_reused))
        assert mine.exists()
    finally:
        newer.kill()
        newer.wait()
        zombie.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_atomic_dir_swap_never_leaves_the_folder_missing(tmp_path):
    import threading

    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "f").write_text("0")
    missing, done = [], threading.Event()

    def watch():
        while not done.is_set():
            if not out.is_dir():
                missing.append(1)

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        for i in range(1, 200):
            with atomic_dir(out) as tmp:
                (tmp / "f").write_text(str(i))
    finally:
        done.set()
        reader.join()
    assert (out / "f").read_text() == "199" and missing == []
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left


@pytest.mark.parametrize("env, spincount", [
    ({}, "1000"),                              # the project's default: spin briefly, then sleep
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "None"),   # a policy the user set is libgomp's to apply
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "None"),
    ({"GOMP_SPINCOUNT": "5"}, "5"),
])
def test_openmp_waiting_is_set_before_torch_loads_unless_the_user_set_it(env, spincount):
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import os, pipeline, sys; print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [spincount, "False"]  # libgomp reads it once, when torch loads it
