"""Training, sampling and evaluation of gankern.models (what `gankern train|sample|eval` run)."""
from .errors import UsageError
from .quality import evaluate
from .loop import sample, train
from .tasks import SCHEDULERS, TASKS

__all__ = ["UsageError", "train", "sample", "evaluate", "TASKS", "SCHEDULERS"]
