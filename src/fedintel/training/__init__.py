"""One client's local training loop and evaluation."""

from fedintel.training.client import LocalTrainSpec, TrainingDiverged, train_local
from fedintel.training.evaluate import evaluate

__all__ = ["LocalTrainSpec", "TrainingDiverged", "evaluate", "train_local"]
