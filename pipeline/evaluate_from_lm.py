"""Stage evaluate_from_lm: stage evaluate for the LM-initialised classifier, into its own files.

Outputs: metrics/evaluate_from_lm.json, plots/evaluate_from_lm/, reports/mistakes_from_lm.jsonl;
compare with `dvc metrics show` next to metrics/evaluate.json.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import evaluate
from pipeline.common import run_main


def main() -> None:
    evaluate.main(Path("models/classifier_lm.pt"), Path("metrics/evaluate_from_lm.json"),
                  Path("plots/evaluate_from_lm"), Path("reports/mistakes_from_lm.jsonl"))


if __name__ == "__main__":
    run_main(main)
