"""The real-model demo: fit on one fold of TruthfulQA, evaluate the other through lm-eval's ``hf`` and ``hf-iti``.

It is ``validate`` restricted to held-out fold 0 (fit on fold 1), with alpha chosen by the side-effect budget on
held-out WikiText, a random-direction control matched in size, and CE/KL on WikiText for every row. Everything is
written to the output folder (rerun to resume) and printed as one before/after table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ..options import default_of
from ..errors import ITIError

DEMO_MODEL = "smollm2-135m-instruct"
DEMO_TASKS = ("truthfulqa_iti_mc1", "truthfulqa_iti_mc2")

DEMO_NUM_DOCS = 50  # a quick demo's CE/KL sample (validate's --num-docs is 100)


def run_real_demo(out: str | os.PathLike, model: str = DEMO_MODEL, *, gguf_file: str | None = None,
                  data_dir: str | None = None, num_questions: int | None = default_of("demo_num_questions"),
                  num_heads: int = default_of("demo_num_heads"), kl_budget: float = default_of("kl_budget"),
                  corpus: str = default_of("corpus"), num_docs: int = DEMO_NUM_DOCS,
                  batch_size: int = default_of("batch_size"),
                  progress: bool = True, log: Callable[[str], None] = print, device_map=None, max_memory=None,
                  offload_folder=None) -> dict:
    """Run (or resume) the demo in ``out``; returns the validate results with the plot paths added."""
    from .plots import kl_budget_curve
    from .plan import ExperimentConfig
    from .summary import table_markdown
    from .validate import validate

    if num_questions is not None and data_dir is None:
        raise ITIError("num_questions needs data_dir (a local TruthfulQA folder to take the subset from)")
    config = ExperimentConfig(model=model, gguf_file=gguf_file, data_dir=data_dir, num_questions=num_questions,
                              tasks=DEMO_TASKS, num_folds=2, folds=(0,), corpus=corpus, num_docs=num_docs,
                              kl_budget=kl_budget, batch_size=batch_size, bootstrap_iters=1000, progress=progress,
                              device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
    results = validate(config, out, alpha="auto", num_heads=num_heads, baselines=("random-matched",), random_draws=1)
    out = Path(out)
    choice = json.loads((out / "folds" / "fold_0_alpha_auto.json").read_text())
    curve = kl_budget_curve(choice, out / "alpha_curve.png",
                            title=f"{Path(model).name}: KL vs alpha (K={num_heads}), chosen α={choice['alpha']:g}")
    heatmaps = sorted(str(p) for p in (out / "directions").glob("fold_0_*.heads.png"))
    subset = f"the first {num_questions} questions" if num_questions else "all questions"
    log(f"\n{model}: fitted on fold 1, evaluated on held-out fold 0 of {subset} (2 folds, seed 42)\n")
    log(table_markdown(results))
    log(f"alpha chosen by KL budget {kl_budget:g}: {choice['alpha']:g} (measured: "
        + ", ".join(f"{m['alpha']:g}->{m['kl']:.3f}" for m in choice["measured"]) + ")")
    log(f"wrote {out / 'results.json'}, {out / 'table.md'}, {curve}" + "".join(f", {h}" for h in heatmaps))
    results["plots"] = {"alpha_curve": str(curve), "heatmaps": heatmaps}
    return results
