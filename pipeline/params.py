"""Typed, validated params: one dataclass per section of params.yaml.

Every key is required (params.yaml is the one source of truth), unknown keys are refused,
and values are coerced by the field's type, because `yaml.safe_load` reads `1e-05`
(what `dvc exp run -S train.lr=1e-5` writes) as a string.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.common import PipelineError

PARAMS_FILE = "params.yaml"


def _f(default=dataclasses.MISSING, *, min=None, max=None, gt=None, lt=None, choices=None):
    """A field with its valid range, checked on load."""
    meta = {"min": min, "max": max, "gt": gt, "lt": lt, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass
class Source:
    url: str = _f()  # local path, file:// or http(s):// URL
    sha256: str = _f()
    mirrors: list[str] = _f()  # tried in order after url


@dataclass
class DownloadParams:
    source: str = _f()  # a key of `sources`, or an ad-hoc `<path or URL>@sha256:<hex>`
    test_source: str = _f()  # table sources: a second table for test, named as `source`; "" = split one off
    unsup_source: str = _f()  # table sources: a table of unlabelled texts for the language model; "" = none
    text_column: str = _f()  # table sources: the column of texts
    label_column: str = _f()  # the column of labels; aclImdb: label (neg/pos) or rating (1-4, 7-10)
    test_fraction: float = _f(gt=0, lt=1)  # table sources without test_source: held out for test, stratified
    seed: int = _f(min=0)  # of that split
    sources: dict[str, Source] = _f()
    timeout: float = _f(gt=0)
    retries: int = _f(min=0, max=20)
    backoff: float = _f(min=0)  # seconds before the first retry; doubles after each


SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# Docker's `name@sha256:<hex>` rather than pip's `url#sha256=<hex>`: `dvc exp run -S` parses
# values with Hydra's grammar, which refuses an unquoted `#` but takes `@` and `:`.
PINNED = re.compile(r"^(?P<url>.+)@sha256:(?P<sha256>[0-9a-fA-F]{64})$")


def resolve_source(download: DownloadParams, key: str = "source") -> tuple[str, Source]:
    """The (name, Source) that `download.<key>` (source, test_source, unsup_source) selects.

    Besides a key of `sources`, `<path or URL>@sha256:<hex>` names a file directly, so one
    `-S download.source=...` override switches to a local copy or mirror and still pins its hash.
    """
    value = getattr(download, key)
    if value in download.sources:
        return value, download.sources[value]
    m = PINNED.match(value)
    if m:
        return value, Source(url=m["url"], sha256=m["sha256"].lower(), mirrors=[])
    raise PipelineError(
        f"download.{key} must be one of {sorted(download.sources)} or '<path or URL>@sha256:<64 hex digits>', "
        f"got {value!r}"
    )


def _check_sources(download: DownloadParams) -> None:
    for name, src in download.sources.items():
        if not src.url.strip():
            raise PipelineError(f"download.sources.{name}.url is empty")
        if not SHA256.match(src.sha256):
            raise PipelineError(f"download.sources.{name}.sha256 must be 64 hex digits, got {src.sha256!r}")
        src.sha256 = src.sha256.lower()  # hashlib's hexdigest() is lowercase
    resolve_source(download)
    for key in ("test_source", "unsup_source"):
        if getattr(download, key):
            resolve_source(download, key)


@dataclass
class TokenizeParams:
    valid_fraction: float = _f(gt=0, lt=1)
    seed: int = _f(min=0)
    lowercase: bool = _f()
    max_chars: int = _f(min=100)  # longer reviews are cut before spaCy sees them
    unsup: bool = _f()  # tokenize train/unsup (only the language model needs it)
    workers: int = _f(min=0)  # 0 = one per core
    chunk_size: int = _f(min=1)


@dataclass
class VocabParams:
    max_size: int = _f(min=10)
    min_freq: int = _f(min=1)
    use_unsup: bool = _f()
    vectors: str = _f()  # GloVe/word2vec text file under data/vectors/ -> data/vocab/vectors.npy; "" = none


@dataclass
class TrainParams:
    seed: int = _f(min=0)
    embed_dim: int = _f(min=1)
    hidden: int = _f(min=1)
    layers: int = _f(min=1, max=8)
    bidirectional: bool = _f()
    dropout: float = _f(min=0, lt=1)
    pooling: str = _f(choices=["maxmean", "concat"])  # readout: max + mean of the states; concat adds the last (ULMFiT)
    max_len: int = _f(min=8)  # tokens kept per review: head and tail
    head_fraction: float = _f(min=0, max=1)
    batch_size: int = _f(min=1)
    epochs: int = _f(min=1)
    lr: float = _f(gt=0)
    lr_schedule: str = _f(choices=["constant", "cosine", "linear"])  # decay over all steps
    warmup: float = _f(min=0, lt=1)  # share of steps with a linear warm-up
    weight_decay: float = _f(min=0)
    clip: float = _f(min=0)  # 0 = no gradient clipping
    patience: int = _f(min=1)
    monitor: str = _f(choices=["valid_acc", "valid_loss"])  # picks the best epoch and drives early stopping
    threads: int = _f(min=0)  # 0 = one per core
    device: str = _f(choices=["auto", "cpu", "cuda"])
    precision: str = _f(choices=["auto", "fp32", "bf16"])  # autocast of the forward pass (pipeline.training.autocast)
    nproc: int = _f(min=1)  # processes on this machine; > 1 runs under torchrun (DDP), batch_size stays global
    resume: bool = _f()  # continue from models/train.resume.pt after an interruption


@dataclass
class EvaluateParams:
    batch_size: int = _f(min=1)
    n_mistakes: int = _f(min=0)  # most confident mistakes written for inspection


@dataclass
class BaselineParams:
    ngram_max: int = _f(min=1, max=3)
    min_df: int = _f(min=1)
    c_grid: list[float] = _f()  # inverse regularisation strengths tried on valid
    max_iter: int = _f(min=10)


@dataclass
class ReportParams:
    n_mistakes: int = _f(min=0)  # most confident mistakes shown (of evaluate.n_mistakes)
    n_samples: int = _f(min=0)  # generated samples shown, once a generate stage writes some
    max_chars: int = _f(min=20)  # longer texts are cut at a word boundary


@dataclass
class TrainLMParams:
    seed: int = _f(min=0)
    token_budget: int = _f(min=0)  # training tokens taken from the stream per epoch; 0 = all
    eval_tokens: int = _f(min=0)  # valid/test tokens scored; 0 = all
    embed_dim: int = _f(min=1)
    hidden: int = _f(min=1)  # a projection maps hidden -> embed_dim when they differ (tied weights)
    layers: int = _f(min=1, max=8)
    cutoffs: list[int] = _f()  # adaptive softmax cluster boundaries, increasing, below the vocab size
    dropout_emb: float = _f(min=0, lt=1)  # drops whole words (rows of the embedding)
    dropout_in: float = _f(min=0, lt=1)  # locked dropout on the embeddings
    dropout_hidden: float = _f(min=0, lt=1)  # locked dropout between LSTM layers
    dropout_out: float = _f(min=0, lt=1)  # locked dropout before the softmax
    weight_drop: float = _f(min=0, lt=1)  # DropConnect on the hidden-to-hidden weights; 0 = off
    bptt: int = _f(min=5)  # mean truncated-BPTT length; ~N(bptt, 5) with p=0.95, else bptt/2
    batch_size: int = _f(min=1)
    eval_batch_size: int = _f(min=1)
    epochs: int = _f(min=1)
    lr: float = _f(gt=0)
    lr_schedule: str = _f(choices=["constant", "cosine", "linear"])
    warmup: float = _f(min=0, lt=1)
    weight_decay: float = _f(min=0)
    clip: float = _f(min=0)
    eval_every: int = _f(min=0)  # steps between valid checks + resume states (and at each epoch end); 0 = epoch ends only
    threads: int = _f(min=0)
    device: str = _f(choices=["auto", "cpu", "cuda"])
    precision: str = _f(choices=["auto", "fp32", "bf16"])
    resume: bool = _f()  # continue from models/train_lm.resume.pt after an interruption


@dataclass
class GenerateParams:
    prompts: list[str] = _f()
    max_tokens: int = _f(min=1)
    temperature: float = _f(min=0)  # 0 = greedy
    top_k: int = _f(min=0)  # 0 = no top-k cut
    top_p: float = _f(gt=0, max=1)  # 1 = no nucleus cut
    seed: int = _f(min=0)
    allow_unk: bool = _f()  # let <unk> be sampled


@dataclass
class TrainFromLMParams:
    lm_lr_mult: float = _f(min=0)  # lr of the LM-initialised weights, relative to train.lr
    unfreeze_epoch: int = _f(min=0)  # LM-initialised weights stay frozen for this many epochs


SECTIONS = {
    "download": DownloadParams,
    "tokenize": TokenizeParams,
    "vocab": VocabParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "baseline": BaselineParams,
    "report": ReportParams,
    "train_lm": TrainLMParams,
    "generate": GenerateParams,
    "train_from_lm": TrainFromLMParams,
}


def _check_range(value, meta: dict, key: str) -> None:
    # Every comparison with NaN is false and infinity passes any lower bound: refuse both first.
    if isinstance(value, float) and not math.isfinite(value):
        raise PipelineError(f"{key} must be a finite number, got {value!r}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, float) and not math.isfinite(item):
                raise PipelineError(f"{key}[{i}] must be a finite number, got {item!r}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise PipelineError(f"{key} must be one of {meta['choices']}, got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise PipelineError(f"{key} must be >= {meta['min']}, got {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise PipelineError(f"{key} must be <= {meta['max']}, got {value!r}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        raise PipelineError(f"{key} must be > {meta['gt']}, got {value!r}")
    if meta.get("lt") is not None and value >= meta["lt"]:
        raise PipelineError(f"{key} must be < {meta['lt']}, got {value!r}")


def check_value(cls, name: str, value, label: str) -> None:
    """Check one value against the range of field `name` of params class `cls` (e.g. a CLI option)."""
    field_ = next(f for f in dataclasses.fields(cls) if f.name == name)
    _check_range(value, field_.metadata, label)


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise PipelineError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise PipelineError(f"{key} must be a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise PipelineError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise PipelineError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise PipelineError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise PipelineError(f"{key} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise PipelineError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise PipelineError(f"{key} must be a string, got {value!r}")
    raise TypeError(f"unsupported param type {tp} for {key}")  # a bug in this module


def _build(cls, data, prefix: str):
    if not isinstance(data, dict):
        raise PipelineError(f"{prefix} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PipelineError(f"unknown key {prefix}.{unknown[0]} (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in data:
            raise PipelineError(f"missing key {key}")
        value = _coerce(data[name], hints[name], key)
        _check_range(value, f.metadata, key)
        values[name] = value
    return cls(**values)


# Top-level keys that are not stage sections: the name of the recipe (conf/recipe/) that
# composed params.yaml, so that `dvc exp show` says which recipe each experiment ran.
RECIPE_KEY = "recipe"


def parse_params(raw: dict, sections: dict = SECTIONS) -> dict:
    """Validate the given sections of a params mapping (others are not looked at; with all
    SECTIONS, an unknown one is an error); return {section: dataclass}."""
    if not isinstance(raw, dict):
        raise PipelineError("params.yaml must be a mapping of sections")
    if RECIPE_KEY in raw:
        recipe = raw[RECIPE_KEY]
        if not isinstance(recipe, str) or not recipe.strip():
            raise PipelineError(f"{RECIPE_KEY} must be the name of a recipe in conf/recipe/, got {recipe!r}")
    if sections is SECTIONS:  # the whole file: a section nobody reads is a typo
        unknown = sorted(set(raw) - set(sections) - {RECIPE_KEY})
        if unknown:
            raise PipelineError(f"unknown section {unknown[0]} in params.yaml (known: {', '.join(sections)})")
    missing = [s for s in sections if s not in raw]
    if missing:
        raise PipelineError(f"missing section {missing[0]} in params.yaml")
    parsed = {name: _build(cls, raw[name], name) for name, cls in sections.items()}
    if "download" in parsed:
        _check_sources(parsed["download"])
    return parsed


class DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKey(f"key {key!r} appears twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_params(*sections: str, path: str | Path = PARAMS_FILE) -> dict:
    """Read the params file and validate `sections` (all of them when none are named), so a
    stage stops on a bad value of its own before any work, and only on its own."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"no params section {unknown[0]!r}")  # a bug in the caller
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{path} not found (run from the project root)") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKey as e:
        raise PipelineError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise PipelineError(f"{path} is not valid YAML{where}") from None
    _trace(sections or tuple(SECTIONS))
    return parse_params(raw, {s: SECTIONS[s] for s in sections} if sections else SECTIONS)


def _trace(sections) -> None:
    """With PIPELINE_PARAMS_TRACE set to a folder, note which sections a DVC stage reads, in a
    file named after the stage (DVC sets DVC_STAGE): tests/test_dvc_yaml.py compares them with
    the `params` dvc.yaml declares."""
    folder, stage = os.environ.get("PIPELINE_PARAMS_TRACE"), os.environ.get("DVC_STAGE")
    if folder and stage:
        with open(Path(folder) / stage, "a", encoding="utf-8") as f:
            f.write("".join(f"{s}\n" for s in sections))
