"""MoPE-CLIP Explorer: score, prune and distill CLIP models with the Module-wise Pruning Error."""
from .data.tasks import Task, load_task
from .errors import MopeError
from .evaluate import evaluate
from .models import Clip, load_model
from . import units

__all__ = ["Clip", "MopeError", "Task", "evaluate", "load_model", "load_task"]
