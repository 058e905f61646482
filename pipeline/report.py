"""Stage report: one Markdown report (and a self-contained HTML copy) of a run, for a pull request.

Puts the classifier, the baseline and (once it exists) the language model side by side, shows
what changed against the last commit, draws the curves as small hand-written SVGs and lists the
most confident mistakes. The same inputs give the same bytes: no timestamps, no absolute paths.

It runs inside `dvc repro`, which holds DVC's lock, so the previous metrics come from
`git show HEAD:<file>`, not from `dvc metrics diff`.
"""
from __future__ import annotations

import csv
import html
import json
import math
import re
import subprocess
from pathlib import Path

import yaml

from pipeline.common import PipelineError, atomic_dir, atomic_file, run_main
from pipeline.params import PARAMS_FILE, load_params

REPORT_MD = Path("reports/report.md")
REPORT_HTML = Path("reports/report.html")
PLOTS_DIR = Path("reports/plots")  # the SVGs, linked from the Markdown by a path relative to it

# Side-by-side models: column title -> metrics file. A missing optional file is skipped.
MODELS = {
    "LSTM classifier": Path("metrics/evaluate.json"),
    "Baseline (TF-IDF + LR)": Path("metrics/baseline.json"),
    "Language model": Path("metrics/train_lm.json"),  # a future stage; skipped while absent
}
REQUIRED = {Path("metrics/evaluate.json"), Path("metrics/baseline.json")}
TRAIN_METRICS = Path("metrics/train.json")
# Compared with HEAD, as `dvc metrics diff` would.
DIFF_FILES = [Path("metrics/evaluate.json"), Path("metrics/baseline.json"), TRAIN_METRICS, Path("metrics/train_lm.json")]
# Shown first, in this order, when a model has them; the rest follow sorted.
KEY_METRICS = ["accuracy", "f1", "precision", "recall", "roc_auc", "loss", "ece", "perplexity", "reviews"]

CURVES = Path("dvclive/train/plots/metrics")  # <split>/<metric>.tsv with columns step, <metric>
EVAL_PLOTS = Path("plots/evaluate")
MISTAKES = Path("reports/mistakes.jsonl")
# What a future `generate` stage writes: one JSON object a line, {"prompt": ..., "text": ...}
# (or a bare JSON string). Skipped while absent.
SAMPLES = Path("reports/samples.jsonl")

NO_PREVIOUS = "no previous commit to compare"
PRECISION = 5  # digits after the point in the diff, as `dvc metrics diff` rounds

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
    """A dvclive TSV (step, value[, timestamp]) as (epoch, value) points; epoch = step + 1."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return [(float(r[0]) + 1, float(r[1])) for r in rows[1:] if len(r) >= 2]


def git_show(rev_path: str) -> str | None:
    """`git show <rev>:<path>`'s text, or None when git, the repo, the commit or the file is missing."""
    try:
        p = subprocess.run(["git", "show", rev_path], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def head_commit() -> str | None:
    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def previous_json(path: Path):
    """The file as committed at HEAD (path relative to the working directory), or None."""
    text = git_show(f"HEAD:./{path.as_posix()}")
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def previous_yaml(path: Path):
    text = git_show(f"HEAD:./{path.as_posix()}")
    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


# ---------------------------------------------------------------- pure: tables


def flatten(d, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}, as DVC names nested metrics and params."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten(v, key))
            else:
                out[key] = v
    return out


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fmt(v, digits: int = 4) -> str:
    """A value as a table shows it: ints in full, floats rounded, None as a dash."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        r = round(v, digits)
        if r == 0:  # tiny values (a learning rate) keep their digits
            return f"{v:.3g}" if v != 0 else "0"
        return f"{r:.{digits}f}".rstrip("0").rstrip(".")
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x, digits) for x in v) + "]"
    return str(v)


def metric_order(names) -> list[str]:
    names = set(names)
    return [k for k in KEY_METRICS if k in names] + sorted(names - set(KEY_METRICS))


def side_by_side(models: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one table: a row per metric name, a column per model ("—" where absent)."""
    flat = {name: flatten(m) for name, m in models.items()}
    names = metric_order(k for m in flat.values() for k in m)
    rows = [[k] + [fmt(flat[model].get(k)) for model in flat] for k in names]
    return ["Metric", *flat], rows


def diff_rows(path: str, old: dict | None, new: dict | None, all_rows: bool = False) -> list[list[str]]:
    """`dvc metrics diff` rows [path, key, old, new, change] for one file.

    Changed values only (all with all_rows), new keys with old "—", removed keys with new "—";
    change is new - old for numbers, "—" otherwise.
    """
    old_f, new_f = flatten(old or {}), flatten(new or {})
    rows = []
    for key in sorted(set(old_f) | set(new_f)):
        a, b = old_f.get(key), new_f.get(key)
        if a == b and not all_rows:
            continue
        if is_number(a) and is_number(b):
            change = fmt(round(b - a, PRECISION), PRECISION)
            if not change.startswith("-") and change != "0":
                change = "+" + change
        else:
            change = "—"
        rows.append([path, key, fmt(a, PRECISION), fmt(b, PRECISION), change])
    return rows


def confusion_counts(rows: list[dict]) -> list[list[int]]:
    """2x2 [[TN, FP], [FN, TP]] from DVC confusion rows {"actual", "predicted"}."""
    m = [[0, 0], [0, 0]]
    for r in rows:
        m[int(r["actual"])][int(r["predicted"])] += 1
    return m


def truncate(text: str, max_chars: int) -> str:
    """Cut at a word boundary before max_chars and add an ellipsis; short texts pass unchanged."""
    text = " ".join(str(text).split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if " " in cut[max_chars // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + " …"


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


# ---------------------------------------------------------------- pure: SVG

W, H = 480, 300
MARGIN = {"left": 56, "right": 16, "top": 48, "bottom": 44}  # the legend sits in the top margin
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
FONT = 'font-family="Helvetica,Arial,sans-serif"'


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 10))
    return ticks


def axis_range(values: list[float], pad: float = 0.05) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return lo - 0.5, hi + 0.5
    span = hi - lo
    return lo - pad * span, hi + pad * span


def scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a + (v - lo) / (hi - lo) * (b - a)


def polyline_points(points, x_range, y_range, box) -> str:
    """SVG `points` for data points in a plot box (left, top, right, bottom); y grows upwards."""
    left, top, right, bottom = box
    return " ".join(
        f"{scale(x, *x_range, left, right):.1f},{scale(y, *y_range, bottom, top):.1f}" for x, y in points
    )


def _svg_open(title: str, width: int = W, height: int = H) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" {FONT} font-size="12">',
        f"<title>{html.escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{html.escape(title)}</text>',
    ]


def _tick_label(t: float) -> str:
    return fmt(float(t), 4) if t != int(t) else str(int(t))


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str,
               x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
               diagonal: bool = False, integer_x: bool = False) -> str:
    """A small line chart: axes with round ticks, one polyline (plus dots when few points) per series.

    The legend (only with two or more series) is a row above the plot, where no curve can hide it.
    """
    pts = [p for s in series.values() for p in s]
    if not pts:
        pts = [(0.0, 0.0), (1.0, 1.0)]
    if x_range is None:
        xs = [p[0] for p in pts]
        x_range = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 1, max(xs) + 1)
    if y_range is None:
        y_range = axis_range([p[1] for p in pts])
    xt, yt = nice_ticks(*x_range), nice_ticks(*y_range)
    if integer_x:
        xt = [t for t in xt if t == int(t)] or xt
    xt = [t for t in xt if x_range[0] - 1e-9 <= t <= x_range[1] + 1e-9]
    y_range = (min(y_range[0], yt[0]), max(y_range[1], yt[-1]))
    box = (MARGIN["left"], MARGIN["top"], W - MARGIN["right"], H - MARGIN["bottom"])
    left, top, right, bottom = box
    out = _svg_open(title)
    for t in yt:
        y = scale(t, *y_range, bottom, top)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{_tick_label(t)}</text>')
    for t in xt:
        x = scale(t, *x_range, left, right)
        out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 17}" text-anchor="middle" fill="#555">{_tick_label(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#888"/>')
    if diagonal:
        d = polyline_points([(x_range[0], y_range[0]), (x_range[1], y_range[1])], x_range, y_range, box)
        out.append(f'<polyline points="{d}" fill="none" stroke="#bbb" stroke-dasharray="4 4"/>')
    for i, (name, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        if s:
            out.append(f'<polyline points="{polyline_points(s, x_range, y_range, box)}" fill="none" stroke="{color}" stroke-width="2"/>')
        if 0 < len(s) <= 30:
            for x, y in s:
                out.append(f'<circle cx="{scale(x, *x_range, left, right):.1f}" cy="{scale(y, *y_range, bottom, top):.1f}" r="3" fill="{color}"/>')
        if len(series) < 2:
            continue
        lx, ly = right - 80 * (len(series) - i), top - 10
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 24}" y="{ly}">{html.escape(name)}</text>')
    out.append(f'<text x="{(left + right) / 2:.0f}" y="{H - 8}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{(top + bottom) / 2:.0f}" text-anchor="middle" transform="rotate(-90 14 {(top + bottom) / 2:.0f})">{html.escape(ylabel)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def confusion_svg(title: str, m: list[list[int]], labels=("negative", "positive")) -> str:
    """A 2x2 heat map: counts and the share of each actual class, darker for more."""
    size, left, top = 110, 120, 72
    width, height = left + 2 * size + 30, top + 2 * size + 50
    out = _svg_open(title, width, height)
    peak = max(max(r) for r in m) or 1
    for i in range(2):
        row_total = sum(m[i]) or 1
        for j in range(2):
            v = m[i][j]
            shade = v / peak
            fill = f"rgb({int(255 - 224 * shade)},{int(255 - 136 * shade)},{int(255 - 75 * shade)})"
            ink = "#ffffff" if shade > 0.55 else "#222222"
            x, y = left + j * size, top + i * size
            out.append(f'<rect x="{x}" y="{y}" width="{size}" height="{size}" fill="{fill}" stroke="#ffffff" stroke-width="2"/>')
            out.append(f'<text x="{x + size / 2:.0f}" y="{y + size / 2:.0f}" text-anchor="middle" font-size="18" fill="{ink}">{v}</text>')
            out.append(f'<text x="{x + size / 2:.0f}" y="{y + size / 2 + 20:.0f}" text-anchor="middle" fill="{ink}">{100 * v / row_total:.1f}%</text>')
        out.append(f'<text x="{left - 8}" y="{top + i * size + size / 2 + 4:.0f}" text-anchor="end">{labels[i]}</text>')
        out.append(f'<text x="{left + i * size + size / 2:.0f}" y="{top - 8}" text-anchor="middle">{labels[i]}</text>')
    out.append(f'<text x="{left + size}" y="{top - 28}" text-anchor="middle" font-weight="bold">predicted</text>')
    mid = top + size
    out.append(f'<text x="22" y="{mid}" text-anchor="middle" font-weight="bold" transform="rotate(-90 22 {mid})">actual</text>')
    out.append(f'<text x="{width / 2:.0f}" y="{height - 14}" text-anchor="middle" fill="#555">% of the actual class</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def bar_chart(title: str, bars: list[tuple[str, float, str]], xlabel: str) -> str:
    """Horizontal bars in [0, 1]: (label, value, note) each."""
    left, right, top, bar = 90, W - 70, 40, 26
    height = top + len(bars) * (bar + 8) + 40
    out = _svg_open(title, W, height)
    axis_y = top + len(bars) * (bar + 8)
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = scale(t, 0, 1, left, right)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle" fill="#555">{_tick_label(t)}</text>')
    for i, (label, value, note) in enumerate(bars):
        y = top + i * (bar + 8)
        w = max(0.0, min(1.0, value)) * (right - left)
        out.append(f'<text x="{left - 8}" y="{y + bar / 2 + 4:.0f}" text-anchor="end">{html.escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{COLORS[0]}"/>')
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + bar / 2 + 4:.0f}" fill="#333">{fmt(value, 3)} {html.escape(note)}</text>')
    out.append(f'<text x="{(left + right) / 2:.0f}" y="{axis_y + 32}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- pure: the document
# A report is a list of blocks, rendered twice: ("h", level, text), ("p", text), ("table", header,
# rows), ("img", alt, file name in PLOTS_DIR). Paragraph text may use `code` and **bold**; table
# cells are plain text, escaped by each renderer.

# Markdown's active characters in a table cell; `_` only where it could start or end emphasis.
_MD_SPECIAL = re.compile(r"([\\`*\[\]|<>]|(?<!\w)_|_(?!\w))")


def md_cell(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def to_markdown(blocks: list[tuple], plots_rel: str) -> str:
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "table":
            header, rows = b[1], b[2]
            out.append("| " + " | ".join(md_cell(h) for h in header) + " |")
            out.append("|" + "|".join(["---"] + ["---:" if _numeric_col(rows, i) else "---" for i in range(1, len(header))]) + "|")
            out += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
        elif b[0] == "img":
            out.append(f"![{b[1]}]({plots_rel}/{b[2]})")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _numeric_col(rows: list[list[str]], i: int) -> bool:
    cells = [r[i] for r in rows if r[i] != "—"]
    return bool(cells) and all(re.fullmatch(r"[+-]?[\d.,]+(e[+-]?\d+)?%?", c) for c in cells)


def inline_html(text: str) -> str:
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


CSS = """body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.5}
h1,h2{border-bottom:1px solid #d0d7de;padding-bottom:.3em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #d0d7de;padding:4px 10px;vertical-align:top}
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{max-width:560px}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px;font-size:90%}
figure{display:inline-block;margin:.5em .5em .5em 0;vertical-align:top}
figure svg{border:1px solid #d0d7de;max-width:100%;height:auto}"""


def to_html(blocks: list[tuple], svgs: dict[str, str], title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>\n{CSS}\n</style>", "</head>", "<body>"]
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{inline_html(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{inline_html(b[1])}</p>")
        elif b[0] == "table":
            header, rows = b[1], b[2]
            num = [i > 0 and _numeric_col(rows, i) for i in range(len(header))]
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            for r in rows:
                cells = []
                for i, c in enumerate(r):
                    cls = "num" if num[i] else ("text" if len(c) > 80 else "")
                    attr = f' class="{cls}"' if cls else ""
                    cells.append(f"<td{attr}>{html.escape(c)}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</table>")
        elif b[0] == "img":
            svg = svgs[b[2]]
            out.append(f'<figure aria-label="{html.escape(b[1])}">\n{svg.strip()}\n</figure>')
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def metrics_section(inputs: dict) -> list[tuple]:
    models = {name: m for name, m in inputs["models"].items() if m is not None}
    absent = [name for name, m in inputs["models"].items() if m is None]
    sources = ", ".join(f"`{MODELS[n].as_posix()}`" for n in models)
    blocks = [("p", f"Test-set metrics of each model on the same tokens and splits, from {sources}."
               + (f" Not in this run: {', '.join(absent)}." if absent else "")),
              ("table", *side_by_side(models))]
    train = inputs.get("train")
    if train:
        blocks.append(("p", f"LSTM training: best epoch {fmt(train.get('best_epoch'))} of {fmt(train.get('epochs_run'))}, "
                       f"{fmt(train.get('parameters'))} parameters (`{TRAIN_METRICS.as_posix()}`)."))
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
    blocks.append(("p", f"Metrics against HEAD (`{commit}`), as `dvc metrics diff --md` shows them; "
                   f"{unchanged} unchanged not shown."))
    blocks.append(("table", ["Path", "Metric", "HEAD", "workspace", "Change"], rows) if rows else ("p", "No metric changed."))
    if inputs.get("previous_params") is None:
        return blocks + [("p", f"Params: `{PARAMS_FILE}` is not in HEAD, {NO_PREVIOUS}.")]
    prows = diff_rows(PARAMS_FILE, inputs["previous_params"], inputs.get("params"))
    if not prows:
        return blocks + [("p", "No param changed.")]
    return blocks + [("p", "Params changed:"), ("table", ["Path", "Param", "HEAD", "workspace", "Change"], prows)]


def curves_section(curves: dict) -> tuple[list[tuple], dict[str, str]]:
    """Loss and accuracy per epoch, train and valid: two charts and the numbers behind them."""
    if not any(curves.values()):
        return [], {}
    blocks: list[tuple] = [("h", 2, "Training curves")]
    svgs = {}
    for metric, label in (("loss", "loss"), ("acc", "accuracy")):
        series = {split: curves.get((split, metric), []) for split in ("train", "valid")}
        if any(series.values()):
            name = f"train_{metric}.svg"
            svgs[name] = line_chart(f"LSTM {label} per epoch", series, "epoch", label, integer_x=True)
            blocks.append(("img", f"LSTM {label} per epoch", name))
    epochs = sorted({x for s in curves.values() for x, _ in s})
    keys = [(s, m) for m in ("loss", "acc") for s in ("train", "valid")]
    lookup = {k: dict(curves.get(k, [])) for k in keys}
    blocks.append(("table", ["epoch"] + [f"{s} {m}" for s, m in keys],
                   [[fmt(e)] + [fmt(lookup[k].get(e)) for k in keys] for e in epochs]))
    return blocks, svgs


def classifier_section(inputs: dict) -> tuple[list[tuple], dict[str, str]]:
    """The classifier's confusion matrix (as a table too), ROC, precision-recall, accuracy by length."""
    blocks: list[tuple] = [("h", 2, "Classifier on the test set")]
    svgs = {}
    if inputs.get("confusion"):
        m = confusion_counts(inputs["confusion"])
        blocks.append(("table", ["actual / predicted", "negative", "positive"],
                       [["negative", str(m[0][0]), str(m[0][1])], ["positive", str(m[1][0]), str(m[1][1])]]))
        svgs["confusion.svg"] = confusion_svg("Confusion matrix (test)", m)
        blocks.append(("img", "Confusion matrix", "confusion.svg"))
    lstm = inputs["models"].get("LSTM classifier") or {}
    if inputs.get("roc"):
        auc = f" (AUC {fmt(lstm['roc_auc'], 3)})" if "roc_auc" in lstm else ""
        svgs["roc.svg"] = line_chart(f"ROC curve{auc}", {"LSTM": [(r["fpr"], r["tpr"]) for r in inputs["roc"]]},
                                     "false positive rate", "true positive rate", (0, 1), (0, 1), diagonal=True)
        blocks.append(("img", "ROC curve", "roc.svg"))
    if inputs.get("pr"):
        svgs["precision_recall.svg"] = line_chart("Precision-recall curve", {"LSTM": [(r["recall"], r["precision"]) for r in inputs["pr"]]},
                                                  "recall", "precision", (0, 1), (0, 1))
        blocks.append(("img", "Precision-recall curve", "precision_recall.svg"))
    if inputs.get("length"):
        bars = [(r["length"], r["accuracy"], f"({r['reviews']} reviews)") for r in inputs["length"]]
        svgs["length_accuracy.svg"] = bar_chart("Accuracy by review length (tokens)", bars, "accuracy")
        blocks.append(("img", "Accuracy by review length", "length_accuracy.svg"))
    return (blocks if len(blocks) > 1 else []), svgs


def samples_section(samples: list, params) -> list[tuple]:
    if not samples or not params.n_samples:
        return []
    return [("h", 2, "Generated samples"),
            ("p", f"The first {min(len(samples), params.n_samples)} of `{SAMPLES.as_posix()}`."),
            ("table", ["prompt", "generated"], sample_rows(samples, params.n_samples, params.max_chars))]


def mistakes_section(mistakes: list[dict], params) -> list[tuple]:
    if not mistakes or not params.n_mistakes:
        return []
    shown = mistakes[: params.n_mistakes]
    label = {0: "negative", 1: "positive"}
    return [("h", 2, "Most confident mistakes"),
            ("p", f"The {len(shown)} test reviews the classifier got wrong with the most confidence "
                  f"(of {len(mistakes)} in `{MISTAKES.as_posix()}`), cut to {params.max_chars} characters."),
            ("table", ["id", "label", "P(positive)", "review"],
             [[m.get("id", ""), label.get(m.get("label"), str(m.get("label"))), fmt(m.get("p_positive")),
               truncate(m.get("text", ""), params.max_chars)] for m in shown])]


def build_report(inputs: dict, params) -> tuple[list[tuple], dict[str, str]]:
    """The report's blocks and its SVG files {name: text}, from already-read inputs (see read_inputs)."""
    curves, curve_svgs = curves_section(inputs.get("curves") or {})
    classifier, test_svgs = classifier_section(inputs)
    blocks = [("h", 1, "Run report"), *metrics_section(inputs), *diff_section(inputs), *curves, *classifier,
              *samples_section(inputs.get("samples") or [], params), *mistakes_section(inputs.get("mistakes") or [], params)]
    return blocks, {**curve_svgs, **test_svgs}


# ---------------------------------------------------------------- the stage


def read_inputs() -> dict:
    models = {name: read_json(path, required=path in REQUIRED) for name, path in MODELS.items()}
    curves = {(split, metric): read_tsv_series(CURVES / split / f"{metric}.tsv")
              for split in ("train", "valid") for metric in ("loss", "acc")}
    commit = head_commit()
    current = {p.as_posix(): read_json(p) for p in DIFF_FILES}
    previous = {p.as_posix(): previous_json(p) for p in DIFF_FILES} if commit else {}
    params_now = yaml.safe_load(Path(PARAMS_FILE).read_text(encoding="utf-8"))
    return {
        "models": models,
        "train": read_json(TRAIN_METRICS),
        "commit": commit,
        "current": current,
        "previous": previous,
        "params": params_now,
        "previous_params": previous_yaml(Path(PARAMS_FILE)) if commit else None,
        "curves": curves,
        "confusion": read_json(EVAL_PLOTS / "confusion.json"),
        "roc": read_json(EVAL_PLOTS / "roc.json"),
        "pr": read_json(EVAL_PLOTS / "precision_recall.json"),
        "length": read_json(EVAL_PLOTS / "length_accuracy.json"),
        "mistakes": read_jsonl(MISTAKES),
        "samples": read_jsonl(SAMPLES),
    }


def main() -> None:
    params = load_params()["report"]
    blocks, svgs = build_report(read_inputs(), params)
    rel = PLOTS_DIR.relative_to(REPORT_MD.parent).as_posix()
    with atomic_dir(PLOTS_DIR) as tmp:
        for name, svg in svgs.items():
            (tmp / name).write_text(svg, encoding="utf-8")
    with atomic_file(REPORT_MD) as tmp:
        tmp.write_text(to_markdown(blocks, rel), encoding="utf-8")
    with atomic_file(REPORT_HTML) as tmp:
        tmp.write_text(to_html(blocks, svgs, "Run report"), encoding="utf-8")
    print(f"report: {REPORT_MD} and {REPORT_HTML} with {len(svgs)} plots in {PLOTS_DIR}")


if __name__ == "__main__":
    run_main(main)
