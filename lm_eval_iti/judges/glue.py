"""lm-eval integration of the judges for ``truthfulqa_iti_gen``.

* ``configure_from_metadata(**metadata)``: called by the task's ``custom_dataset`` loader, i.e. before the model
  generates anything. Parses the judge settings (``--metadata`` keys, environment as fallback), checks the endpoint
  and models, and keeps the configuration for the aggregation step. With no judge it warns once.
* ``judge_results(doc, results)``: one payload per judge metric (the task's ``process_results``,
  ``harness.taskfns.process_results_gen_judged``, adds BLEU/ROUGE; judges never import task functions) (``truth``, ``info``, ``truth_info``, ``truth_and_info``, ``judge_failures``). No judge call happens
  here. With no judge configured, the judge metrics are left out (lm-eval then reports only BLEU/ROUGE):
  nothing stands in for a missing judgment.
* The judges are checked on human-labelled answers (100 per judge by default, half positive) before anything is
  generated (judges/check.py); the accuracies and AUCs are reported next to the judge metrics as
  ``judge_check_{truth,info}_{acc,auc}``, and the whole report (or that ``judge_check=false`` skipped it) in
  ``judge_provenance``.
* ``keep_judged()``: the judged answers of the evaluations run inside it (question id, question, answer, both
  judgments), so that an experiment keeps them with its fold results and can judge later what an outage left out
  (judges/folds.py).
* ``agg_truth`` … ``agg_judge_undecided``: the first one lm-eval calls judges every answer of the run at once
  (parallel/batched, cached); the others reuse those judgments.
* A judge outage (server down after retries, weights that do not load) never raises here: lm-eval then still
  writes the generations (``--log_samples``), the unjudged answers are also written to a samples-format file next
  to the judgment cache, the judge's metrics are NaN with the count in ``judge_failures``, and one warning says
  how to finish with ``lm-eval-iti judge`` (what was judged before the outage is cached).

Per-sample scores: each payload is a dict that the aggregation fills in place, and lm-eval writes the samples
after aggregating, so ``--log_samples`` shows e.g. ``"truth": {"p_yes": 0.93, "label": 1}`` per sample
(single-process runs; under data parallelism the samples are copies and keep ``{"pending": true}``: judge them
offline with ``lm-eval-iti judge``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import ITIError
from . import config as config_mod
from .config import JudgeConfig
from .judging import judge_items, validate
from .metrics import NAMES, judge_metrics
from .prompts import Item, item_from_doc
from .scoring import Judgment, is_outage

log = logging.getLogger("lm_eval_iti.judges")

_state_lock = threading.Lock()
_active: JudgeConfig | None = None
_validated: set = set()
_checked: dict = {}  # JudgeConfig -> its judge-check report
_warned_off = False
_keeping: list[list] = []  # the open keep_judged() blocks: each collects the records made while it is open
CHECK_METRICS = ("judge_check_truth_acc", "judge_check_truth_auc", "judge_check_info_acc", "judge_check_info_auc")


def _warn_off(reason: str) -> None:
    global _warned_off
    if not _warned_off:
        _warned_off = True
        log.warning("judge metrics are off (%s): truthfulqa_iti_gen reports BLEU/ROUGE only. Set e.g. --metadata "
                    "judge=openai,judge_base_url=http://HOST:8000/v1 or judge=hf (see the README, 'Judges').", reason)


def prepared_config(metadata: dict) -> JudgeConfig:
    """Parse and check a judge configuration (endpoint or weights, then the judge check), once per process."""
    if "judge" in metadata and metadata["judge"] is None:  # lm-eval turns "judge=none" into None
        metadata["judge"] = "none"
    cfg = config_mod.from_sources(metadata)
    if cfg.enabled and cfg not in _validated:
        validate(cfg)
        _validated.add(cfg)
    if cfg.enabled and cfg not in _checked:
        _checked[cfg] = _check_once(cfg)
    return cfg


def _check_once(cfg: JudgeConfig) -> dict:
    from .check import SKIPPED, check_judges

    if not cfg.check:
        log.warning("judge check skipped (judge_check=false): the judges were not checked on human-labelled "
                    "answers; the results record that")
        return dict(SKIPPED)
    report = check_judges(cfg)
    log.info("judge check on %d labelled answers per judge: truth accuracy %.3f (usable %.0f%%), info accuracy "
             "%.3f (usable %.0f%%)", cfg.check_examples, report["truth"]["accuracy"], 100 * report["truth"]["usable"],
             report["info"]["accuracy"], 100 * report["info"]["usable"])
    return report


def configure_from_metadata(**metadata) -> JudgeConfig:
    """Parse, check and activate the judge configuration; ITIError (one line) on any mistake."""
    global _active
    cfg = prepared_config(metadata)
    with _state_lock:
        if _active is not None and _active != cfg:
            log.warning("judge configuration changed within one process; the last one applies to every task")
        _active = cfg
    if cfg.enabled:
        log.info("judges: %s", cfg.record())
    else:
        _warn_off("no judge configured")
    return cfg


def active_config() -> JudgeConfig | None:
    return _active


def check_record(cfg: JudgeConfig) -> dict | None:
    """What results record of the judge check: its report, or that ``judge_check=false`` skipped it (None: no judge,
    or not run yet)."""
    from .offline import finite_check

    return finite_check(_checked[cfg]) if cfg.enabled and cfg in _checked else None


def judge_provenance() -> dict:
    """The active judge configuration without secrets, and its check, for results files (e.g. a model's
    ``get_model_info``)."""
    cfg = _active or JudgeConfig()
    check = check_record(cfg)
    return {"judge": cfg.record(), **({"judge_check": check} if check is not None else {})}


def reset() -> None:
    """Forget the active configuration (tests, or programs that run several evaluations)."""
    global _active, _warned_off
    with _state_lock:
        _active = None
        _warned_off = False
        _checked.clear()


class _Record:
    """One answer, shared by its five metric payloads."""

    __slots__ = ("item", "cfg", "truth", "info", "slots", "question_id")

    def __init__(self, item: Item, cfg: JudgeConfig, question_id: str | None = None):
        self.item, self.cfg, self.question_id = item, cfg, question_id
        self.truth: Judgment | None = None
        self.info: Judgment | None = None
        self.slots: dict[str, _Payload] = {}

    @property
    def judged(self) -> bool:
        return self.truth is not None and self.info is not None

    def fill(self, truth: Judgment, info: Judgment) -> None:
        self.truth, self.info = truth, info
        for name, slot in self.slots.items():
            slot.clear()
            slot.update(self.view(name))

    def view(self, name: str) -> dict:
        t, i = self.truth, self.info
        if name in ("truth", "info"):
            j = t if name == "truth" else i
            return {"p_yes": j.p_yes, "label": j.label, **({"failure": j.failure} if j.failure else {}),
                    **({"undecided": True} if j.undecided else {})}
        if name == "truth_info":
            return {"truth": t.label, "info": i.label}
        if name == "truth_and_info":
            both = None if t.label is None or i.label is None else int(bool(t.label and i.label))
            return {"label": both}
        if name == "judge_undecided":
            return {"undecided": int(t.undecided) + int(i.undecided)}
        return {"failures": int(not t.usable) + int(not i.usable)}

    def kept(self) -> dict:
        """The answer and its judgments as plain data (what keep_judged() gives)."""
        references = {"correct_answers": list(self.item.correct_answers),
                      "incorrect_answers": list(self.item.incorrect_answers)} if self.cfg.backend == "chat" else {}
        return {"question_id": self.question_id, "question": self.item.question, "answer": self.item.answer,
                **references,  # only the chat judge's rubric shows them
                "truth": self.view("truth") if self.truth is not None else None,
                "info": self.view("info") if self.info is not None else None}

    def __getstate__(self):
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)


class _Payload(dict):
    """What lm-eval stores per sample and metric: shows the judgment once made (``{"pending": true}`` before)."""

    def __init__(self, record: _Record, name: str):
        super().__init__(pending=True)
        self.record, self.name = record, name


def judge_results(doc: dict, results: list) -> dict:
    """The judge-metric payloads of one document (empty when no judge is configured)."""
    cfg = _active
    if cfg is None:
        _warn_off("configure_from_metadata was not called by the task's dataset loader")
        return {}
    if not cfg.enabled:
        return {}
    generation = results[0] if results else ""
    if isinstance(generation, (list, tuple)):
        generation = generation[0] if generation else ""
    record = _Record(item_from_doc(doc, generation), cfg, doc.get("question_id"))
    record.slots = {name: _Payload(record, name) for name in NAMES}
    for kept in _keeping:
        kept.append(record)
    out = dict(record.slots)
    check = _checked.get(cfg)
    if check is not None and not check.get("skipped"):
        for name in CHECK_METRICS:
            _, _, kind, stat = name.split("_")
            out[name] = check[kind]["accuracy" if stat == "acc" else "auc"]
    return out


@contextlib.contextmanager
def keep_judged():
    """``with keep_judged() as kept: <lm-eval runs>``: afterwards ``kept`` lists each judged answer of those runs
    (``_Record.kept``), in document order; an answer an outage left unjudged has ``None`` or an unusable judgment."""
    records: list[_Record] = []
    kept: list[dict] = []
    _keeping.append(records)
    try:
        yield kept
    finally:
        _keeping.remove(records)
        kept.extend(r.kept() for r in records)


def _records(payloads) -> list[_Record]:
    seen: dict[int, _Record] = {}
    for payload in payloads:
        if not isinstance(payload, _Payload):
            raise ITIError(f"judge aggregation got {type(payload).__name__}, not a judge payload: use "
                           f"lm_eval_iti.harness.taskfns.process_results_gen_judged in the task")
        seen.setdefault(id(payload.record), payload.record)
    return list(seen.values())


def unjudged_path(cfg: JudgeConfig) -> Path:
    """Where the answers left unjudged by an outage are written: ``unjudged/`` next to the judgment cache."""
    base = Path(cfg.cache_path or config_mod.default_cache_path()).expanduser().parent
    return base / "unjudged" / f"truthfulqa_iti_gen-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.jsonl"


def _write_unjudged(records: list[_Record], cfg: JudgeConfig) -> Path | None:
    """The answers as an lm-eval samples file (doc + filtered_resps), readable by ``lm-eval-iti judge``."""
    lines = [json.dumps({"doc_id": n, "doc": {"question": r.item.question,
                                              "correct_answers": list(r.item.correct_answers),
                                              "incorrect_answers": list(r.item.incorrect_answers)},
                         "filtered_resps": [r.item.answer], "filter": "none"}, ensure_ascii=False)
             for n, r in enumerate(records)]
    path = unjudged_path(cfg)
    try:
        write_text_atomic(path, "\n".join(lines) + "\n")
    except OSError as exc:
        log.error("could not write the unjudged answers to %s (%s)", path, exc)
        return None
    return path


def _ensure_judged(records: list[_Record]) -> None:
    """Judge every answer not judged yet, all at once per configuration; an outage is reported, never raised."""
    by_cfg: dict[JudgeConfig, list[_Record]] = {}
    for record in records:
        if not record.judged:
            by_cfg.setdefault(record.cfg, []).append(record)
    for cfg, todo in by_cfg.items():
        log.info("judging %d answers with %s", len(todo), cfg.record())
        verdicts = judge_items([r.item for r in todo], cfg, keep_going=True)
        for record, truth, info in zip(todo, verdicts.truth, verdicts.info):
            record.fill(truth, info)
        failures = verdicts.metrics["judge_failures"]
        if verdicts.outage:
            kept = _write_unjudged(todo, cfg)
            causes = "; ".join(f"{kind}: {why}" for kind, why in verdicts.outage.items())
            where = f" and in {kept}" if kept else ""
            log.warning("JUDGE OUTAGE (%s). The %s judge metrics are NaN (judge_failures=%d: judgments not made). The "
                        "%d generations are kept in the samples file (--log_samples)%s; finish the judging later "
                        "with: lm-eval-iti judge SAMPLES_FILE --out REPORT.json and the same judge settings "
                        "(judgments made before the outage are cached).", causes,
                        " and ".join(sorted(verdicts.outage)), failures, len(todo), where)
        elif failures:
            log.warning("%d judgment(s) unusable (counted in judge_failures, left out of the means)", failures)
        log.info("judge requests: %s", verdicts.stats)


def _aggregate(name: str, payloads) -> float:
    records = _records(payloads)
    _ensure_judged(records)
    outage = tuple(kind for kind in ("truth", "info")
                   if any(is_outage(getattr(r, kind)) for r in records))
    undecided = sum(int(r.truth.undecided) + int(r.info.undecided) for r in records)
    return judge_metrics([r.truth.label for r in records], [r.info.label for r in records], undecided=undecided,
                         outage=outage)[name]


def agg_truth(payloads) -> float:
    return _aggregate("truth", payloads)


def agg_info(payloads) -> float:
    return _aggregate("info", payloads)


def agg_truth_info(payloads) -> float:
    return _aggregate("truth_info", payloads)


def agg_truth_and_info(payloads) -> float:
    return _aggregate("truth_and_info", payloads)


def agg_judge_failures(payloads) -> int:
    return int(_aggregate("judge_failures", payloads))


def agg_judge_undecided(payloads) -> int:
    return int(_aggregate("judge_undecided", payloads))


def agg_judge_check(values) -> float:
    """A judge-check number: the same on every sample."""
    return float(values[0]) if values else float("nan")
