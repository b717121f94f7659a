"""``validate``: k-fold ITI on TruthfulQA with honest held-out folds, the baseline and the ablations in one run.

    from lm_eval_iti.experiments import ExperimentConfig, validate
    results = validate(ExperimentConfig(model="DIR", data_dir="../shared/data/truthfulqa/v0"), "results/run1",
                       alpha=15, num_heads=48, baselines=("random-heads", "baked"))

Writes ``<out>/results.json`` (every setting, per-fold numbers, the aggregate rows, every directions file's
sha256, the leak check), ``<out>/table.md``, ``<out>/folds/*.json`` (one per fold x variant, the resume points),
``<out>/per_question.csv`` and ``<out>/per_question_choices.jsonl`` (every row's value per question, and every
choice's log-likelihood; see ``records``; the paired comparisons of results.json's ``comparisons`` are computed
from them, see ``comparisons``) and ``<out>/directions/*.safetensors`` (one fit per fold and
configuration).
"""

from __future__ import annotations

import os

from ..options import DEFAULT_ALPHA, default_of
from .baselines import BASELINE_NAMES, validate_variants
from .executor import execute
from .plan import ExperimentConfig, make_plan


def parse_baselines(text: str | None) -> tuple[str, ...]:
    """The comma list of ``--baselines``: names of BASELINE_NAMES, ``all`` (every one) or ``study`` (the study's
    controls with their draw counts, expanded by ``baselines.expand_baselines``)."""
    if not text:
        return ()
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    return BASELINE_NAMES if names == ("all",) else names


def validate(config: ExperimentConfig, out: str | os.PathLike, *, method: str = default_of("method"),
             alpha: float | str = DEFAULT_ALPHA, num_heads: int = default_of("num_heads"),
             head_selection: str = default_of("head_selection"), effect_questions: int = default_of("effect_questions"),
             effect_check_heads: int = default_of("effect_check_heads"),
             instruction: str = default_of("instruction"), baseline: bool = True, baselines: tuple[str, ...] = (),
             mc_positions: str = default_of("mc_positions"), gen_positions: str = default_of("gen_positions"),
             random_draws: int = default_of("random_draws"), draws: dict[str, int] | None = None, selection: dict | None = None,
             curve_scales: tuple[float, ...] = ()) -> dict:
    """``alpha="select"`` with ``selection={"alphas": [...], "num_heads": [...], "by": "MC2", "inner_folds": 2}``:
    each outer fold's alpha and K are chosen by cross-validation on its training questions only (inner folds: fit on
    the others, the grid scored by the shared-prefix engine), then that setting is fitted on the whole training part
    (the fold's own fit, with ``num_heads`` as its size) and evaluated on the held-out fold by lm-eval's hf-iti.

    ``selection`` may add ``"methods": ["mass-mean", "probe"]`` and ``"head_selections": ["probe", "effect"]``:
    the direction type and the head ranking are then chosen on the inner folds too. ``baselines=("nested-strategy",)``
    adds that search as a row of its own (``iti-strategy``, compared with ``iti`` question by question).

    ``baselines=("study",)``: the study's controls (``baselines.STUDY_BASELINES``) with at least 20 size-matched, 20
    KL-matched, 10 random-head and 10 label-shuffled draws per fold; ``draws`` ({family: n}) sets a family's count."""
    variants = validate_variants(method=method, alpha=alpha, num_heads=num_heads, head_selection=head_selection,
                                 effect_questions=effect_questions, effect_check_heads=effect_check_heads,
                                 instruction=instruction,
                                 baseline=baseline, baselines=tuple(baselines), mc_positions=mc_positions,
                                 gen_positions=gen_positions, random_draws=random_draws, draws=draws,
                                 selection=selection,
                                 curve_scales=tuple(curve_scales))
    return execute(make_plan(config, variants, out, kind="validate"))
