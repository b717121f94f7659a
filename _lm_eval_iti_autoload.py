"""Make the stock ``lm_eval`` CLI see ``hf-iti`` and the packaged tasks (lm-eval 0.4.13 has no plugin discovery).

Loaded from ``lm_eval_iti_autoload.pth`` at interpreter start. It only puts a tiny finder on ``sys.meta_path``
that does nothing until ``lm_eval.models`` or ``lm_eval.tasks.manager`` is imported; then it registers ``hf-iti``
as a lazy registry entry and adds the packaged task folder to every ``TaskManager``. Programs that never import
lm_eval pay one set lookup per import.
"""

import sys

_WATCHED = {"lm_eval.models", "lm_eval.tasks.manager"}


def _after_models(module):
    from lm_eval_iti.harness.plugin import on_lm_eval_models_imported

    on_lm_eval_models_imported()


def _after_task_manager(module):
    from lm_eval_iti.harness.plugin import patch_task_manager

    patch_task_manager(module)


def _run_hook(hook, module):
    """A failing hook must not break lm-eval, and must not go unnoticed: log it with the exception."""
    try:
        hook(module)
    except Exception as exc:  # noqa: BLE001  (an import error of a half-removed install, a registry change, ...)
        import logging

        logging.getLogger("lm_eval_iti").warning("lm-eval-iti: the %s hook failed, hf-iti or the packaged tasks "
                                                 "may be missing: %s: %s", module.__name__, type(exc).__name__, exc)


_HOOKS = {"lm_eval.models": _after_models, "lm_eval.tasks.manager": _after_task_manager}


class _Loader:
    def __init__(self, loader, hook):
        self._loader, self._hook = loader, hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run_hook(self._hook, module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder:
    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname not in _WATCHED:
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _Finder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, _HOOKS[fullname])
                return spec
        return None


def install():
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
