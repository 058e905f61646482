"""The report stage: built by a real `dvc repro` on the sample run, plus its pure functions."""
from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import make_repo, run, update_params
from pipeline import charts, history, markup, report
from pipeline.common import PipelineError

PLOTS = {"train_loss.svg", "train_acc.svg", "confusion.svg", "confusion_1.svg", "confusion_2.svg", "confusion_3.svg",
         "roc.svg", "precision_recall.svg", "length_accuracy.svg"}
MODELS = ["LSTM from scratch", "LSTM from the LM", "LSTM from the backward LM", "Forward + backward ensemble", "TF-IDF + LR",
          "Language model", "Backward language model"]
PARAMS = SimpleNamespace(n_mistakes=2, n_samples=2, max_chars=40)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The sample run with the tiny config, repro'd once (every stage, report last)."""
    repo = make_repo(tmp_path_factory.mktemp("report") / "repo", {"baseline": {"c_grid": [10.0]}})
    out = run(["dvc", "repro"], repo)
    assert "Running stage 'report'" in out.stdout
    return repo


def linked_plots(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def test_report_names_every_metric_and_links_every_plot(built):
    md = (built / "reports/report.md").read_text()
    page = (built / "reports/report.html").read_text()
    assert "| Metric | " + " | ".join(MODELS) + " |" in md  # every model, one table
    assert "<tr><th>Metric</th>" + "".join(f"<th>{m}</th>" for m in MODELS) + "</tr>" in page
    for name in ["evaluate", "evaluate_from_lm", "evaluate_from_lm_backward", "evaluate_ensemble", "baseline"]:
        metrics = json.loads((built / f"metrics/{name}.json").read_text())
        for key in metrics:
            if key == "per_class":  # a table of its own, one row per class, beside each LSTM's confusion matrix
                for name_, figures in (metrics[key] if name != "baseline" else {}).items():
                    assert f"| {name_} | {markup.fmt(figures['precision'])} | {markup.fmt(figures['recall'])} |" in md
                continue
            assert f"| {key} |" in md, key
            assert f"<td>{key}</td>" in page, key
    links = linked_plots(md)
    assert {Path(link).name for link in links} == PLOTS
    svgs = sorted((built / "reports/plots").glob("*.svg"))
    assert {p.name for p in svgs} == PLOTS  # nothing written that is not linked
    for link in links:
        assert (built / "reports" / link).is_file(), link
    for svg in svgs:
        ET.fromstring(svg.read_text())  # well-formed
        assert svg.read_text().strip() in page, svg.name
    assert "Not in this run" not in md and "no previous commit to compare" in md  # nothing at HEAD
    assert "Most confident mistakes" in md and "Generated samples" in md  # stages train_lm and generate ran
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)  # self-contained


def test_report_is_deterministic_and_up_to_date(built):
    before = {p: p.read_bytes() for p in sorted((built / "reports").rglob("*")) if p.is_file()}
    run(["python", "-m", "pipeline.report"], built)
    after = {p: p.read_bytes() for p in sorted((built / "reports").rglob("*")) if p.is_file()}
    assert before == after
    assert "report" not in run(["dvc", "status", "--json"], built).stdout


def test_report_diffs_metrics_and_params_against_head(built, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(built, repo, symlinks=True)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "sample run"], repo)
    update_params(repo / "params.yaml", {"report": {"max_chars": 100}})
    out = run(["dvc", "repro"], repo)
    assert re.findall(r"Running stage '(\w+)'", out.stdout) == ["report"]
    md = (repo / "reports/report.md").read_text()
    assert "No metric changed." in md
    assert "| params.yaml | report.max_chars | 300 | 100 | -200 |" in md


# ---------------------------------------------------------------- pure functions


def test_diff_rows_changed_new_and_removed_keys():
    old = {"accuracy": 0.5, "loss": 0.7, "gone": 1, "same": 3, "nested": {"a": 1}}
    new = {"accuracy": 0.55, "loss": 0.65, "added": 2, "same": 3, "nested": {"a": 2}, "name": "x"}
    assert markup.diff_rows("m.json", old, new) == [
        ["m.json", "accuracy", "0.5", "0.55", "+0.05"],
        ["m.json", "added", "—", "2", "—"],
        ["m.json", "gone", "1", "—", "—"],
        ["m.json", "loss", "0.7", "0.65", "-0.05"],
        ["m.json", "name", "—", "x", "—"],
        ["m.json", "nested.a", "1", "2", "+1"],
    ]
    assert markup.diff_rows("m.json", old, old) == []
    assert ["m.json", "same", "3", "3", "0"] in markup.diff_rows("m.json", old, new, all_rows=True)
    assert [r[1] for r in markup.diff_rows("m.json", None, {"x": 1})] == ["x"]


def test_charts_are_well_formed_reproducible_svg():
    series = {"train": [(1, 0.7), (2, 0.6)], "valid": [(1, 0.69), (2, 0.65)]}
    svg = charts.line_chart("t", series, "epoch", "loss", integer_x=True)
    assert svg == charts.line_chart("t", series, "epoch", "loss", integer_x=True)  # same data, same bytes
    root = ET.fromstring(svg)
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"t", "epoch", "loss", "train", "valid"} <= texts  # title, labels, legend kept as text
    assert "Date" not in svg and "<metadata" not in svg and not svg.startswith("<?xml")
    one = charts.line_chart("one epoch", {"train": [(1, 0.5)]}, "epoch", "acc")
    assert "train" not in {t.text for t in ET.fromstring(one).iter("{http://www.w3.org/2000/svg}text")}  # no legend for one
    conf = ET.fromstring(charts.confusion_chart("c", [[10, 2], [3, 12]], ["neg", "pos"]))
    cells = [t.text for t in conf.iter("{http://www.w3.org/2000/svg}text")]
    assert ["10", "83.3%", "2", "16.7%", "3", "20.0%", "12", "80.0%"] == [c for c in cells if c[0].isdigit()]
    bars = charts.bar_chart("b", {"A": [("0-99", 0.8, 10), ("100+", 0.7, 5)], "B": [("0-99", 0.85, 10)]}, "accuracy")
    assert {"0.800 (10)", "0.700 (5)", "0.850 (10)"} <= {t.text for t in ET.fromstring(bars).iter("{http://www.w3.org/2000/svg}text")}


def test_side_by_side_puts_shared_names_first_and_dashes_the_missing():
    header, rows = markup.side_by_side({"A": {"accuracy": 0.9, "C": 10.0}, "B": {"accuracy": 0.8, "perplexity": 42.5}})
    assert header == ["Metric", "A", "B"]
    assert rows == [["accuracy", "0.9", "0.8"], ["perplexity", "—", "42.5"], ["C", "10", "—"]]


def test_small_helpers(tmp_path, monkeypatch):
    assert markup.truncate("one two three four", 12) == "one two …"
    assert markup.truncate("short", 12) == "short"
    rows = [{"actual": "neg", "predicted": "pos"}, {"actual": "pos", "predicted": "pos"}, {"actual": "mid", "predicted": "neg"}]
    names = report.label_names(rows, {"per_class": {"neg": {}, "mid": {}, "pos": {}}})
    assert names == ["mid", "neg", "pos"]  # the label map's order
    assert report.confusion_counts(rows, names) == [[0, 1, 0], [0, 0, 1], [0, 0, 1]]
    assert report.label_names([{"actual": "2", "predicted": "10"}], {"per_class": {"1": {}, "10": {}, "2": {}}}) == ["1", "2", "10"]
    assert markup.fmt(1e-5) == "1e-05" and markup.fmt(2000) == "2000" and markup.fmt(None) == "—"
    assert markup.md_cell("a|b <br> roc_auc *x*") == "a\\|b \\<br\\> roc_auc \\*x\\*"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="metrics/evaluate.json not found"):
        report.read_json(Path("metrics/evaluate.json"), required=True)


def test_previous_metrics_without_git_history(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert history.head_commit() is None and history.previous_json(Path("metrics/evaluate.json")) is None  # not a repo
    run(["git", "init", "-q"], tmp_path)
    assert history.head_commit() is None  # no commits
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text('{"accuracy": 0.5}')
    (tmp_path / "x").write_text("x")
    run(["git", "add", "x"], tmp_path)
    run(["git", "commit", "-q", "-m", "x"], tmp_path)
    assert history.head_commit() and history.previous_json(Path("metrics/evaluate.json")) is None  # absent at HEAD
    run(["git", "add", "metrics"], tmp_path)
    run(["git", "commit", "-q", "-m", "m"], tmp_path)
    assert history.previous_json(Path("metrics/evaluate.json")) == {"accuracy": 0.5}


def minimal_inputs(**extra) -> dict:
    models = {"LSTM from scratch": {"accuracy": 0.7}, "LSTM from the LM": None, "TF-IDF + LR": {"accuracy": 0.85},
              "Language model": None}
    return {"models": models, "commit": None, "mistakes": [{"id": "t/1", "label": "neg", "predicted": "pos", "probability": 0.99,
                                                            "text": "<script>alert(1)</script> | a very long review " * 5}], **extra}


def test_build_report_escapes_text_and_shows_samples_only_when_present():
    blocks, svgs = report.build_report(minimal_inputs(), PARAMS)
    md, page = markup.to_markdown(blocks, "plots"), markup.to_html(blocks, svgs, "r")
    assert svgs == {} and "Generated samples" not in md
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "\\<script\\>" in md and "\\|" in md
    assert "Not in this run: LSTM from the LM, Language model." in md
    blocks, _ = report.build_report(minimal_inputs(samples=[{"prompt": "the film", "text": "was great"}, "bare", "third"]), PARAMS)
    md = markup.to_markdown(blocks, "plots")
    assert "## Generated samples" in md and "| the film | was great |" in md and "third" not in md


def test_the_diff_section_does_not_depend_on_which_commit_head_is():
    metrics = {"metrics/evaluate.json": {"accuracy": 0.7}}
    at = {c: report.diff_section({"commit": c, "previous": metrics, "current": metrics,
                                  "previous_params": {"train": {"lr": 0.002}}, "params": {"train": {"lr": 0.002}}})
          for c in ("4856cff", "2b28d76")}
    assert at["4856cff"] == at["2b28d76"]  # a fresh clone of a later commit rebuilds the same bytes
    assert "No metric changed." in markup.to_markdown(at["4856cff"], "plots")


def test_the_lm_perplexity_curve_is_drawn_from_two_checks_on():
    _, svgs = report.build_report(minimal_inputs(lm_curve=[(1.0, 600.0)]), PARAMS)
    assert "lm_ppl.svg" not in svgs
    blocks, svgs = report.build_report(minimal_inputs(lm_curve=[(1.0, 600.0), (2.0, 420.0)]), PARAMS)
    assert "lm_ppl.svg" in svgs and ("img", "Language model valid perplexity", "lm_ppl.svg") in blocks
