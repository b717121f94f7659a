"""Registration of ``hf-iti`` and the packaged tasks with lm-eval (the only place that touches lm-eval's registry)."""

from __future__ import annotations

from pathlib import Path

MODEL_NAME = "hf-iti"
MODEL_TARGET = "lm_eval_iti.model:HFITI"


def tasks_dir() -> Path:
    """The folder of the packaged task YAMLs (``tasks/`` of the project, ``lm_eval_iti/tasks`` when installed)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "tasks", here.parent / "tasks"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lm-eval-iti: packaged task folder not found next to {here}")


def register_model_lazily() -> None:
    """Register ``hf-iti`` as a lazy entry (no torch import). Call after ``lm_eval.models`` has filled the registry."""
    from lm_eval.api.registry import model_registry

    import lm_eval.models  # noqa: F401  (the registry trap: stock models must be registered first)

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def patch_task_manager(manager_module) -> None:
    """Make every ``TaskManager`` also index the packaged tasks (stock ones first, ``--include_path`` last)."""
    cls = manager_module.TaskManager
    if getattr(cls.__init__, "_lm_eval_iti", False):
        return
    original = cls.__init__

    def __init__(self, *args, include_path=None, **kwargs):
        ours = str(tasks_dir())
        if include_path is None:
            paths = [ours]
        else:
            given = include_path if isinstance(include_path, list) else [include_path]
            paths = [ours] + [p for p in given if str(p) != ours]
        original(self, *args, include_path=paths, **kwargs)

    __init__._lm_eval_iti = True
    cls.__init__ = __init__


def ensure_registered() -> None:
    """For programs that import lm-eval themselves (the CLI, the Python API, tests)."""
    import lm_eval.tasks.manager as manager

    register_model_lazily()
    patch_task_manager(manager)
