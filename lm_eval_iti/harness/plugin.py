"""Registration of ``hf-iti`` and the packaged tasks with lm-eval: the only place that touches lm-eval's registry.

One path: ``ensure_registered()`` (the project's CLIs, the driver, tests) and the interpreter-start hook
``_lm_eval_iti_autoload`` (the stock ``lm_eval`` CLI) both call ``register_model_lazily`` and
``patch_task_manager``.
"""

from __future__ import annotations

import sys
from pathlib import Path

MODEL_NAME = "hf-iti"
MODEL_TARGET = "lm_eval_iti.harness.model:HFITI"
STOCK_CLI_NAMES = ("lm_eval", "lm-eval")


def tasks_dir() -> Path:
    """The folder of the task YAMLs: ``lm_eval_iti/tasks`` in an installed wheel, the top-level ``tasks/`` in a source
    checkout (an editable install)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "tasks", package.parent / "tasks"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lm-eval-iti: packaged task folder not found next to {package}")


def register_model_lazily() -> None:
    """Register ``hf-iti`` as a lazy entry (no torch import). Call after ``lm_eval.models`` has filled the registry."""
    from lm_eval.api.registry import model_registry

    import lm_eval.models  # noqa: F401  (the registry trap: stock models must be registered first)

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def patch_task_manager(manager_module) -> None:
    """Make every ``TaskManager`` also index the packaged tasks: only the ``include_path`` argument of
    ``TaskManager.__init__`` changes (ours first, so ``--include_path`` tasks of the same name win)."""
    cls = manager_module.TaskManager
    if getattr(cls.__init__, "_lm_eval_iti", False):
        return
    original = cls.__init__

    def __init__(self, *args, include_path=None, **kwargs):
        ours = str(tasks_dir())
        given = [] if include_path is None else include_path if isinstance(include_path, list) else [include_path]
        original(self, *args, include_path=[ours] + [p for p in given if str(p) != ours], **kwargs)

    __init__._lm_eval_iti = True
    cls.__init__ = __init__


def running_stock_lm_eval_cli() -> bool:
    """True in the stock ``lm_eval`` CLI (``lm_eval ...``, ``python -m lm_eval``, ``accelerate launch -m lm_eval``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.split(".")[0] == "lm_eval":
        return True
    return bool(sys.argv) and Path(sys.argv[0]).name in STOCK_CLI_NAMES


def on_lm_eval_models_imported() -> None:
    """The autoload hook: register ``hf-iti``; in the stock CLI, also make an ``ITIError`` one line. The CLI is a
    program of ours to steer there, like ``lm-eval-iti``; a Python program importing lm_eval keeps its excepthook."""
    register_model_lazily()
    if running_stock_lm_eval_cli():
        from ..errors import install_one_line_errors

        install_one_line_errors()


def ensure_registered() -> None:
    """For programs that import lm-eval themselves (the CLI, the driver, tests)."""
    import lm_eval.tasks.manager as manager

    register_model_lazily()
    patch_task_manager(manager)
