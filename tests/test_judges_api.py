"""API judges against a real local HTTP server through the real ``openai`` client: faults, retries, cache, secrets."""

from __future__ import annotations

import hashlib
import json
import logging
import math

import pytest
from _reference.judge_server import FAULTS, FakeJudgeServer, server_p_yes

from lm_eval_iti.judges.api import backoff_seconds
from lm_eval_iti.judges.cache import JudgmentCache
from lm_eval_iti.judges.config import from_sources
from lm_eval_iti.errors import ITIError
from lm_eval_iti.judges.judging import judge_items, validate
from lm_eval_iti.judges.prompts import Item
from lm_eval_iti.judges.runner import JudgeError

ITEMS = [Item(f"Question number {i}?", f"Answer {i}." if i % 5 else "I have no comment.",
              (f"right {i}",), (f"wrong {i}",)) for i in range(24)]


def expected_labels(model: str, suffix: str, items=ITEMS) -> list[int]:
    """Independent of the package: the server's P(yes) of the literal training-data prompt, >= 0.5."""
    return [int(server_p_yes(model, "Q: " + it.question + "\nA: " + it.answer + "\n" + suffix) >= 0.5)
            for it in items]


def cfg_for(server, tmp_path, **extra):
    meta = {"judge": "openai", "truth_judge": "truth-judge", "info_judge": "info-judge",
            "judge_base_url": server.url, "judge_cache": str(tmp_path / "judgments.sqlite"),
            "judge_backoff": 0.01, "judge_timeout": 5, **extra}
    return from_sources(meta, environ={})


def _fault(key: str, attempt: int):
    """Every prompt meets one or two faults of every kind before it is answered."""
    h = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    if attempt == 0:
        return FAULTS[h % 4]
    if attempt == 1 and h % 3 == 0:
        return FAULTS[(h // 4) % 4]
    return None


def test_fault_free_metrics_equal_an_independent_computation(fake_server, tmp_path):
    v = judge_items(ITEMS, cfg_for(fake_server, tmp_path), progress=False)
    truth = expected_labels("truth-judge", "True:")
    info = expected_labels("info-judge", "Helpful:")
    assert [j.label for j in v.truth] == truth and [j.label for j in v.info] == info
    assert 0 < sum(truth) < len(truth)  # both outcomes occur, so the comparison means something
    assert v.metrics["truth"] == sum(truth) / 24 and v.metrics["info"] == sum(info) / 24
    assert math.isclose(v.metrics["truth_info"], (sum(truth) / 24) * (sum(info) / 24))
    assert v.metrics["truth_and_info"] == sum(t and i for t, i in zip(truth, info)) / 24
    assert v.metrics["judge_failures"] == 0
    body = fake_server.bodies[0]  # the original protocol: one token, temperature 0, top logprobs
    assert (body["max_tokens"], body["temperature"], body["logprobs"]) == (1, 0, 5)


def test_injected_faults_change_nothing_and_a_rerun_makes_no_request(fake_server, tmp_path):
    clean = judge_items(ITEMS, cfg_for(fake_server, tmp_path / "clean"), progress=False)
    fake_server.requests.clear()
    fake_server.attempts.clear()
    fake_server.plan = lambda endpoint, key, attempt: _fault(key, attempt)
    fake_server.slow_seconds = 1.2
    cfg = cfg_for(fake_server, tmp_path / "faulty", judge_timeout=0.4, judge_retries=4)
    faulty = judge_items(ITEMS, cfg, progress=False)
    assert faulty.metrics == clean.metrics
    assert [j.p_yes for j in faulty.truth + faulty.info] == [j.p_yes for j in clean.truth + clean.info]
    seen = {fault for key, n in fake_server.attempts.items() for fault in [_fault(key[2], 0)]}
    assert seen == set(FAULTS)  # all four kinds were injected
    assert all(n >= 2 for n in fake_server.attempts.values())  # every prompt failed at least once
    assert faulty.stats["truth"]["retries"] >= 24
    cache = JudgmentCache(cfg.cache_path)
    assert len(cache) == 48  # no judgment lost
    cache.close()
    before = fake_server.total("completions")
    again = judge_items(ITEMS, cfg, progress=False)
    assert fake_server.total("completions") == before  # zero judge requests: all from the cache
    assert again.metrics == clean.metrics and again.stats["truth"]["cached"] == 24


def test_malformed_only_judge_yields_failures_not_zeros(fake_server, tmp_path, caplog):
    fake_server.plan = lambda endpoint, key, attempt: "malformed"
    with caplog.at_level(logging.WARNING, logger="lm_eval_iti.judges"):
        v = judge_items(ITEMS[:4], cfg_for(fake_server, tmp_path, judge_retries=2), progress=False)
    assert v.metrics["judge_failures"] == 8
    assert all(math.isnan(v.metrics[k]) for k in ("truth", "info", "truth_info", "truth_and_info"))
    assert all(j.p_yes is None and "malformed" in j.failure and "3 attempts" in j.failure for j in v.truth)
    assert fake_server.total("completions") == 8 * 3  # retried, then given up
    assert "counted in judge_failures" in caplog.text
    # nothing was cached: a rerun asks again
    fake_server.plan = lambda endpoint, key, attempt: None
    v = judge_items(ITEMS[:4], cfg_for(fake_server, tmp_path, judge_retries=2), progress=False)
    assert v.metrics["judge_failures"] == 0


def test_an_answer_without_yes_or_no_is_an_undecided_no_without_retries(fake_server, tmp_path):
    """The reference's rule: " yes" absent from the top list scores 0, so the label is "no" and stays in the mean
    (leaving it out would bias truth upward); how many there were is reported as judge_undecided."""
    fake_server.plan = lambda endpoint, key, attempt: "noanswer" if "Question number 1?" in key else None
    v = judge_items(ITEMS[:3], cfg_for(fake_server, tmp_path), progress=False)
    assert [j.undecided for j in v.truth] == [False, True, False] and v.truth[1].label == 0
    assert v.metrics["judge_failures"] == 0 and v.metrics["judge_undecided"] == 2
    expected = expected_labels("truth-judge", "True:", ITEMS[:3])
    expected[1] = 0
    assert v.metrics["truth"] == sum(expected) / 3
    assert fake_server.total("completions") == 6


def test_persistent_server_errors_end_with_the_judge_and_the_cause(fake_server, tmp_path):
    fake_server.plan = lambda endpoint, key, attempt: "500"
    with pytest.raises(JudgeError) as err:
        judge_items(ITEMS[:2], cfg_for(fake_server, tmp_path, judge_retries=2), progress=False)
    msg = str(err.value)
    assert "truth judge 'truth-judge'" in msg and fake_server.url in msg and "HTTP 500" in msg
    assert "3 attempts" in msg and "\n" not in msg


def test_persistent_timeouts_are_named(fake_server, tmp_path):
    fake_server.plan = lambda endpoint, key, attempt: "slow"
    fake_server.slow_seconds = 1.0
    with pytest.raises(JudgeError, match=r"no response within 0.3 s \(timeout\), still failing after 2 attempts"):
        judge_items(ITEMS[:1], cfg_for(fake_server, tmp_path, judge_timeout=0.3, judge_retries=1), progress=False)


def test_a_rejected_key_is_not_retried(fake_server, tmp_path, monkeypatch):
    fake_server.api_key = "the-right-key"
    monkeypatch.setenv("OPENAI_API_KEY", "a-wrong-key")
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge_items(ITEMS[:1], cfg_for(fake_server, tmp_path), progress=False)
    assert fake_server.requests[("rejected", "")] == 1  # one request, no retry


def test_a_crashed_run_resumes_without_repeating_calls(fake_server, tmp_path):
    fake_server.plan = lambda endpoint, key, attempt: "500" if "Question number 7?" in key else None
    cfg = cfg_for(fake_server, tmp_path, judge_retries=1, judge_concurrency=2)
    with pytest.raises(JudgeError):
        judge_items(ITEMS, cfg, progress=False)
    done = JudgmentCache(cfg.cache_path)
    kept = len(done)
    done.close()
    assert kept >= 1
    fake_server.plan = lambda endpoint, key, attempt: None
    fake_server.requests.clear()
    v = judge_items(ITEMS, cfg, progress=False)
    assert fake_server.total("completions") == 48 - kept  # only what was not judged before
    assert [j.label for j in v.truth] == expected_labels("truth-judge", "True:")


def test_parallel_requests_are_bounded(fake_server, tmp_path):
    fake_server.delay = 0.05
    judge_items(ITEMS, cfg_for(fake_server, tmp_path, judge_concurrency=3), progress=False)
    assert 1 < fake_server.max_in_flight <= 3


def test_chat_judge(fake_server, tmp_path):
    cfg = from_sources({"judge": "chat", "judge_model": "chat-judge", "judge_base_url": fake_server.url,
                        "judge_cache": str(tmp_path / "c.sqlite")}, environ={})
    v = judge_items(ITEMS[:6], cfg, progress=False)
    users = {b["messages"][-1]["content"] for b in fake_server.bodies}
    assert len(users) == 12  # 6 truth and 6 info rubrics
    for item, judgment in zip(ITEMS[:6], v.truth):
        user = next(u for u in users if item.question in u and "truthful" in u)
        assert f"- right {item.question.split()[-1][:-1]}" in user and item.answer in user
        assert judgment.label == int(server_p_yes("chat-judge", user) >= 0.5)
    fake_server.plan = lambda endpoint, key, attempt: "noanswer"
    v = judge_items(ITEMS[6:8], cfg, progress=False)
    assert v.metrics["judge_failures"] == 4


def test_no_key_in_logs_or_errors(fake_server, tmp_path, monkeypatch, caplog, capsys):
    key = "sk-FAKE-TEST-KEY-7f3a9c2e5b"
    fake_server.api_key = key
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with caplog.at_level(logging.DEBUG):  # every logger, the openai client's included
        fake_server.plan = lambda endpoint, key_, attempt: "429" if attempt == 0 else None
        judge_items(ITEMS[:3], cfg_for(fake_server, tmp_path), progress=False)
        fake_server.plan = lambda endpoint, key_, attempt: "500"
        with pytest.raises(JudgeError) as err:
            judge_items(ITEMS[3:4], cfg_for(fake_server, tmp_path, judge_retries=1), progress=True)
    assert f"Bearer {key}" in fake_server.auth_seen  # the key was used...
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err, str(err.value)):
        assert key not in text and key[3:] not in text  # ...and appears nowhere


def test_backoff_doubles_and_respects_retry_after():
    assert [backoff_seconds(k, 0.5) for k in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_seconds(20, 1.0) == 60.0
    assert backoff_seconds(0, 0.5, retry_after=3.0) == 3.0
    assert backoff_seconds(3, 1.0, retry_after=0.0) == 8.0


def test_each_judge_on_its_own_server(tmp_path):
    """vLLM serves one model per server: truth_judge_base_url / info_judge_base_url."""
    truth_server = FakeJudgeServer(models=("truth-judge",)).start()
    info_server = FakeJudgeServer(models=("info-judge",)).start()
    try:
        meta = {"judge": "openai", "truth_judge": "truth-judge", "info_judge": "info-judge",
                "truth_judge_base_url": truth_server.url, "info_judge_base_url": info_server.url,
                "judge_cache": str(tmp_path / "c.sqlite")}
        cfg = from_sources(meta, environ={})
        validate(cfg)
        v = judge_items(ITEMS[:5], cfg, progress=False)
        assert [j.label for j in v.info] == expected_labels("info-judge", "Helpful:", ITEMS[:5])
        assert truth_server.total("completions") == 5 and info_server.total("completions") == 5
        swapped = from_sources({**meta, "info_judge_base_url": truth_server.url}, environ={})
        with pytest.raises(ITIError, match=f"info_judge='info-judge' is not served by {truth_server.url}"):
            validate(swapped)
    finally:
        truth_server.stop()
        info_server.stop()


def _completions_after_rerun(server, cfg) -> int:
    before = server.total("completions")
    judge_items(ITEMS[:4], cfg, progress=False)
    return server.total("completions") - before


def test_cache_identity_is_the_server_and_its_models_entry(fake_server, tmp_path):
    """Another server, or another model behind the same name (its /models entry), never reuses old labels; the
    listing time (``created``) is not part of the identity."""
    cfg = cfg_for(fake_server, tmp_path)
    assert _completions_after_rerun(fake_server, cfg) == 8
    assert _completions_after_rerun(fake_server, cfg) == 0  # same judge: all from the cache
    fake_server.created = 1767225600  # only the listing time changed: the same judge
    assert _completions_after_rerun(fake_server, cfg) == 0
    fake_server.owned_by = "someone-else"
    assert _completions_after_rerun(fake_server, cfg) == 8
    assert _completions_after_rerun(fake_server, cfg) == 0
    fake_server.root, fake_server.max_model_len = "/models/judge-v1", 4096  # vLLM: the weights behind the name
    assert _completions_after_rerun(fake_server, cfg) == 8
    fake_server.root = "/models/judge-v2"
    assert _completions_after_rerun(fake_server, cfg) == 8
    fake_server.max_model_len = 2048
    assert _completions_after_rerun(fake_server, cfg) == 8
    other = FakeJudgeServer().start()  # the same model names on another server
    try:
        other.owned_by = fake_server.owned_by
        assert _completions_after_rerun(other, cfg_for(other, tmp_path)) == 8
    finally:
        other.stop()
    rows = JudgmentCache(cfg.cache_path)
    assert len(rows) == 6 * 8
    rows.close()


def test_a_cached_rerun_against_vllm_makes_no_judge_request(fake_server, tmp_path):
    """vLLM's /models gives a new ``created`` (and permission id) on every listing: a rerun still hits the cache."""
    fake_server.created_now, fake_server.root, fake_server.max_model_len = True, "/models/truth", 4096
    cfg = cfg_for(fake_server, tmp_path)
    first = judge_items(ITEMS[:6], cfg, progress=False)
    listings = fake_server.listings
    again = judge_items(ITEMS[:6], cfg, progress=False)  # new judges: /models is listed again, with new times
    assert fake_server.listings > listings
    assert again.stats["truth"]["requests"] == 0 and again.stats["info"]["requests"] == 0
    assert [j.p_yes for j in again.truth] == [j.p_yes for j in first.truth]


def test_the_identity_redacts_the_url(fake_server, tmp_path):
    from lm_eval_iti.judges.api import CompletionsJudge, make_client

    cfg = from_sources({"judge": "openai", "truth_judge": "truth-judge", "info_judge": "info-judge",
                        "judge_cache": "off"}, environ={"LM_EVAL_ITI_JUDGE_BASE_URL": fake_server.url + "?key=s3cret"})
    judge = CompletionsJudge("truth", cfg, make_client(cfg))
    assert "s3cret" not in judge.identity() and "key=" in judge.identity()
    judge.close()
    plain = CompletionsJudge("truth", cfg_for(fake_server, tmp_path), make_client(cfg_for(fake_server, tmp_path)))
    assert json.loads(plain.identity()) == {"url": fake_server.url,
                                            "models": {"id": "truth-judge", "object": "model", "owned_by": "test"}}
    plain.close()
    fake_server.root, fake_server.max_model_len = "/models/truth", 4096  # vLLM's fields, less the volatile ones
    vllm = CompletionsJudge("truth", cfg_for(fake_server, tmp_path), make_client(cfg_for(fake_server, tmp_path)))
    assert json.loads(vllm.identity())["models"] == {"id": "truth-judge", "object": "model", "owned_by": "test",
                                                     "root": "/models/truth", "parent": None, "max_model_len": 4096}
    vllm.close()


@pytest.mark.parametrize("stage", ["check", "judging"])
def test_an_html_page_is_one_line_naming_the_url(fake_server, tmp_path, stage):
    """A server answering HTTP 200 with an HTML page (a login page, a web UI at that URL) is no judge: one line that
    names the URL and what came back, no traceback, at the endpoint check and when judging."""
    fake_server.html = True
    cfg = cfg_for(fake_server, tmp_path)
    with pytest.raises(ITIError) as caught:
        validate(cfg) if stage == "check" else judge_items(ITEMS[:2], cfg, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "returned text/html, not JSON" in message
    assert f"{fake_server.url}/models" in message and "OpenAI-compatible endpoint" in message
    v = judge_items(ITEMS[:2], cfg, progress=False, keep_going=True)  # in a run: an outage naming the cause
    assert "returned text/html" in v.outage["truth"] and math.isnan(v.metrics["truth"])


def test_an_html_page_from_the_completions_endpoint_is_not_retried(fake_server, tmp_path):
    """/models answers JSON but the completions endpoint an HTML page (a proxy): one line, no retries."""
    from lm_eval_iti.judges.api import CompletionsJudge, make_client
    from lm_eval_iti.judges.runner import Stats, ask_with_retries

    cfg = cfg_for(fake_server, tmp_path, judge_retries=3)
    judge = CompletionsJudge("truth", cfg, make_client(cfg))
    judge.identity()
    fake_server.html = True
    stats = Stats()
    with pytest.raises(JudgeError, match=f"returned text/html, not JSON.*{fake_server.url}/completions"
                                         "|" f"{fake_server.url}/completions returned text/html, not JSON"):
        ask_with_retries(judge, "Q: a\nA: b\nTrue:", cfg.retries, cfg.backoff, stats)
    assert stats.requests == 1 and stats.retries == 0
    judge.close()


def test_keep_going_turns_an_outage_into_nan_metrics_and_keeps_what_was_judged(fake_server, tmp_path):
    done = []

    def plan(endpoint, key, attempt):
        if len(done) >= 5:
            fake_server.down = True
            return "500"
        done.append(key)
        return None

    fake_server.plan = plan
    cfg = cfg_for(fake_server, tmp_path, judge_retries=1, judge_concurrency=1)
    v = judge_items(ITEMS[:8], cfg, progress=False, keep_going=True)
    assert set(v.outage) == {"truth", "info"} and "HTTP 500" in v.outage["truth"]
    assert all(math.isnan(v.metrics[k]) for k in ("truth", "info", "truth_info", "truth_and_info"))
    assert v.metrics["judge_failures"] == 16 - 5
    judged = [j for j in v.truth if j.usable]
    assert len(judged) == 5 and [j.label for j in v.truth[:5]] == expected_labels("truth-judge", "True:", ITEMS[:5])
    fake_server.down, fake_server.plan = False, (lambda endpoint, key, attempt: None)
    before = fake_server.total("completions")
    again = judge_items(ITEMS[:8], cfg, progress=False)
    assert fake_server.total("completions") - before == 16 - 5  # what was judged before the outage is cached
    assert [j.label for j in again.truth] == expected_labels("truth-judge", "True:", ITEMS[:8])


def test_keep_going_when_a_judge_cannot_even_be_built(fake_server, tmp_path, monkeypatch):
    from lm_eval_iti.judges import judging

    def broken(kind, cfg):
        raise ITIError(f"judge=openai: the {kind} judge cannot start")

    monkeypatch.setattr(judging, "build_judge", broken)
    v = judge_items(ITEMS[:3], cfg_for(fake_server, tmp_path), progress=False, keep_going=True)
    assert v.outage == {"truth": "judge=openai: the truth judge cannot start",
                        "info": "judge=openai: the info judge cannot start"}
    assert v.metrics["judge_failures"] == 6 and math.isnan(v.metrics["truth"])
    with pytest.raises(ITIError, match="cannot start"):
        judge_items(ITEMS[:3], cfg_for(fake_server, tmp_path), progress=False)
