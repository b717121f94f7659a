"""Judge settings: metadata keys, environment fallback, typos, secrets, redaction, checks before generation."""

from __future__ import annotations

import logging

import pytest

from _reference.judge_server import write_eval_examples

from lm_eval_iti.errors import ITIError
from lm_eval_iti.judges import glue
from lm_eval_iti.judges.config import ALLENAI_INFO, ALLENAI_TRUTH, from_sources, redact_url


def test_defaults_and_backend_defaults():
    assert not from_sources({}, environ={}).enabled
    cfg = from_sources({"judge": "hf"}, environ={})
    assert (cfg.truth_judge, cfg.info_judge) == (ALLENAI_TRUTH, ALLENAI_INFO)
    cfg = from_sources({"judge": "chat", "judge_model": "m", "judge_base_url": "http://h/v1"}, environ={})
    assert cfg.truth_judge == cfg.info_judge == "m"


def test_metadata_values_are_typed_and_checked():
    cfg = from_sources({"judge": "openai", "truth_judge": "t", "info_judge": "i", "judge_concurrency": 3,
                        "judge_timeout": "2.5", "judge_retries": 0, "judge_check": "false"}, environ={})
    assert (cfg.concurrency, cfg.timeout, cfg.retries, cfg.check) == (3, 2.5, 0, False)
    for bad in ({"judge_concurrency": 0}, {"judge_concurrency": "many"}, {"judge_timeout": -1},
                {"judge_retries": 1.5}, {"judge_check": "maybe"}, {"judge_dtype": "float8"},
                {"judge_check_examples": 0}, {"judge_check_examples": 7}, {"judge_check_examples": -2}):
        with pytest.raises(ITIError) as err:
            from_sources({"judge": "openai", **bad}, environ={})
        assert list(bad)[0] in str(err.value) and "\n" not in str(err.value)


def test_environment_is_the_fallback_and_metadata_wins():
    env = {"LM_EVAL_ITI_JUDGE": "openai", "LM_EVAL_ITI_TRUTH_JUDGE": "env-truth",
           "LM_EVAL_ITI_JUDGE_CONCURRENCY": "5"}
    cfg = from_sources({"truth_judge": "meta-truth"}, environ=env)
    assert (cfg.backend, cfg.truth_judge, cfg.concurrency) == ("openai", "meta-truth", 5)


@pytest.mark.parametrize("metadata, needle", [
    ({"judge": "opnai"}, "judge='opnai' is not one of openai, hf, chat, none"),
    ({"judge": "openai", "judge_concurency": 4}, "did you mean judge_concurrency"),
    ({"judge": "openai", "truth_judge_rev": "x"}, "unknown judge option 'truth_judge_rev'"),
    ({"judge": "chat", "judge_base_url": "http://h/v1"}, "needs truth_judge"),
    ({"judge": "hf", "judge_base_url": "http://h/v1"}, "not judge=hf"),
    ({"judge": "openai", "judge_base_url": "localhost:8000"}, "must start with http"),
    ({"judge": "openai", "judge_api_key": "sk-123"}, "not accepted in --metadata"),
    ({"judge": "openai", "judge_api_key_env": "sk-abc/def"}, "NAME of an environment variable"),
])
def test_mistakes_are_one_line_itierrors(metadata, needle):
    with pytest.raises(ITIError) as err:
        from_sources(metadata, environ={})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_typo_in_environment_variable():
    with pytest.raises(ITIError, match="LM_EVAL_ITI_JUDGE_BASEURL"):
        from_sources({}, environ={"LM_EVAL_ITI_JUDGE_BASEURL": "http://h/v1"})


def test_record_has_no_secret(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-SECRET-0123456789")
    url = "https://bob:pw123@h.example/v1?api-key=SECRET"
    with pytest.raises(ITIError, match="carries credentials"):  # metadata ends up in the results: refused
        from_sources({"judge": "openai", "judge_base_url": url}, environ={})
    cfg = from_sources({"judge": "openai", "judge_api_key_env": "MY_JUDGE_KEY"},
                       environ={"LM_EVAL_ITI_JUDGE_BASE_URL": url})
    text = repr(cfg.record()) + repr(cfg)
    assert "SECRET" not in text and "pw123" not in text
    assert cfg.record()["base_url"] == "https://bob:***@h.example/v1?api-key=%2A%2A%2A"
    assert cfg.api_key() == "sk-SECRET-0123456789"  # read from the environment only when asked
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_api_key_required_for_openai_itself(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ITIError, match="OPENAI_API_KEY is not set"):
        from_sources({"judge": "openai"}, environ={}).api_key()
    assert from_sources({"judge": "openai", "judge_base_url": "http://h/v1"}, environ={}).api_key() == "EMPTY"


def _meta(server, **extra):
    return {"judge": "openai", "truth_judge": "truth-judge", "info_judge": "info-judge",
            "judge_base_url": server.url, "judge_cache": "off", **extra}


def test_configure_checks_the_endpoint_and_models(fake_server, tmp_path):
    glue.reset()
    fake_server.judge_like_humans(write_eval_examples(tmp_path))  # so that the judge check passes
    check = {"judge_check_data": str(tmp_path), "judge_check_examples": 4}
    cfg = glue.configure_from_metadata(**_meta(fake_server, **check), pretrained="ignored-model-arg")
    assert cfg.enabled and glue.active_config() == cfg
    assert fake_server.requests[("models", "")] == 1 + 2  # the endpoint check, then each judge's identity
    assert fake_server.total("completions") == 2 * 4  # the judge check: 4 labelled answers per judge
    with pytest.raises(ITIError, match=r"truth_judge='truth-jduge' is not served by .* \(served: truth-judge"):
        glue.configure_from_metadata(**_meta(fake_server, truth_judge="truth-jduge"))
    dead = "http://127.0.0.1:9/v1"
    with pytest.raises(ITIError, match="cannot use http://127.0.0.1:9/v1: connection failed"):
        glue.configure_from_metadata(**_meta(fake_server, judge_base_url=dead, judge_timeout=2))
    assert fake_server.total("completions") == 2 * 4  # a failed endpoint check stops before the judge check
    glue.reset()


def test_configure_reports_a_rejected_key(fake_server, monkeypatch):
    fake_server.api_key = "right-key"
    monkeypatch.setenv("OPENAI_API_KEY", "wrong-key-123456")
    with pytest.raises(ITIError) as err:
        glue.configure_from_metadata(**_meta(fake_server))
    assert "HTTP 401" in str(err.value) and "$OPENAI_API_KEY" in str(err.value)
    assert "wrong-key-123456" not in str(err.value)
    glue.reset()


def test_hf_judge_path_must_exist(tmp_path):
    with pytest.raises(ITIError, match="no such model folder"):
        glue.configure_from_metadata(judge="hf", truth_judge=str(tmp_path / "missing"), info_judge=str(tmp_path))
    glue.reset()


def test_no_judge_warns_once_and_none_disables(caplog, monkeypatch):
    monkeypatch.setenv("LM_EVAL_ITI_JUDGE", "openai")
    glue.reset()
    with caplog.at_level(logging.WARNING, logger="lm_eval_iti.judges"):
        cfg = glue.configure_from_metadata(judge=None)  # lm-eval parses "judge=none" to None: still off
        glue.configure_from_metadata(judge=None)
        assert glue.judge_results({"question": "q"}, ["A: a"]) == {}
    assert not cfg.enabled
    assert sum("judge metrics are off" in r.getMessage() for r in caplog.records) == 1
    glue.reset()


def test_process_results_emits_no_judge_metric_without_judge():
    glue.reset()
    glue.configure_from_metadata(judge="none")
    assert glue.judge_results({"question": "q"}, ["\nA: a"]) == {}
    glue.reset()

