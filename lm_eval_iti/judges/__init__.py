"""Judge metrics for TruthfulQA generations: True, Info, True*Info through OpenAI-compatible APIs or local models.

Modules: config (settings), prompts (exact judge prompts), scoring (decision rule), api / hf (backends), cache
(SQLite), runner (parallel requests, retries), metrics (the numbers), judging (Python API), check (the judge check
on human-labelled answers), glue (lm-eval), offline (samples files), folds (experiment fold results).
"""

from .config import JudgeConfig, from_sources
from .judging import Verdicts, judge_items, validate
from .metrics import judge_metrics
from .prompts import Item, answer_from_generation, info_prompt, truth_prompt
from .scoring import THRESHOLD, Judgment, decide

__all__ = ["JudgeConfig", "from_sources", "Verdicts", "judge_items", "validate", "judge_metrics", "Item",
           "answer_from_generation", "info_prompt", "truth_prompt", "THRESHOLD", "Judgment", "decide"]
