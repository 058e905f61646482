"""The tokenize stage: cleaning, spaCy's rules, stable parallel output, the Parquet schema, odd inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, SAMPLE

from pipeline import raw as R
from pipeline import text as T
from pipeline import tokenize as TK
from pipeline.common import PipelineError


@pytest.fixture(scope="module")
def sample_table() -> pa.Table:
    return R.read_aclimdb(SAMPLE)[0]


def split(table: pa.Table, name: str) -> pa.Table:
    return table.filter(pc.equal(table["split"], name))


@pytest.fixture(scope="module")
def tokenizer():
    return T.load_tokenizer()


def test_clean_strips_breaks_decodes_entities_and_collapses_space():
    raw = "Great.<br /><br />The plot &amp; the &quot;cast&quot;<BR>end<br/>  \t\n&nbsp;x  "
    assert T.clean(raw) == 'Great. The plot & the "cast" end x'


def test_clean_cuts_to_max_chars_after_cleaning():
    assert T.clean("ab<br /><br />cd ef", max_chars=5) == "ab cd"
    assert T.clean("short", max_chars=100) == "short"


def test_decode_replaces_bad_utf8_and_says_so():
    assert T.decode("café".encode()) == ("café", False)
    text, bad = T.decode(b"bad \xff\xfe byte")
    assert bad and text == "bad \ufffd\ufffd byte"


def test_tokenize_splits_contractions_the_spacy_way(tokenizer):
    assert T.tokenize(tokenizer, ["Don't stop, it's great!"], lowercase=False) == [
        ["Do", "n't", "stop", ",", "it", "'s", "great", "!"]
    ]


def test_lowercase_applies_after_tokenizing(tokenizer):
    # spaCy's exceptions are case-aware: ":D" is one emoticon token, ":d" would be two;
    # "U.S." keeps its period as an abbreviation, "u.s." does not.
    texts = [":D Don't", "U.S. movies"]
    assert T.tokenize(tokenizer, texts, lowercase=True) == [[":d", "do", "n't"], ["u.s.", "movies"]]
    assert T.tokenize(tokenizer, [t.lower() for t in texts], lowercase=True) != T.tokenize(tokenizer, texts, lowercase=True)


def test_tokens_are_exactly_spacys(tokenizer, sample_table):
    # The stage's tokenizer skips lexical attributes it does not use; the tokens must not change.
    import spacy

    plain = spacy.blank("en").tokenizer
    reviews = split(sample_table, "unsup")["text"].to_pylist()[:300]
    texts = ["It's a GREAT film!!! 10/10 :)", "", "e-mail me @ x.com; cafés & crêpes"]
    texts += [T.clean(r) for r in reviews]
    for lowercase, attr in [(True, "lower_"), (False, "text")]:
        expected = [[getattr(t, attr) for t in doc] for doc in plain.pipe(texts)]
        assert T.tokenize(tokenizer, texts, lowercase) == expected


def test_two_workers_write_the_same_bytes_as_one(sample_table, tmp_path):
    reviews = split(sample_table, "test").slice(0, 300)
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"w{workers}.parquet"
        with TK.worker_pool(workers) as pool:
            stats = TK.tokenize_split(reviews, outs[workers], pool, True, 50000, 23, "t", window=2 * workers)
        assert stats["reviews"] == 300
    assert outs[1].read_bytes() == outs[2].read_bytes()
    table = pq.read_table(outs[2])
    assert table.schema.equals(TK.SCHEMA)
    assert table["id"].to_pylist() == reviews["id"].to_pylist()
    assert pq.ParquetFile(outs[2]).num_row_groups == 14  # ceil(300 / 23): one per chunk
    assert pq.ParquetFile(outs[2]).metadata.row_group(0).column(4).compression == "ZSTD"
    assert table["n_tokens"].to_pylist() == [len(t) for t in table["tokens"].to_pylist()]


def extracted_table(root: Path) -> pa.Table:
    """The raw table the way the stage used to see the data: an extracted aclImdb folder, each
    folder's *.txt files by numeric id, read and decoded one by one."""
    rows = []
    for split_name, folder, label in [("train", "pos", 1), ("train", "neg", 0), ("unsup", "unsup", None),
                                      ("test", "pos", 1), ("test", "neg", 0)]:
        d = root / "aclImdb" / ("train" if split_name == "unsup" else split_name) / folder
        for p in sorted(d.glob("*.txt"), key=lambda p: int(p.stem.split("_")[0])):
            rows.append({"id": f"{d.parent.name}/{folder}/{p.stem}", "split": split_name,
                         "rating": int(p.stem.split("_")[1]), "label": label, "text": T.decode(p.read_bytes())[0]})
    return pa.Table.from_pylist(rows, schema=R.SCHEMA)


def test_the_table_holds_what_extraction_gave_and_tokens_do_not_change(sample_table, raw_sample, tmp_path):
    # The stage used to extract 100,008 files and read them back; now it streams the archive into
    # one table. Same rows in the same order, so data/tokens keeps its bytes.
    old = extracted_table(raw_sample)
    assert sample_table.equals(old)
    for name, table in [("new", sample_table), ("old", old)]:
        with TK.worker_pool(1) as pool:
            TK.tokenize_split(split(table, "train"), tmp_path / f"{name}.parquet", pool, True, 50000, 1000, name)
    assert (tmp_path / "new.parquet").read_bytes() == (tmp_path / "old.parquet").read_bytes()


def write_raw(root: Path, reviews: list[tuple[str, str]]) -> None:
    """data/raw/reviews.parquet from (id, text) pairs, ids as in the archive: train/pos/3_8."""
    rows = []
    for rid, text in reviews:
        split_name, folder, stem = rid.split("/")
        rows.append({"id": rid, "split": "unsup" if folder == "unsup" else split_name,
                     "rating": int(stem.split("_")[1]), "label": {"pos": 1, "neg": 0}.get(folder), "text": text})
    (root / "data/raw").mkdir(parents=True, exist_ok=True)
    R.write(pa.Table.from_pylist(rows, schema=R.SCHEMA), root / "data/raw/reviews.parquet")
    (root / "data/raw/labels.json").write_text('["neg", "pos"]\n')


def stage_dir(tmp_path, extra=(), **tokenize):
    """A working folder with params.yaml and a raw table of a few normal reviews per folder."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tokenize"].update({"valid_fraction": 0.2, "max_chars": 1000, "chunk_size": 3, **tokenize})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    reviews = []
    for folder, rating in [("train/pos", 8), ("train/neg", 2), ("train/unsup", 0), ("test/pos", 9), ("test/neg", 1)]:
        reviews += [(f"{folder}/{i}_{rating}", f"Review {i} of {folder}: it's fine.") for i in range(5)]
    write_raw(tmp_path, reviews + list(extra))
    return tmp_path


def test_odd_inputs_are_kept_counted_and_do_not_stop_the_stage(tmp_path, monkeypatch):
    root = stage_dir(tmp_path, workers=2, unsup=False, extra=[
        ("test/pos/100_10", "Caf\ufffd au lait \ufffd was great"),  # what download makes of Latin-1 bytes
        ("test/pos/101_10", ""),
        ("test/neg/102_3", "<br /><br />  "),  # empty once cleaned
        ("test/neg/103_4", "awful " * 200_000),  # 1.2 MB
    ])
    monkeypatch.chdir(root)
    TK.main()

    metrics = json.loads((root / "metrics/tokenize.json").read_text())
    assert metrics["test"] == {"reviews": 14, "tokens": metrics["test"]["tokens"], "empty": 2, "truncated": 1}
    assert metrics["train"]["empty"] == metrics["train"]["truncated"] == 0
    assert "unsup" not in metrics and not (root / "data/tokens/unsup.parquet").exists()

    rows = {r["id"]: r for r in pq.read_table(root / "data/tokens/test.parquet").to_pylist()}
    assert rows["test/pos/100_10"]["tokens"] == ["caf", "\ufffd", "au", "lait", "\ufffd", "was", "great"]
    assert rows["test/pos/101_10"]["n_tokens"] == 0 and rows["test/pos/101_10"]["tokens"] == []
    assert rows["test/neg/102_3"]["n_tokens"] == 0
    assert rows["test/neg/103_4"]["tokens"][:2] == ["awful", "awful"]
    assert rows["test/neg/103_4"]["n_tokens"] == 167  # 1,000 characters: 166 whole words and "awf"
    assert rows["test/neg/103_4"]["rating"] == 4 and rows["test/neg/103_4"]["label"] == 0


def test_unlabelled_split_only_when_asked(tmp_path, monkeypatch):
    root = stage_dir(tmp_path, workers=1, unsup=True)
    monkeypatch.chdir(root)
    TK.main()
    table = pq.read_table(root / "data/tokens/unsup.parquet")
    assert table.num_rows == 5
    assert table["label"].null_count == 5 and set(table["rating"].to_pylist()) == {0}
    train = pq.read_table(root / "data/tokens/train.parquet")
    valid = pq.read_table(root / "data/tokens/valid.parquet")
    assert (train.num_rows, valid.num_rows) == (8, 2)  # stratified: one of each label to valid
    assert sorted(valid["label"].to_pylist()) == [0, 1]
    assert json.loads((root / "data/tokens/labels.json").read_text()) == ["neg", "pos"]  # the label map travels along


def test_missing_raw_table_is_a_one_line_error(tmp_path, monkeypatch):
    root = stage_dir(tmp_path, workers=1)
    (root / "data/raw/reviews.parquet").unlink()
    monkeypatch.chdir(root)
    with pytest.raises(PipelineError, match=r"data/raw/reviews.parquet not found \(run the download stage first\)"):
        TK.main()
    assert not (root / "data/tokens").exists()


def test_a_table_of_other_columns_is_a_one_line_error(tmp_path, monkeypatch):
    root = stage_dir(tmp_path, workers=1)
    pq.write_table(pa.table({"review": ["x"]}), root / "data/raw/reviews.parquet")
    monkeypatch.chdir(root)
    with pytest.raises(PipelineError, match="does not hold the raw-review columns"):
        TK.main()


def test_schema_is_the_documented_one():
    assert TK.SCHEMA.names == ["id", "rating", "label", "n_tokens", "tokens"]
    assert TK.SCHEMA.field("tokens").type == pa.list_(pa.string())
    assert TK.SCHEMA.field("n_tokens").type == pa.int32()
    assert R.SCHEMA.names == ["id", "split", "rating", "label", "text"]
