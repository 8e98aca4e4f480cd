"""MoPE-CLIP Explorer: score, prune and distill CLIP models with the Module-wise Pruning Error."""
from . import units
from .clip import Clip
from .data.tasks import Task, load_task
from .errors import MopeError
from .evaluate import evaluate
from .models import load_model
from .pipeline import prune_model
from .plan import Budget, Plan, plan
from .pruned import save_pruned
from .scoring import Cancelled, baseline_correlations, load_scores, save_scores, score
from .surgery import prune

__all__ = ["Budget", "Cancelled", "Clip", "MopeError", "Plan", "Task", "baseline_correlations", "evaluate",
           "load_model", "load_scores", "load_task", "plan", "prune", "prune_model", "save_pruned", "save_scores",
           "score", "units"]
