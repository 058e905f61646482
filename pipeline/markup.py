"""Tables and documents for the report: values formatted as tables show them, `dvc metrics diff`
rows, and a document (a list of blocks) rendered as Markdown and as self-contained HTML."""
from __future__ import annotations

import html
import math
import re

PRECISION = 5  # digits after the point in a diff, as `dvc metrics diff` rounds
# Shown first, in this order, when a model has them; the rest follow sorted.
KEY_METRICS = ["accuracy", "macro_f1", "f1", "precision", "recall", "roc_auc", "mae", "loss", "ece", "perplexity", "reviews"]
PER_CLASS = "per_class"  # a table of its own in the report, not rows of the side-by-side one


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
    flat = {name: flatten({k: v for k, v in m.items() if k != PER_CLASS}) for name, m in models.items()}
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


def truncate(text: str, max_chars: int) -> str:
    """Cut at a word boundary before max_chars and add an ellipsis; short texts pass unchanged."""
    text = " ".join(str(text).split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if " " in cut[max_chars // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + " …"


# A report is a list of blocks, rendered twice: ("h", level, text), ("p", text), ("table", header,
# rows), ("img", alt, file name of a chart). Paragraph text may use `code` and **bold**; table
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
