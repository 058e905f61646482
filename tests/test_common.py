import os

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
