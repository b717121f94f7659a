"""ITI experiments end to end: k-fold ``validate``, the alpha x K ``sweep``, CE/KL ``side_effects``, the baselines,
and the leaderboard ``report``. Everything here is a Python API; ``lm_eval_iti.commands.experiments`` is the thin CLI.

Modules: ``plan`` (the fold x row jobs, their resume hashes; no model), ``session`` (the loaded model and what is
computed once from it), ``executor`` (runs a plan's jobs: fits, controls, alpha, evaluation, CE/KL), ``summary``
(rows, comparisons, the table), ``baselines`` (the rows and their token semantics), ``aggregate`` (fold means,
tables), ``report``, ``plots``, ``subset`` (a small local TruthfulQA folder for quick runs).
"""

from .executor import Executor, execute
from .plan import ExperimentConfig, Plan, make_plan
from .session import ModelSession
from .sweep import sweep
from .validate import validate

# CE/KL: lm_eval_iti.side_effects.side_effects
__all__ = ["ExperimentConfig", "Executor", "ModelSession", "Plan", "execute", "make_plan", "sweep", "validate"]
