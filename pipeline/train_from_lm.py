"""Stage train_from_lm: the classifier of stage train (same `train` params), started from the language model.

The embedding and the first forward LSTM layer(s) are copied from models/lm.pt
(pipeline.model.init_classifier_from_lm); `train_from_lm.lm_lr_mult` scales their learning rate
and they stay frozen for the first `train_from_lm.unfreeze_epoch` epochs.
Outputs: models/classifier_lm.pt, metrics/train_from_lm.json, curves in dvclive/train_from_lm/.
A separate stage, so only this classifier depends on the LM (see dvc.yaml).
"""
from __future__ import annotations

from pipeline import train
from pipeline.common import run_main


def main() -> None:
    train.main(init="lm")


if __name__ == "__main__":
    run_main(main)
