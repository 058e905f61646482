"""The download stage against a real HTTP server on 127.0.0.1 that misbehaves on purpose.

Every test runs the real CLI (`python -m pipeline.download`, `dvc repro`, `dvc exp run`) in a
temporary git+DVC copy of the project whose params point at the server.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import re
import resource
import shutil
import socket
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import SAMPLE, make_repo, run
from pipeline.common import PipelineError
from flaky_server import FlakyServer

LAYOUT = ["aclImdb/train/pos", "aclImdb/train/neg", "aclImdb/train/unsup", "aclImdb/test/pos", "aclImdb/test/neg"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A .tar.gz of (name, content) files and ready-made TarInfo entries (links, devices)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                name, content = m
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def tiny_archive() -> bytes:
    """The aclImdb layout with one review per folder, padded with incompressible bytes so that
    "half the body" is a real cut in the middle of the gzip stream."""
    reviews = [(f"{d}/0_7.txt", b"A fine film.") for d in LAYOUT]
    return make_tar([("aclImdb/README", random.Random(0).randbytes(200_000)), *reviews])


TINY = tiny_archive()
SAMPLE_BYTES = SAMPLE.read_bytes()


def info(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname = kind, linkname
    return m


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    # Short timeout and backoff keep the retry tests fast; params stay the only knob.
    return make_repo(tmp_path_factory.mktemp("download") / "repo", {"download": {"timeout": 2, "retries": 3, "backoff": 0.01}})


@pytest.fixture
def proj(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "repo", symlinks=True))


@pytest.fixture
def server():
    s = FlakyServer({"/sample.tar.gz": SAMPLE_BYTES, "/tiny.tar.gz": TINY})
    yield s
    s.close()


def use(proj: Path, url: str, sha256: str, mirrors: list[str] = (), **download) -> None:
    """Point params.yaml at one source named `test`."""
    path = proj / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["download"]["sources"]["test"] = {"url": url, "sha256": sha256, "mirrors": list(mirrors)}
    params["download"].update(source="test", **download)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def stage(proj: Path, **kw):
    return run(["python", "-m", "pipeline.download"], proj, check=False, **kw)


def assert_ok(p, proj: Path) -> dict:
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert sorted((proj / "data/raw").iterdir()) == [proj / "data/raw/labels.json", proj / "data/raw/reviews.parquet"]  # the table and its label map, no temporaries
    table = pq.read_table(proj / "data/raw/reviews.parquet")
    for d in LAYOUT:
        assert any(i.startswith(d.removeprefix("aclImdb/")) for i in table["id"].to_pylist()), d
    assert not list((proj / "data/downloads").rglob("*.part"))
    return json.loads((proj / "metrics/download.json").read_text())


def assert_fails(p, proj: Path, pattern: str) -> str:
    """Exit 1, exactly one line on stderr matching `pattern`, and no data/raw, whole or half."""
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert not (proj / "data/raw").exists()
    assert not list((proj / "data").rglob(".*.tmp"))
    return lines[0]


def test_sample_over_http_is_verified_and_extracted(proj, server):
    use(proj, server.url("/sample.tar.gz"), sha(SAMPLE_BYTES))
    metrics = assert_ok(stage(proj), proj)
    assert metrics["reviews"] == {"train/pos": 1000, "train/neg": 1000, "train/unsup": 2000, "test/pos": 1000, "test/neg": 1000}
    assert metrics["sha256"] == sha(SAMPLE_BYTES)
    assert server.hits("/sample.tar.gz") == 1 and server.ranges("/sample.tar.gz") == []
    assert (proj / "data/downloads" / sha(SAMPLE_BYTES)[:16] / "sample.tar.gz").read_bytes() == SAMPLE_BYTES


def test_dropped_connection_resumes_with_range(proj, server):
    server.script("/tiny.tar.gz", ["drop", "ok"])
    use(proj, server.url("/tiny.tar.gz"), sha(TINY))
    p = stage(proj)
    assert_ok(p, proj)
    assert server.ranges("/tiny.tar.gz") == [f"bytes={len(TINY) // 2}-"]
    assert "connection closed after" in p.stdout


def test_reset_connection_is_retried_and_ends_verified(proj, server):
    # An RST may discard bytes the client had not read yet, so the resume offset is not fixed.
    server.script("/tiny.tar.gz", ["reset", "ok"])
    use(proj, server.url("/tiny.tar.gz"), sha(TINY))
    assert_ok(stage(proj), proj)
    assert server.hits("/tiny.tar.gz") == 2


def test_stalled_read_times_out_then_resumes(proj, server):
    server.script("/tiny.tar.gz", ["stall", "ok"])
    use(proj, server.url("/tiny.tar.gz"), sha(TINY), timeout=0.5)
    p = stage(proj)
    assert_ok(p, proj)
    assert "timed out" in p.stdout
    assert server.ranges("/tiny.tar.gz") == [f"bytes={len(TINY) // 2}-"]


def test_server_ignoring_range_starts_over_cleanly(proj, server):
    server.script("/tiny.tar.gz", ["drop", "ignore_range"])
    use(proj, server.url("/tiny.tar.gz"), sha(TINY))
    assert_ok(stage(proj), proj)  # appending the 200's full body would break the hash
    assert server.ranges("/tiny.tar.gz") == [f"bytes={len(TINY) // 2}-"]


def test_500_then_200_is_retried(proj, server):
    server.script("/tiny.tar.gz", [500, "ok"])
    use(proj, server.url("/tiny.tar.gz"), sha(TINY))
    p = stage(proj)
    assert_ok(p, proj)
    assert server.hits("/tiny.tar.gz") == 2
    assert "HTTP 500 Internal Server Error; retry 1/3" in p.stdout


def test_persistent_503_gives_up_after_the_retries(proj, server):
    server.script("/tiny.tar.gz", [503] * 10)
    use(proj, server.url("/tiny.tar.gz"), sha(TINY), retries=2)
    assert_fails(stage(proj), proj, r"HTTP 503 Service Unavailable, gave up after 3 attempts$")
    assert server.hits("/tiny.tar.gz") == 3


@pytest.mark.parametrize("code,reason", [(404, "Not Found"), (403, "Forbidden")])
def test_client_errors_fail_at_once(proj, server, code, reason):
    server.script("/tiny.tar.gz", [code])
    url = server.url("/tiny.tar.gz")
    use(proj, url, sha(TINY))
    line = assert_fails(stage(proj), proj, f"HTTP {code} {reason}")
    assert line == f"error: download of {url} failed: HTTP {code} {reason}"
    assert server.hits("/tiny.tar.gz") == 1


def test_wrong_checksum_deletes_the_download(proj, server):
    url = server.url("/tiny.tar.gz")
    use(proj, url, "0" * 64)
    line = assert_fails(stage(proj), proj, "sha256 mismatch")
    assert line == f"error: download of {url} failed: sha256 mismatch for {url}: expected {'0' * 64}, found {sha(TINY)}"
    assert [p for p in (proj / "data/downloads").rglob("*") if p.is_file()] == []


def test_wrong_checksum_of_a_local_file_keeps_the_file(proj, tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    archive.write_bytes(TINY)
    use(proj, str(archive), "f" * 64)
    assert_fails(stage(proj), proj, f"expected {'f' * 64}, found {sha(TINY)}")
    assert archive.read_bytes() == TINY


@pytest.mark.parametrize(
    "data,message",
    [
        (TINY[: len(TINY) // 2], r"^error: tiny\.tar\.gz is truncated or corrupt \("),
        (b"<html>Not an archive</html>\n" * 50, r"^error: tiny\.tar\.gz is not a gzip or tar archive$"),
        (make_tar([("aclImdb/train/pos/0_7.txt", b"ok")]), "missing aclImdb/train/neg, aclImdb/train/unsup, aclImdb/test/pos, aclImdb/test/neg$"),
    ],
    ids=["truncated-gzip", "not-a-tar", "wrong-layout"],
)
def test_bad_archives_fail_with_one_line(proj, server, data, message):
    server.files["/tiny.tar.gz"] = data
    use(proj, server.url("/tiny.tar.gz"), sha(data))
    assert_fails(stage(proj), proj, message)


@pytest.mark.parametrize(
    "member,message",
    [
        (("../evil", b"x"), r"path '\.\./evil' leaves the destination"),
        (("aclImdb/../../evil", b"x"), r"path 'aclImdb/\.\./\.\./evil' leaves the destination"),
        (("/tmp/evil", b"x"), r"absolute path '/tmp/evil'"),
        (info("aclImdb/evil", tarfile.SYMTYPE, "/etc/passwd"), r"symlink 'aclImdb/evil' -> '/etc/passwd'"),
        (info("aclImdb/evil", tarfile.LNKTYPE, "aclImdb/README"), r"hard link 'aclImdb/evil'"),
        (info("aclImdb/evil", tarfile.CHRTYPE), r"special file 'aclImdb/evil'"),
        (info("aclImdb/evil", tarfile.FIFOTYPE), r"special file 'aclImdb/evil'"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device", "fifo"],
)
def test_unsafe_members_are_refused(proj, server, tmp_path, member, message):
    reviews = [(f"{d}/0_7.txt", b"ok") for d in LAYOUT]
    data = make_tar([("aclImdb/README", b"readme"), member, *reviews])
    server.files["/tiny.tar.gz"] = data
    use(proj, server.url("/tiny.tar.gz"), sha(data))
    assert_fails(stage(proj), proj, r"^error: unsafe archive tiny\.tar\.gz: " + message)
    assert not any(p.name == "evil" for p in tmp_path.rglob("evil"))


def test_first_mirror_404s_the_next_one_works(proj, server):
    missing, good = server.url("/missing.tar.gz"), server.url("/tiny.tar.gz")
    use(proj, missing, sha(TINY), mirrors=[good])
    p = stage(proj)
    assert_ok(p, proj)
    assert [path for path, _ in server.requests] == ["/missing.tar.gz", "/tiny.tar.gz"]
    assert f"{missing}: HTTP 404 Not Found; trying the next mirror" in p.stdout


def test_all_mirrors_failing_names_each(proj, server):
    a, b = server.url("/a.tar.gz"), server.url("/b.tar.gz")
    use(proj, a, sha(TINY), mirrors=[b])
    line = assert_fails(stage(proj), proj, "all 2 sources failed")
    assert line == f"error: all 2 sources failed: {a}: HTTP 404 Not Found; {b}: HTTP 404 Not Found"


def test_unknown_host_says_offline_and_points_to_local_copies(proj):
    use(proj, "http://no-such-host.invalid/aclImdb_v1.tar.gz", sha(TINY))
    assert_fails(
        stage(proj), proj,
        r"cannot resolve host .*no network or a wrong host name\?; use a local copy "
        r"\(download\.source=/path/to/archive\.tar\.gz@sha256:<hex>\) or the bundled sample \(download\.source=sample\)$",
    )


def test_refused_connection_is_retried_then_points_to_local_copies(proj):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    use(proj, f"http://127.0.0.1:{port}/aclImdb_v1.tar.gz", sha(TINY), retries=1)
    assert_fails(stage(proj), proj, r"cannot connect \(Connection refused\), gave up after 2 attempts; use a local copy")


def test_disk_full_is_one_line_and_keeps_the_partial_download(proj, server):
    def small_files():  # writes past 64 KiB fail like a full disk (EFBIG; Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    use(proj, server.url("/tiny.tar.gz"), sha(TINY))
    assert_fails(stage(proj, preexec_fn=small_files), proj, r"no space left writing data/downloads/\w+/tiny\.tar\.gz\.part: File too large \(disk full\?\)")
    (part,) = (proj / "data/downloads").rglob("*.part")
    assert part.stat().st_size == 64 * 1024
    p = stage(proj)  # with room again, the next run resumes where the full disk stopped it
    assert_ok(p, proj)
    assert server.ranges("/tiny.tar.gz") == [f"bytes={64 * 1024}-"]


def test_rerun_does_not_fetch_again_and_dvc_sees_no_change(proj, server):
    use(proj, server.url("/tiny.tar.gz"), sha(TINY))
    run(["dvc", "repro", "download"], proj)
    lock = (proj / "dvc.lock").read_text()
    metrics = (proj / "metrics/download.json").read_text()
    assert server.hits("/tiny.tar.gz") == 1
    again = run(["dvc", "repro", "--force", "download"], proj)
    assert "Running stage 'download'" in again.stdout
    assert server.hits("/tiny.tar.gz") == 1
    assert (proj / "dvc.lock").read_text() == lock
    assert (proj / "metrics/download.json").read_text() == metrics


def test_one_override_switches_to_a_local_archive_pinned_by_hash(proj, tmp_path):
    archive = tmp_path / "mirror" / "aclImdb_v1-text.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(TINY)
    spec = f"{archive}@sha256:{sha(TINY)}"
    run(["dvc", "exp", "run", "download", "-S", f"download.source={spec}"], proj)
    metrics = json.loads((proj / "metrics/download.json").read_text())
    assert metrics["source"] == spec and metrics["reviews"]["test/neg"] == 1
    assert not (proj / "data/downloads").exists()  # a local archive is read in place

    shutil.rmtree(proj / "data/raw")
    params = proj / "params.yaml"
    params.write_text(params.read_text().replace(spec, f"{archive.as_uri()}@sha256:{'0' * 64}"))
    assert_fails(stage(proj), proj, f"expected {'0' * 64}, found {sha(TINY)}")


def test_unknown_source_lists_the_choices(proj):
    params = proj / "params.yaml"
    params.write_text(params.read_text().replace("source: sample", "source: nope"))
    line = assert_fails(stage(proj), proj, "download.source must be one of")
    assert line == (
        "error: download.source must be one of ['imdb', 'imdb-text', 'sample'] or '<path or URL>@sha256:<64 hex digits>', got 'nope'"
    )


def test_backoff_doubles_is_capped_and_progress_resets_the_count(tmp_path):
    # In-process, no server: only the retry arithmetic, which the CLI tests keep short.
    from pipeline.download import SourceFailed, Transient, download

    part = tmp_path / "a.part"
    outcomes = iter(["fail", "fail", "grow", "fail", "fail", "fail", "fail"])

    def fetch(url, path, timeout):
        if next(outcomes) == "grow":
            with open(path, "ab") as f:
                f.write(b"x")
        raise Transient("HTTP 503 Service Unavailable")

    sleeps: list[float] = []
    with pytest.raises(SourceFailed, match=r"HTTP 503 Service Unavailable, gave up after 7 attempts"):
        download("http://x/a", part, 1.0, 4, 10.0, fetch=fetch, sleep=sleeps.append)
    assert sleeps == [10.0, 20.0, 10.0, 20.0, 40.0, 60.0]


def test_the_table_keeps_every_review_in_order_and_counts_bad_utf8(tmp_path):
    from pipeline import raw as R

    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(make_tar([
        ("aclImdb/README", b"not a review"),
        ("aclImdb/train/pos/10_9.txt", b"ten"), ("aclImdb/train/pos/9_8.txt", b"nine"),  # numeric, not text, order
        ("aclImdb/train/neg/0_2.txt", b"Caf\xe9 \xff"),  # Latin-1, not UTF-8
        ("aclImdb/train/unsup/3_0.txt", b"unlabelled"), ("aclImdb/train/unsup/notes.md", b"skipped"),
        ("aclImdb/test/pos/1_7.txt", b"p"), ("aclImdb/test/neg/2_1.txt", b"n"),
    ]))
    table, names, counts = R.read_aclimdb(archive)
    assert table.schema.equals(R.SCHEMA) and names == ["neg", "pos"]
    assert table.to_pydict() == {
        "id": ["train/pos/9_8", "train/pos/10_9", "train/neg/0_2", "train/unsup/3_0", "test/pos/1_7", "test/neg/2_1"],
        "split": ["train", "train", "train", "unsup", "test", "test"],
        "rating": [8, 9, 2, 0, 7, 1],
        "label": [1, 1, 0, None, 1, 0],
        "text": ["nine", "ten", "Caf\ufffd \ufffd", "unlabelled", "p", "n"],
    }
    assert counts == {"files": 8, "bad_utf8": 1, "reviews": {
        "train/pos": 2, "train/neg": 1, "train/unsup": 1, "test/pos": 1, "test/neg": 1}}
    # The ratings as the classes: the stars found, in numeric order; unlabelled reviews stay unlabelled.
    table, names, _ = R.read_aclimdb(archive, "rating")
    assert names == ["1", "2", "7", "8", "9"] and table["label"].to_pylist() == [3, 4, 1, None, 2, 0]
    with pytest.raises(PipelineError, match=r"download.label_column must be one of \['label', 'rating'\]"):
        R.read_aclimdb(archive, "stars")


def test_a_review_past_the_size_limit_is_refused_before_it_is_read(proj, server, monkeypatch):
    from pipeline import raw as R

    huge = make_tar([*[(f"{d}/0_7.txt", b"ok") for d in LAYOUT], ("aclImdb/test/neg/1_1.txt", b" " * (R.MAX_REVIEW_BYTES + 1))])
    server.files["/tiny.tar.gz"] = huge
    use(proj, server.url("/tiny.tar.gz"), sha(huge))
    assert_fails(stage(proj), proj, r"unsafe archive tiny\.tar\.gz: review 'aclImdb/test/neg/1_1.txt' is 1,048,577 bytes")


def test_a_workspace_with_the_old_extracted_tree_just_reruns(proj):
    # Before the table, the stage's output was data/raw/ holding aclImdb/ (100,008 files).
    old = proj / "data/raw/aclImdb/train/pos"
    old.mkdir(parents=True)
    (old / "0_9.txt").write_text("an old extracted review")
    run(["dvc", "repro", "download"], proj)
    assert sorted((proj / "data/raw").iterdir()) == [proj / "data/raw/labels.json", proj / "data/raw/reviews.parquet"]
    assert "Data and pipelines are up to date" in run(["dvc", "status", "download"], proj).stdout


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_tar_reader_sees_what_tarfile_sees(fmt):
    # Long names take a ustar prefix, a GNU long-name member or a pax header, by format.
    from pipeline import raw as R

    long_dir = "aclImdb/" + "d" * 90 + "/" + "e" * 60
    names = ["aclImdb/train/pos/1_7.txt", f"{long_dir}/x.txt", "aclImdb/é/ü.txt"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i, name in enumerate(names):
            body = random.Random(i).randbytes(i * 700)
            m = tarfile.TarInfo(name)
            m.size = len(body)
            tar.addfile(m, io.BytesIO(body))
        tar.addfile(info("aclImdb/folder", tarfile.DIRTYPE))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, m.isdir(), tar.extractfile(m).read() if m.isfile() else b"") for m in tar]
    got = [(m.name, m.type == b"5", bytes(m.data)) for m in R.iter_tar(data, "t.tar")]
    assert got == expected


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
def test_every_tar_compression_reads_and_a_cut_one_is_one_error(tmp_path, compression):
    from pipeline import raw as R
    from pipeline.common import PipelineError

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
        for d in LAYOUT:
            body = random.Random(d).randbytes(3000)  # incompressible: a cut lands inside the data
            m = tarfile.TarInfo(f"{d}/0_7.txt")
            m.size = len(body)
            tar.addfile(m, io.BytesIO(body))
    archive = tmp_path / "a.tar"
    archive.write_bytes(buf.getvalue())
    assert R.read_aclimdb(archive)[0].num_rows == 5
    archive.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    with pytest.raises(PipelineError, match=r"^a\.tar is truncated or corrupt \("):
        R.read_aclimdb(archive)


def test_a_decompression_bomb_stops_at_the_limit(tmp_path, monkeypatch):
    from pipeline import raw as R
    from pipeline.common import PipelineError

    monkeypatch.setattr(R, "MAX_TOTAL_BYTES", 1 << 20)
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(make_tar([("aclImdb/README", bytes(8 << 20))]))  # 8 MiB of zeros: ~8 kB packed
    assert archive.stat().st_size < 20_000
    with pytest.raises(PipelineError, match=r"^unsafe archive bomb\.tar\.gz: unpacks to more than 1,048,576 bytes$"):
        R.read_aclimdb(archive)
