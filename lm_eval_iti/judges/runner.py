"""Judging many answers: cache first, then bounded parallel API requests with retries, or batches for ``hf``.

Per request: up to ``retries`` retries with exponential backoff (``backoff``·2^k, capped at 60 s, or the
server's Retry-After) on rate limits, server errors, timeouts, dropped connections and malformed bodies. When the
retries run out:
  * a malformed body is an unusable judgment: counted in ``judge_failures``, never scored as "no" (so is, without
    retries, a chat reply that does not start with yes or no; a top-k list with neither " yes" nor " no" is the
    reference's "no", counted in ``judge_undecided``: see scoring.py);
  * rate limits, server errors and timeouts end the run with a one-line :class:`JudgeError` naming the judge and
    the cause (judgments made so far are in the cache, so a rerun resumes);
  * a bad key, an unknown model or a bad request ends it at once, without retries.
With ``keep_going`` (the lm-eval aggregation), such an end is an outage instead of an exception: the judgments
made so far are kept (and cached), every other request gets an unusable judgment naming the cause, and
``Stats.outage`` holds the one-line cause, so the caller reports NaN metrics and keeps the generations.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from tqdm.auto import tqdm

from ..errors import ITIError
from .api import Fatal, JudgeError, Transient, backoff_seconds  # noqa: F401  (JudgeError: also this module's API)
from .cache import JudgmentCache
from .scoring import Judgment, failed, outage

log = logging.getLogger("lm_eval_iti.judges")


def scrub(text: str, secret: str | None) -> str:
    """Remove a secret from a message that may quote a server's words."""
    return text.replace(secret, "***") if secret and len(secret) >= 4 else text


class Stats:
    """Requests made (and retried) per judge: what tests and the report look at."""

    def __init__(self):
        self.requests = 0
        self.retries = 0
        self.cached = 0
        self.outage: str | None = None
        self.lock = threading.Lock()

    def add(self, requests: int = 0, retries: int = 0, cached: int = 0):
        with self.lock:
            self.requests += requests
            self.retries += retries
            self.cached += cached


def ask_with_retries(judge, request_text: str, retries: int, backoff: float, stats: Stats,
                     secret: str | None = None, sleep=time.sleep) -> Judgment:
    """One judgment from an API judge, retrying transient failures; see the module docstring."""
    last: Transient | None = None
    for attempt in range(retries + 1):
        if attempt:
            stats.add(retries=1)
            sleep(backoff_seconds(attempt - 1, backoff, last.retry_after if last else None))
        stats.add(requests=1)
        try:
            return judge.ask(request_text)
        except Transient as exc:
            last = exc
            log.debug("%s: attempt %d failed: %s", judge.name, attempt + 1, exc.reason)
        except Fatal as exc:
            raise JudgeError(scrub(f"{judge.name}: {exc}", secret)) from None
    assert last is not None
    if last.malformed:
        return failed(f"{last.reason} after {retries + 1} attempts")
    raise JudgeError(scrub(f"{judge.name}: {last.reason}, still failing after {retries + 1} attempts "
                           f"(retries={retries}); judgments made so far are cached, rerun to resume", secret))


# What a judge may fail with in the middle of a run (its weights, its server, its memory): an outage, not a bug.
OUTAGE_ERRORS = (ITIError, OSError, RuntimeError)


def judge_requests(judge, requests: list[str], cache: JudgmentCache, *, concurrency: int = 8, retries: int = 6,
                   backoff: float = 1.0, batch_size: int = 8, stats: Stats | None = None,
                   secret: str | None = None, progress: bool = True, keep_going: bool = False) -> list[Judgment]:
    """Judgments for ``requests`` (exact request texts), in order. Each distinct text is judged once."""
    stats = stats or Stats()
    out: dict[str, Judgment] = {}
    try:
        _judge_all(judge, requests, cache, concurrency, retries, backoff, batch_size, stats, secret, progress, out)
    except OUTAGE_ERRORS as exc:
        if not keep_going:
            raise
        stats.outage = scrub(" ".join(str(exc).split()) or type(exc).__name__, secret)
        missing = outage(stats.outage)
        for text in requests:
            out.setdefault(text, missing)
    return [out[text] for text in requests]


def _judge_all(judge, requests, cache, concurrency, retries, backoff, batch_size, stats, secret, progress, out):
    identity = judge.identity()  # which weights answer: part of every cache key
    todo: list[str] = []
    for text in dict.fromkeys(requests):
        hit = cache.get(judge.backend, judge.model, judge.revision, identity, text)
        if hit is not None:
            out[text] = hit
        else:
            todo.append(text)
    stats.add(cached=len(out))
    if todo:
        bar = tqdm(total=len(todo), desc=f"judging ({judge.kind})", unit="answer", disable=not progress,
                   leave=False)
        try:
            if judge.backend == "hf":
                _judge_batches(judge, todo, cache, batch_size, out, bar, stats)
            else:
                _judge_parallel(judge, todo, cache, concurrency, retries, backoff, out, bar, stats, secret)
        finally:
            bar.close()


def _record(judge, text: str, judgment: Judgment, cache: JudgmentCache, out: dict) -> None:
    out[text] = judgment
    cache.put(judge.backend, judge.model, judge.revision, judge.identity(), text, judgment)
    if not judgment.usable:
        log.warning("%s: unusable response, counted in judge_failures: %s", judge.name, judgment.failure)


def _judge_parallel(judge, todo, cache, concurrency, retries, backoff, out, bar, stats, secret) -> None:
    """At most ``concurrency`` requests in flight; each result is cached the moment it arrives."""
    pending = iter(todo)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="judge") as pool:
        running = {}

        def submit_next() -> bool:
            text = next(pending, None)
            if text is None:
                return False
            running[pool.submit(ask_with_retries, judge, text, retries, backoff, stats, secret)] = text
            return True

        for _ in range(concurrency):
            if not submit_next():
                break
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    text = running.pop(future)
                    _record(judge, text, future.result(), cache, out)
                    bar.update(1)
                    submit_next()
        except BaseException:
            # Keep what the requests already in flight bring back: it is paid for.
            for future in running:
                future.cancel()
            for future, text in running.items():
                if not future.cancelled() and future.exception() is None:
                    _record(judge, text, future.result(), cache, out)
            raise


def _judge_batches(judge, todo, cache, batch_size, out, bar, stats) -> None:
    order = sorted(todo, key=len)  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        stats.add(requests=len(chunk))
        for text, judgment in zip(chunk, judge.score_batch(chunk)):
            _record(judge, text, judgment, cache, out)
        bar.update(len(chunk))
