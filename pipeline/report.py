"""Stage report: one Markdown report (and a self-contained HTML copy) of a run, for a pull request.

Every model side by side (the LSTM from scratch, the LSTMs started from the forward and the
backward language model and their ensemble, the TF-IDF baseline, the language models'
perplexity), what changed against the last commit, the curves and test-set charts
(pipeline.charts), and the most confident mistakes. The same inputs
give the same bytes: no timestamps, no absolute paths.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from pipeline import charts, history, paths
from pipeline.common import PipelineError, atomic_dir, atomic_file, run_main
from pipeline.labels import label_order
from pipeline.markup import diff_rows, fmt, side_by_side, to_html, to_markdown, truncate
from pipeline.params import PARAMS_FILE, load_params

NO_PREVIOUS = "no previous commit to compare"


# Side-by-side models: column title -> (metrics file, its training metrics, its test plots or None).
MODELS = {
    "LSTM from scratch": (paths.EVALUATE.metrics, paths.TRAIN.metrics, paths.EVALUATE.plots),
    "LSTM from the LM": (paths.EVALUATE_FROM_LM.metrics, paths.TRAIN_FROM_LM.metrics, paths.EVALUATE_FROM_LM.plots),
    "LSTM from the backward LM": (paths.EVALUATE_FROM_LM_BACKWARD.metrics, paths.TRAIN_FROM_LM_BACKWARD.metrics,
                                  paths.EVALUATE_FROM_LM_BACKWARD.plots),
    "Forward + backward ensemble": (paths.EVALUATE_ENSEMBLE.metrics, None, paths.EVALUATE_ENSEMBLE.plots),
    "TF-IDF + LR": (paths.metrics("baseline"), None, None),
    "Language model": (paths.TRAIN_LM.metrics, None, None),
    "Backward language model": (paths.TRAIN_LM_BACKWARD.metrics, None, None),
}
REQUIRED = {paths.EVALUATE.metrics, paths.metrics("baseline")}  # the others are skipped while absent
CURVES = {"LSTM from scratch": paths.TRAIN.live, "LSTM from the LM": paths.TRAIN_FROM_LM.live,
          "LSTM from the backward LM": paths.TRAIN_FROM_LM_BACKWARD.live}
LM_CURVES = paths.TRAIN_LM.live
# Compared with HEAD, as `dvc metrics diff` would.
DIFF_FILES = [paths.EVALUATE.metrics, paths.EVALUATE_FROM_LM.metrics, paths.EVALUATE_FROM_LM_BACKWARD.metrics,
              paths.EVALUATE_ENSEMBLE.metrics, paths.metrics("baseline"), paths.TRAIN.metrics, paths.TRAIN_FROM_LM.metrics,
              paths.TRAIN_FROM_LM_BACKWARD.metrics, paths.TRAIN_LM.metrics, paths.TRAIN_LM_BACKWARD.metrics]

# ---------------------------------------------------------------- reading


def read_json(path: Path, required: bool = False):
    if not path.is_file():
        if required:
            raise PipelineError(f"{path} not found (run `dvc repro` to build the stages before report)")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path} is not valid JSON (line {e.lineno})") from None


def read_jsonl(path: Path) -> list:
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise PipelineError(f"{path}:{i} is not valid JSON") from None
    return rows


def read_tsv_series(path: Path) -> list[tuple[float, float]]:
    """A dvclive TSV (step, value) as (step + 1, value) points: the epoch, for the classifiers."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return [(float(r[0]) + 1, float(r[1])) for r in rows[1:] if len(r) >= 2]


# ---------------------------------------------------------------- pure: the sections


def label_names(rows: list[dict], metrics: dict | None) -> list[str]:
    """The classes in label-map order (ratings 1 < 2 < 10), from evaluate's per-class metrics and the rows."""
    names = list((metrics or {}).get("per_class") or {})
    seen = dict.fromkeys(str(r[k]) for r in rows for k in ("actual", "predicted"))
    return label_order(names + [n for n in seen if n not in names])  # metrics JSON sorts its keys as strings


def confusion_counts(rows: list[dict], names: list[str]) -> list[list[int]]:
    """K x K counts, [actual][predicted], from DVC confusion rows {"actual", "predicted"}."""
    index = {n: i for i, n in enumerate(names)}
    m = [[0] * len(names) for _ in names]
    for r in rows:
        m[index[str(r["actual"])]][index[str(r["predicted"])]] += 1
    return m


def sample_rows(samples: list, n: int, max_chars: int) -> list[list[str]]:
    rows = []
    for s in samples[:n]:
        if isinstance(s, dict):
            prompt = s.get("prompt", "")
            text = next((s[k] for k in ("text", "sample", "generated", "completion") if k in s), "")
        else:
            prompt, text = "", s
        rows.append([truncate(prompt, max_chars), truncate(text, max_chars)])
    return rows


def present(inputs: dict) -> dict[str, dict]:
    return {name: m for name, m in inputs["models"].items() if m is not None}


def metrics_section(inputs: dict) -> list[tuple]:
    models = present(inputs)
    absent = [name for name in inputs["models"] if name not in models]
    sources = ", ".join(f"`{MODELS[n][0].as_posix()}`" for n in models)
    blocks = [("p", f"Test-set metrics of each model on the same tokens and splits, from {sources}."
               + (f" Not in this run: {', '.join(absent)}." if absent else "")),
              ("table", *side_by_side(models))]
    for name, train in (inputs.get("train") or {}).items():
        if train:
            blocks.append(("p", f"{name}: best epoch {fmt(train.get('best_epoch'))} of {fmt(train.get('epochs_run'))}, "
                           f"{fmt(train.get('parameters'))} parameters (`{MODELS[name][1].as_posix()}`)."))
    return blocks


def diff_section(inputs: dict) -> list[tuple]:
    """Metrics (changed only, like `dvc metrics diff`) and params against HEAD."""
    blocks: list[tuple] = [("h", 2, "Change against the last commit")]
    commit, previous = inputs.get("commit"), inputs.get("previous") or {}
    if commit is None or all(v is None for v in previous.values()):
        return blocks + [("p", f"Metrics: {NO_PREVIOUS}.")]
    rows, unchanged = [], 0
    for path, new in inputs["current"].items():
        old = previous.get(path)
        if old is not None or new is not None:
            rows += diff_rows(path, old, new)
            unchanged += sum(r[2] == r[3] for r in diff_rows(path, old, new, all_rows=True))
    # HEAD's hash stays out: it would make the report's bytes differ in every commit's fresh clone.
    blocks.append(("p", "Metrics against HEAD, as `dvc metrics diff --md` shows them; "
                   f"{unchanged} unchanged not shown."))
    blocks.append(("table", ["Path", "Metric", "HEAD", "workspace", "Change"], rows) if rows else ("p", "No metric changed."))
    if inputs.get("previous_params") is None:
        return blocks + [("p", f"Params: `{PARAMS_FILE}` is not in HEAD, {NO_PREVIOUS}.")]
    prows = diff_rows(PARAMS_FILE, inputs["previous_params"], inputs.get("params"))
    if not prows:
        return blocks + [("p", "No param changed.")]
    return blocks + [("p", "Params changed:"), ("table", ["Path", "Param", "HEAD", "workspace", "Change"], prows)]


def curves_section(curves: dict, lm_curve: list) -> tuple[list[tuple], dict[str, str]]:
    """Loss and accuracy per epoch of each classifier (train and valid), the LM's valid perplexity;
    charts and the numbers behind them."""
    curves = {name: c for name, c in curves.items() if any(c.values())}
    if not curves and len(lm_curve) < 2:
        return [], {}
    blocks: list[tuple] = [("h", 2, "Training curves")]
    svgs = {}
    for metric, label in (("loss", "loss"), ("acc", "accuracy")):
        series = {f"{name}, {split}": c[(split, metric)] for name, c in curves.items() for split in ("train", "valid")
                  if c.get((split, metric))}
        if series:
            svgs[f"train_{metric}.svg"] = charts.line_chart(f"Classifier {label} per epoch", series, "epoch", label, integer_x=True)
            blocks.append(("img", f"Classifier {label} per epoch", f"train_{metric}.svg"))
    keys = [(s, m) for m in ("loss", "acc") for s in ("train", "valid")]
    for name, c in curves.items():
        epochs = sorted({x for s in c.values() for x, _ in s})
        lookup = {k: dict(c.get(k, [])) for k in keys}
        blocks.append(("p", f"{name}:"))
        blocks.append(("table", ["epoch"] + [f"{s} {m}" for s, m in keys],
                       [[fmt(e)] + [fmt(lookup[k].get(e)) for k in keys] for e in epochs]))
    if len(lm_curve) > 1:  # one check (one epoch, no eval_every) is in the table above
        svgs["lm_ppl.svg"] = charts.line_chart("Language model, valid perplexity", {"valid": lm_curve}, "check", "perplexity",
                                               integer_x=True)
        blocks.append(("img", "Language model valid perplexity", "lm_ppl.svg"))
    return blocks, svgs


def test_section(inputs: dict) -> tuple[list[tuple], dict[str, str]]:
    """Each classifier's confusion matrix (as a table too); ROC, precision-recall and accuracy by
    length with the classifiers overlaid."""
    tests = {name: t for name, t in (inputs.get("tests") or {}).items() if t and t.get("confusion")}
    if not tests:
        return [], {}
    blocks: list[tuple] = [("h", 2, "Classifiers on the test set")]
    svgs = {}
    models = inputs["models"]
    for i, (name, t) in enumerate(tests.items()):
        names = label_names(t["confusion"], models.get(name))
        m = confusion_counts(t["confusion"], names)
        blocks.append(("p", f"{name}, confusion matrix:"))
        blocks.append(("table", ["actual / predicted", *names], [[a, *map(str, row)] for a, row in zip(names, m)]))
        file = f"confusion_{i}.svg" if i else "confusion.svg"
        svgs[file] = charts.confusion_chart(f"{name} (test)", m, names)
        blocks.append(("img", f"Confusion matrix, {name}", file))
        per_class = (models.get(name) or {}).get("per_class") or {}
        if per_class:
            blocks.append(("p", f"{name}, per class:"))
            blocks.append(("table", ["class", "precision", "recall", "F1", "test reviews"],
                           [[c, fmt(v.get("precision")), fmt(v.get("recall")), fmt(v.get("f1")), fmt(v.get("support"))]
                            for c, v in per_class.items()]))
    def roc_legend(name: str, t: dict) -> str:
        auc = fmt((models.get(name) or {}).get("roc_auc"), 3)
        if len(label_names(t["confusion"], models.get(name))) == 2:
            return f"{name} (AUC {auc})"
        # K classes: the curve pools every (review, class) pair, the metric averages K one-vs-rest AUCs.
        return f"{name} (micro-average curve; one-vs-rest macro AUC {auc})"

    roc = {roc_legend(name, t): [(r["fpr"], r["tpr"]) for r in t["roc"]] for name, t in tests.items() if t.get("roc")}
    if roc:
        svgs["roc.svg"] = charts.line_chart("ROC curve", roc, "false positive rate", "true positive rate", (0, 1), (0, 1),
                                            diagonal=True)
        blocks.append(("img", "ROC curve", "roc.svg"))
    pr = {name: [(r["recall"], r["precision"]) for r in t["pr"]] for name, t in tests.items() if t.get("pr")}
    if pr:
        svgs["precision_recall.svg"] = charts.line_chart("Precision-recall curve", pr, "recall", "precision", (0, 1), (0, 1))
        blocks.append(("img", "Precision-recall curve", "precision_recall.svg"))
    length = {name: [(r["length"], r["accuracy"], r["reviews"]) for r in t["length"]] for name, t in tests.items()
              if t.get("length")}
    if length:
        svgs["length_accuracy.svg"] = charts.bar_chart("Accuracy by review length (tokens; reviews)", length, "accuracy")
        blocks.append(("img", "Accuracy by review length", "length_accuracy.svg"))
    return blocks, svgs


def samples_section(samples: list, params) -> list[tuple]:
    if not samples or not params.n_samples:
        return []
    return [("h", 2, "Generated samples"),
            ("p", f"The first {min(len(samples), params.n_samples)} of `{paths.SAMPLES_JSONL.as_posix()}`."),
            ("table", ["prompt", "generated"], sample_rows(samples, params.n_samples, params.max_chars))]


def mistakes_section(mistakes: list[dict], params) -> list[tuple]:
    if not mistakes or not params.n_mistakes:
        return []
    shown = mistakes[: params.n_mistakes]
    return [("h", 2, "Most confident mistakes"),
            ("p", f"The {len(shown)} test reviews the LSTM from scratch got wrong with the most confidence "
                  f"(of {len(mistakes)} in `{paths.EVALUATE.mistakes.as_posix()}`), cut to {params.max_chars} characters."),
            ("table", ["id", "label", "predicted", "probability", "review"],
             [[m.get("id", ""), str(m.get("label")), str(m.get("predicted")), fmt(m.get("probability")),
               truncate(m.get("text", ""), params.max_chars)] for m in shown])]


def build_report(inputs: dict, params) -> tuple[list[tuple], dict[str, str]]:
    """The report's blocks and its SVG files {name: text}, from already-read inputs (see read_inputs)."""
    curves, curve_svgs = curves_section(inputs.get("curves") or {}, inputs.get("lm_curve") or [])
    tests, test_svgs = test_section(inputs)
    blocks = [("h", 1, "Run report"), *metrics_section(inputs), *diff_section(inputs), *curves, *tests,
              *samples_section(inputs.get("samples") or [], params), *mistakes_section(inputs.get("mistakes") or [], params)]
    return blocks, {**curve_svgs, **test_svgs}


# ---------------------------------------------------------------- the stage


def read_curves(live: Path) -> dict:
    return {(split, metric): read_tsv_series(live / "plots/metrics" / split / f"{metric}.tsv")
            for split in ("train", "valid") for metric in ("loss", "acc")}


def read_test_plots(folder: Path | None) -> dict | None:
    if folder is None:
        return None
    return {key: read_json(folder / f"{file}.json") for key, file in
            (("confusion", "confusion"), ("roc", "roc"), ("pr", "precision_recall"), ("length", "length_accuracy"))}


def read_inputs() -> dict:
    commit = history.head_commit()
    return {
        "models": {name: read_json(m, required=m in REQUIRED) for name, (m, _, _) in MODELS.items()},
        "train": {name: read_json(t) for name, (_, t, _) in MODELS.items() if t is not None},
        "tests": {name: read_test_plots(p) for name, (_, _, p) in MODELS.items() if p is not None},
        "commit": commit,
        "current": {p.as_posix(): read_json(p) for p in DIFF_FILES},
        "previous": {p.as_posix(): history.previous_json(p) for p in DIFF_FILES} if commit else {},
        "params": yaml.safe_load(Path(PARAMS_FILE).read_text(encoding="utf-8")),
        "previous_params": history.previous_yaml(Path(PARAMS_FILE)) if commit else None,
        "curves": {name: read_curves(live) for name, live in CURVES.items()},
        "lm_curve": read_tsv_series(LM_CURVES / "plots/metrics/valid/ppl.tsv"),
        "mistakes": read_jsonl(paths.EVALUATE.mistakes),
        "samples": read_jsonl(paths.SAMPLES_JSONL),
    }


def main() -> None:
    params = load_params()["report"]  # the whole file: the report shows which params changed
    blocks, svgs = build_report(read_inputs(), params)
    rel = paths.REPORT_PLOTS.relative_to(paths.REPORT_MD.parent).as_posix()
    with atomic_dir(paths.REPORT_PLOTS) as tmp:
        for name, svg in svgs.items():
            (tmp / name).write_text(svg, encoding="utf-8")
    with atomic_file(paths.REPORT_MD) as tmp:
        tmp.write_text(to_markdown(blocks, rel), encoding="utf-8")
    with atomic_file(paths.REPORT_HTML) as tmp:
        tmp.write_text(to_html(blocks, svgs, "Run report"), encoding="utf-8")
    print(f"report: {paths.REPORT_MD} and {paths.REPORT_HTML} with {len(svgs)} plots in {paths.REPORT_PLOTS}")


if __name__ == "__main__":
    run_main(main)
