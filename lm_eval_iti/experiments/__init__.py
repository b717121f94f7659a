"""ITI experiments end to end: k-fold ``validate``, the alpha x K ``sweep``, CE/KL ``side_effects``, the baselines,
and the leaderboard ``report``. Everything here is a Python API; ``lm_eval_iti.commands.experiments`` is the thin CLI.

Modules: ``runner`` (folds x variants, fits, resume), ``baselines`` (the rows and their token semantics),
``side_effects`` (CE/KL), ``aggregate`` (fold means, tables), ``report``,
``plots``, ``subset`` (a small local TruthfulQA folder for quick runs).
"""

from .runner import Experiment, ExperimentConfig
from .sweep import sweep
from .validate import validate

__all__ = ["Experiment", "ExperimentConfig", "sweep", "validate"]  # CE/KL: lm_eval_iti.side_effects.side_effects
