"""Every artifact path of the pipeline, in one place: dvc.yaml names the same paths (a test keeps them equal).

A stage with variants (train, train_from_lm, train_from_lm_backward; evaluate, evaluate_from_lm,
...) gets a small record of its outputs per variant; `dvc.yaml` picks the variant with a
command-line flag.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# download
RAW = Path("data/raw/reviews.parquet")
RAW_LABELS = Path("data/raw/labels.json")  # the label map: names in index order (pipeline/tables.py)
RAW_LEGACY = Path("data/raw/aclImdb")  # the extracted tree download wrote before the table
DOWNLOADS = Path("data/downloads")  # verified archives and partial downloads; not a DVC output
# tokenize, vocab
TOKENS = Path("data/tokens")
VECTORS = Path("data/vectors")  # pretrained vector files (vocab.vectors names one)
VOCAB = Path("data/vocab")
TOKENS_LABELS = TOKENS / "labels.json"  # the label map, passed along with the data it indexes
VOCAB_FILE = VOCAB / "vocab.tsv"
VOCAB_LABELS = VOCAB / "labels.json"
VOCAB_VECTORS = VOCAB / "vectors.npy"  # written by vocab when vocab.vectors is set
# language models: left to right, and right to left (each review reversed)
LM = Path("models/lm.pt")
LM_BACKWARD = Path("models/lm_backward.pt")
# generate
SAMPLES = Path("reports/samples.md")
SAMPLES_JSONL = Path("reports/samples.jsonl")  # the same samples for programs (report reads it)
# report
REPORT_MD = Path("reports/report.md")
REPORT_HTML = Path("reports/report.html")
REPORT_PLOTS = Path("reports/plots")
# Untracked logs: what depends on wall-clock time, and curves while a run is going on.
LOGS = Path("logs")


def metrics(stage: str) -> Path:
    return Path("metrics") / f"{stage}.json"


def live(stage: str) -> Path:
    """The tracked training curves of a stage (dvclive's folder layout)."""
    return Path("dvclive") / stage


@dataclass(frozen=True)
class Trained:
    """What one training stage writes."""

    stage: str
    model: Path

    @property
    def resume(self) -> Path:
        return Path("models") / f"{self.stage}.resume.pt"

    @property
    def metrics(self) -> Path:
        return metrics(self.stage)

    @property
    def live(self) -> Path:
        return live(self.stage)


@dataclass(frozen=True)
class Evaluated:
    """What one evaluation stage writes, and the model(s) it scores: several are averaged (an ensemble)."""

    stage: str
    models: tuple[Path, ...]
    mistakes: Path

    @property
    def metrics(self) -> Path:
        return metrics(self.stage)

    @property
    def plots(self) -> Path:
        return Path("plots") / self.stage


TRAIN = Trained("train", Path("models/classifier.pt"))
TRAIN_FROM_LM = Trained("train_from_lm", Path("models/classifier_lm.pt"))
TRAIN_FROM_LM_BACKWARD = Trained("train_from_lm_backward", Path("models/classifier_lm_backward.pt"))
TRAIN_LM = Trained("train_lm", LM)
TRAIN_LM_BACKWARD = Trained("train_lm_backward", LM_BACKWARD)
EVALUATE = Evaluated("evaluate", (TRAIN.model,), Path("reports/mistakes.jsonl"))
EVALUATE_FROM_LM = Evaluated("evaluate_from_lm", (TRAIN_FROM_LM.model,), Path("reports/mistakes_from_lm.jsonl"))
EVALUATE_FROM_LM_BACKWARD = Evaluated("evaluate_from_lm_backward", (TRAIN_FROM_LM_BACKWARD.model,),
                                      Path("reports/mistakes_from_lm_backward.jsonl"))
# The forward and backward LM-initialised classifiers, their class probabilities averaged (ULMFiT's ensemble).
EVALUATE_ENSEMBLE = Evaluated("evaluate_ensemble", (TRAIN_FROM_LM.model, TRAIN_FROM_LM_BACKWARD.model),
                              Path("reports/mistakes_ensemble.jsonl"))
