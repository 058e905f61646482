"""The label map: class names in index order, written by download as data/raw/labels.json and passed
along with the data (data/tokens/, data/vocab/, each classifier checkpoint), so every stage and
`imdb-predict` name classes the same way.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.common import PipelineError

MAX_CLASSES = 127  # labels are stored as int8 indices
INT = re.compile(r"^[+-]?\d+$")


def label_order(keys) -> list[str]:
    """The label map's fixed order: numeric when every label is an integer (ratings 1 < 2 < 10), else by string."""
    keys = set(keys)
    if all(INT.match(k) for k in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def numeric(names: list[str]) -> bool:
    """Labels that are integers (ratings, levels): their distance means something."""
    return bool(names) and all(INT.match(n) for n in names)


def label_map(train: list[str], test: list[str], name: str) -> list[str]:
    """The label names in their fixed order: at least two in the training rows, at most MAX_CLASSES,
    some test rows, and no class that only the test rows have."""
    names = label_order(set(train) | set(test))
    if len(set(train)) < 2:
        only = f" ({next(iter(set(train)))!r})" if train else ""
        raise PipelineError(f"{name} has {'one label only' + only if train else 'no labelled rows'}: "
                            f"a classifier needs at least two")
    if len(names) > MAX_CLASSES:
        raise PipelineError(f"{name} has {len(names)} distinct labels (at most {MAX_CLASSES}); is download.label_column the label?")
    if not test:
        raise PipelineError(f"{name}: no test rows (an empty download.test_source, or download.test_fraction too small "
                            f"to hold out a row)")
    unseen = label_order(set(test) - set(train))
    if unseen:
        raise PipelineError(f"{name}: label {unseen[0]!r} is in the test rows only ({len(unseen)} such); "
                            f"the classifier cannot learn a class it never sees in training")
    return names


def write_labels(path: Path, names: list[str]) -> None:
    path.write_text(json.dumps(names, ensure_ascii=False) + "\n", encoding="utf-8")


def read_labels(path: Path) -> list[str]:
    """The label names of a labels.json, in index order."""
    if not path.is_file():
        raise PipelineError(f"{path} not found (rerun the stage that writes it: dvc repro)")
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PipelineError(f"{path} is not a JSON list of label names") from None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise PipelineError(f"{path} is not a JSON list of at least two label names")
    return names
