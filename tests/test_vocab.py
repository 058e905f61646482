"""The vocab stage: order and ties, min_freq/max_size, encoding, metrics, pretrained vectors."""
from __future__ import annotations

import collections
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT

from pipeline import data
from pipeline import tokenize as TK
from pipeline import vocab as V
from pipeline.common import PipelineError

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def test_specials_first_then_count_then_token_for_ties():
    counts = {"b": 3, "a": 3, "c": 5, "B": 3, "d": 1, "<unk>": 9}
    vocab = V.build_vocab(counts, max_size=100, min_freq=1)
    assert vocab == [(s, 0) for s in SPECIALS] + [("c", 5), ("B", 3), ("a", 3), ("b", 3), ("d", 1)]
    assert V.build_vocab(dict(reversed(list(counts.items()))), 100, 1) == vocab  # input order does not matter


def test_min_freq_and_max_size():
    counts = {"c": 5, "a": 3, "b": 3, "d": 1}
    assert [t for t, _ in V.build_vocab(counts, 100, 2)] == SPECIALS + ["c", "a", "b"]
    assert [t for t, _ in V.build_vocab(counts, 6, 1)] == SPECIALS + ["c", "a"]  # max_size counts the specials


def test_encode_maps_unknown_tokens_to_unk():
    itos = SPECIALS + ["good", "bad"]
    lists = pa.array([["good", "zzz", "bad"], [], ["bad"]], pa.list_(pa.string()))
    assert V.encode(lists, itos).to_pylist() == [[4, 1, 5], [], [5]]
    assert V.encode(lists.slice(1), itos).to_pylist() == [[], [5]]  # sliced input, offsets rebased
    assert V.encode(lists, itos).type == pa.list_(pa.int32())


def test_count_files_adds_row_groups_and_files(tmp_path):
    rows = [["a", "b", "a"], [], ["c", "a"], ["b"]]
    for name in ("x", "y"):
        with pq.ParquetWriter(tmp_path / f"{name}.parquet", pa.schema([("tokens", pa.list_(pa.string()))])) as w:
            for i in range(0, 4, 2):
                w.write_table(pa.table({"tokens": pa.array(rows[i : i + 2], pa.list_(pa.string()))}))
    counts = V.count_files([tmp_path / "x.parquet", tmp_path / "y.parquet"])
    assert counts == dict(collections.Counter(t for r in rows for t in r * 2))


def test_vocab_tsv_round_trip(tmp_path):
    vocab = [(s, 0) for s in SPECIALS] + [("it's", 7), ("café", 2)]
    data.write_vocab(tmp_path / "vocab.tsv", vocab)
    assert (tmp_path / "vocab.tsv").read_text(encoding="utf-8").splitlines()[4] == "it's\t7"
    assert data.read_vocab(tmp_path / "vocab.tsv") == [t for t, _ in vocab]


ITOS = SPECIALS + ["the", "movie", "Good", "unseen"]


def test_glove_vectors_align_to_vocab_ids(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("movie 1 2 3\nthe 0.5 -0.5 0.25\nextra 9 9 9\ngood 4 5 6\nthe 7 7 7\n")
    matrix, stats = V.read_vectors(path, ITOS)
    assert matrix.dtype == np.float32 and matrix.shape == (8, 3)
    np.testing.assert_array_equal(matrix[4], [0.5, -0.5, 0.25])  # first line of a word wins
    np.testing.assert_array_equal(matrix[5], [1, 2, 3])
    np.testing.assert_array_equal(matrix[6], [4, 5, 6])  # "Good" via its lowercase form
    np.testing.assert_array_equal(matrix[0], 0)  # <pad>
    assert np.abs(matrix[7]).max() < 1 and np.abs(matrix[7]).sum() > 0  # small random row
    np.testing.assert_array_equal(V.read_vectors(path, ITOS)[0], matrix)  # seeded
    assert {k: stats[k] for k in ("dim", "found", "found_lowercased", "coverage")} == {
        "dim": 3, "found": 3, "found_lowercased": 1, "coverage": 0.75
    }


def test_word2vec_header_is_skipped(tmp_path):
    path = tmp_path / "w2v.txt"
    path.write_text("2 2\nunseen 1 1\nmovie 2 2 \n")
    matrix, stats = V.read_vectors(path, ITOS)
    assert stats["dim"] == 2 and stats["found"] == 2
    np.testing.assert_array_equal(matrix[7], [1, 1])


@pytest.mark.parametrize(
    "text, message",
    [
        ("the 1 2 3\nmovie 1 2\n", r"tiny.txt:2: 2 values for 'movie', expected 3"),
        ("5 4\nthe 1 2 3\n", r"tiny.txt:2: 3 values for 'the', expected 4"),
        ("the 1 x 3\n", r"tiny.txt:1: values are not numbers"),
        ("", r"no vectors"),
    ],
)
def test_malformed_vectors_file_is_a_clear_error(tmp_path, text, message):
    (tmp_path / "tiny.txt").write_text(text)
    with pytest.raises(PipelineError, match=message):
        V.read_vectors(tmp_path / "tiny.txt", ITOS)


def test_vectors_must_live_under_data_vectors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "glove.txt").write_text("the 1\n")
    assert V.vectors_path("") is None
    with pytest.raises(PipelineError, match="under data/vectors/"):
        V.vectors_path("glove.txt")
    with pytest.raises(PipelineError, match="not found"):
        V.vectors_path("data/vectors/missing.txt")


def test_stage_writes_encoded_splits_vectors_and_metrics(tmp_path, monkeypatch):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["vocab"].update({"max_size": 10, "min_freq": 2, "use_unsup": True, "vectors": "data/vectors/tiny.txt"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    splits = {
        "train": [["a", "good", "movie"], ["a", "bad", "movie", "!"], []],
        "unsup": [["a", "good", "plot"], ["plot", "twist"]],
        "test": [["a", "great", "movie"]],
    }
    (tmp_path / "data/tokens").mkdir(parents=True)
    for split, rows in splits.items():
        table = pa.table(
            {
                "id": [f"{split}/{i}" for i in range(len(rows))],
                "rating": pa.array([0] * len(rows), pa.int8()),
                "label": pa.array([None if split == "unsup" else 1] * len(rows), pa.int8()),
                "n_tokens": pa.array([len(r) for r in rows], pa.int32()),
                "tokens": pa.array(rows, pa.list_(pa.string())),
            },
            schema=TK.SCHEMA,
        )
        pq.write_table(table, tmp_path / f"data/tokens/{split}.parquet")
    (tmp_path / "data/tokens/labels.json").write_text('["bad", "good", "ok"]\n')
    (tmp_path / "data/vectors").mkdir(parents=True)
    (tmp_path / "data/vectors/tiny.txt").write_text("movie 1 2\nplot 3 4\nzebra 5 6\n")
    monkeypatch.chdir(tmp_path)
    V.main()

    assert data.read_vocab(tmp_path / "data/vocab/vocab.tsv") == SPECIALS + ["a", "good", "movie", "plot"]
    assert json.loads((tmp_path / "data/vocab/labels.json").read_text()) == ["bad", "good", "ok"]
    test = pq.read_table(tmp_path / "data/vocab/test.parquet")
    assert test.schema.equals(V.ENCODED_SCHEMA)
    assert test["ids"].to_pylist() == [[4, 1, 6]]
    assert pq.read_table(tmp_path / "data/vocab/unsup.parquet")["label"].null_count == 2
    matrix = np.load(tmp_path / "data/vocab/vectors.npy")
    assert matrix.shape == (8, 2) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[[6, 7]], [[1, 2], [3, 4]])

    m = json.loads((tmp_path / "metrics/vocab.json").read_text())
    assert m["size"] == 8 and m["counted_splits"] == ["train", "unsup"] and m["counted_tokens"] == 12
    assert m["splits"]["test"] == {
        "reviews": 1, "empty": 0, "tokens": 3, "unk": 1, "unk_rate": 0.333333, "length": {"p50": 3, "p90": 3, "p99": 3}
    }
    assert m["splits"]["train"]["empty"] == 1 and m["splits"]["train"]["unk"] == 2
    assert m["vectors"] == {
        "file": "data/vectors/tiny.txt", "dim": 2, "found": 2, "found_lowercased": 0,
        "coverage": 0.5, "token_coverage": round(4 / 12, 6),
    }


def test_use_unsup_without_the_split_is_a_clear_error(tmp_path, monkeypatch):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["vocab"]["use_unsup"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data/tokens").mkdir(parents=True)
    pq.write_table(TK.SCHEMA.empty_table(), tmp_path / "data/tokens/train.parquet")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="tokenize.unsup"):
        V.main()
