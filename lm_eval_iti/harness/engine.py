"""lm-eval side of the sweep engine: lm-eval builds the requests and computes the metrics, ``prefix_scoring`` scores.

``score_points`` runs the tasks through lm-eval's own ``simple_evaluate`` (the same driver as every other
evaluation) with an ``EngineLM``: an HFLM on the loaded model whose token-level scoring is replaced. lm-eval builds
the task's documents, prompts and continuations, and HFLM's own ``loglikelihood`` tokenizes them (``_encode_pair``:
the context/continuation split is hf-iti's); the first pass hands every token request to ``prefix_scoring.score``
for all (alpha, K) points at once and returns the first point's numbers, then one more ``simple_evaluate`` per
further point replays that point's numbers (checking that lm-eval asked for the very same requests). So the metrics
(MC1/MC2/MC3, binary, transfer accuracies) are the tasks' own ``process_results`` and aggregations, per point.

Only loglikelihood tasks can be scored this way; generation and rolling requests raise (``loglikelihood_only``).
"""

from __future__ import annotations

import contextlib

from lm_eval.models.huggingface import HFLM

from .. import prefix_scoring
from ..errors import ITIError

LOGLIKELIHOOD_TYPES = ("loglikelihood", "multiple_choice")


class EngineLM(HFLM):
    """HFLM whose loglikelihood requests are scored by the engine at every point (see the module docstring)."""

    def __init__(self, pretrained, points: list[prefix_scoring.Point], *, mc_positions: str = "answer",
                 max_batch_bytes: int = prefix_scoring.DEFAULT_MAX_BATCH_BYTES, max_rows: int | None = None,
                 **kwargs):
        super().__init__(pretrained=pretrained, **kwargs)
        self.points = points
        self.mc_positions = mc_positions
        self.max_batch_bytes = max_batch_bytes
        self.max_rows = max_rows
        self.calls: list[tuple[list, list[list[tuple[float, bool]]]]] = []  # (token pairs, [point][request])
        self.stats: list[dict] = []
        self._replay: tuple[int, int] | None = None  # (point, next call)

    def replay(self, point: int) -> None:
        """From now on, answer lm-eval's calls with the recorded numbers of ``point``."""
        self._replay = (point, 0)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        if self._replay is None:
            stats: dict = {}
            results = prefix_scoring.score(self.model, pairs, self.points, max_length=self.max_length,
                                           mc_positions=self.mc_positions, max_batch_bytes=self.max_batch_bytes,
                                           max_rows=self.max_rows, softmax_dtype=self.softmax_dtype, stats=stats,
                                           progress=not disable_tqdm)
            self.calls.append((pairs, results))
            self.stats.append(stats)
            return results[0]
        point, call = self._replay
        if call >= len(self.calls) or self.calls[call][0] != pairs:
            raise ITIError("sweep engine: lm-eval asked for other requests when replaying a point than when scoring "
                           "(a task whose requests are not deterministic?); run the sweep with --engine off")
        self._replay = (point, call + 1)
        return self.calls[call][1][point]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise ITIError("the sweep engine scores loglikelihood tasks only (a task asked for rolling loglikelihoods); "
                       "run it with --engine off")

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise ITIError("the sweep engine scores loglikelihood tasks only (a task asked for generation); run it with "
                       "--engine off or leave generation tasks out")


@contextlib.contextmanager
def _without_env_info():
    """lm-eval's ``add_env_info`` (git and package versions, about 0.3 s a call) skipped: a replay's results are the
    first pass's environment, and the engine reads only their metrics and samples."""
    import lm_eval.evaluator as evaluator

    original = evaluator.add_env_info
    evaluator.add_env_info = lambda results: None
    try:
        yield
    finally:
        evaluator.add_env_info = original


def task_output_types(tasks: list[str], metadata: dict) -> dict[str, str]:
    """{leaf task: output_type} as lm-eval's TaskManager configures them (groups and tags expanded)."""
    from .driver import task_manager

    loaded = task_manager(list(tasks), metadata).load(list(tasks))
    return {name: task.OUTPUT_TYPE for name, task in loaded["tasks"].items()}


def loglikelihood_only(tasks: list[str], metadata: dict) -> list[str]:
    """The tasks (leaves) the engine cannot score: empty when every one is a loglikelihood task."""
    return sorted(name for name, kind in task_output_types(tasks, metadata).items()
                  if kind not in LOGLIKELIHOOD_TYPES)


def score_points(model, tokenizer, tasks: list[str], metadata: dict, directions, settings, *,
                 mc_positions: str = "answer", limit=None, bootstrap_iters: int = 100000,
                 apply_chat_template=False, system_instruction: str | None = None, max_length: int | None = None,
                 batch_size: int = 8, max_batch_bytes: int = prefix_scoring.DEFAULT_MAX_BATCH_BYTES,
                 max_rows: int | None = None, engine_lm: list | None = None,
                 points: list | None = None, per_task_metadata: dict[str, dict] | None = None) -> list[dict]:
    """One ``driver.run_tasks`` result per (alpha, K) of ``settings``, scored by the engine.

    ``directions``: a Directions object (K None: all its heads); ``engine_lm``: a list that receives the EngineLM
    (tests read its recorded requests and numbers); ``points``: ready-made ``prefix_scoring.Point``s instead (e.g.
    from several Directions), one per entry of ``settings``, which then only labels them; ``per_task_metadata``: as
    ``driver.run_tasks``. Each result's ``per_question`` and ``choice_loglikelihoods`` come from lm-eval's logged
    samples of that point's pass, so their means are that point's metrics."""
    from .driver import run_tasks

    if not settings:
        raise ITIError("score_points needs at least one (alpha, K) setting")
    if points is None:
        points = prefix_scoring.make_points(directions, list(settings))
    elif len(points) != len(settings):
        raise ITIError(f"score_points: {len(points)} points but {len(settings)} settings to label them")
    kwargs = dict(tokenizer=tokenizer, batch_size=batch_size)
    if max_length:
        kwargs["max_length"] = max_length
    lm = EngineLM(model, points, mc_positions=mc_positions, max_batch_bytes=max_batch_bytes, max_rows=max_rows,
                  **kwargs)
    if engine_lm is not None:
        engine_lm.append(lm)
    common = dict(limit=limit, bootstrap_iters=bootstrap_iters, apply_chat_template=apply_chat_template,
                  system_instruction=system_instruction, per_task_metadata=per_task_metadata)
    evaluations = [run_tasks(lm, list(tasks), metadata, **common)]
    with _without_env_info():  # the replays run in the same environment as the first pass
        for point in range(1, len(points)):
            lm.replay(point)
            evaluations.append(run_tasks(lm, list(tasks), metadata, **common))
    stats = {key: sum(s.get(key, 0) for s in lm.stats) for key in ("prefix_tokens", "suffix_tokens", "suffix_rows",
                                                                    "batches", "forward_seconds")}
    for (alpha, k), evaluation in zip(settings, evaluations):
        evaluation["model_info"] = dict(evaluation["model_info"], scored_by="engine", alpha=alpha, num_heads=k,
                                        mc_positions=mc_positions, engine=stats)
    return evaluations
