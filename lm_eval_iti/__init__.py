"""lm-eval-iti: Inference-Time Intervention for lm-evaluation-harness.

The public API (imported lazily: ``import lm_eval_iti`` loads neither torch nor lm_eval)::

    import lm_eval_iti as iti
    dirs = iti.train(model, tokenizer, [("Q: Is the sky blue? A: Yes.", 1, "sky"), ...], num_heads=8)  # any pairs
    tqa = iti.truthfulqa.samples("…/truthfulqa/v0", num_folds=2, fold=0)                      # or TruthfulQA's
    dirs = iti.train(model, tokenizer, tqa.samples, num_heads=48, **tqa.train_kwargs())
    dirs = iti.fit_directions(model, tokenizer, data_dir="…/truthfulqa/v0", num_folds=2, fold=0, num_heads=48)
    dirs.save("dirs.safetensors")
    dirs = iti.Directions.load("dirs.safetensors")
    with dirs.apply(model, alpha=15):                        # every position
        model(**batch)
    with dirs.apply(model, alpha=15):                        # generate: ITI's convention (gen_positions="last")
        model.generate(**prompt)
    lm = iti.HFITI(pretrained=model, tokenizer=tokenizer, directions=dirs, alpha=15)  # for lm_eval.simple_evaluate
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_API = {
    "train": "lm_eval_iti.steer",
    "Sample": "lm_eval_iti.steer",
    "fit_directions": "lm_eval_iti.fit",
    "FitConfig": "lm_eval_iti.fit",
    "Directions": "lm_eval_iti.artifact",
    "ModelShape": "lm_eval_iti.artifact",
    "load_directions": "lm_eval_iti.artifact",
    "save_directions": "lm_eval_iti.artifact",
    "HFITI": "lm_eval_iti.harness.model",
    "load_model": "lm_eval_iti.loading",
    "ITIError": "lm_eval_iti.errors",
    "fold_assignment": "lm_eval_iti.folds",
    "fold_indices": "lm_eval_iti.folds",
    "question_id": "lm_eval_iti.folds",
}
_SUBMODULES = ("truthfulqa",)  # iti.truthfulqa.samples(...)
__all__ = sorted(_API) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"lm_eval_iti.{name}")
    raise AttributeError(f"module 'lm_eval_iti' has no attribute {name!r}")


def __dir__():
    return __all__
