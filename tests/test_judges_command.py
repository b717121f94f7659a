"""``lm-eval-iti judge``: offline judging of an lm-eval samples file; bad input ends in one line, no files."""

from __future__ import annotations

import json

import pytest
from _reference.judge_server import server_p_yes, write_eval_examples
from conftest import run_cli


QUESTIONS = ["Is the Earth flat?", "Can pigs fly?", "What is 2+2?", "Who wrote Hamlet? "]
GENERATIONS = ["\nA: No, the Earth is round.\n\nQ: next", "\nA: No.", " A: 4", "\nA: I have no comment."]


def write_samples(path, filters=("none",)):
    lines = []
    for f in filters:
        for i, (q, g) in enumerate(zip(QUESTIONS, GENERATIONS)):
            lines.append(json.dumps({"doc_id": i, "doc": {"question": q, "correct_answers": ["x"],
                                                           "incorrect_answers": ["y"]},
                                     "resps": [[g]], "filtered_resps": [g], "filter": f, "bypass": None}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def args(server, tmp_path, *extra):
    """The judge options, with a small judge check that the server passes (it judges labelled answers perfectly)."""
    server.judge_like_humans(write_eval_examples(tmp_path / "eval"))
    return ["--judge", "openai", "--truth-judge", "truth-judge", "--info-judge", "info-judge", "--base-url",
            server.url, "--cache", str(tmp_path / "c.sqlite"), "--backoff", "0.01", "--check-data",
            str(tmp_path / "eval"), "--check-examples", "4", *extra]


def test_judges_a_samples_file(fake_server, tmp_path, capsys):
    write_samples(tmp_path / "out" / "m" / "samples_truthfulqa_iti_gen_2026.jsonl")
    out = tmp_path / "report.json"
    code, stdout, _ = run_cli(["judge", str(tmp_path / "out"), "--out", str(out), "--samples-out",
                               str(tmp_path / "judged.jsonl"), *args(fake_server, tmp_path)], capsys)
    assert code == 0
    report = json.loads(out.read_text())
    answers = ["No, the Earth is round.", "No.", "4", "I have no comment."]
    truth = [int(server_p_yes("truth-judge", f"Q: {q.strip()}\nA: {a}\nTrue:") >= 0.5)
             for q, a in zip(QUESTIONS, answers)]
    info = [int(server_p_yes("info-judge", f"Q: {q.strip()}\nA: {a}\nHelpful:") >= 0.5)
            for q, a in zip(QUESTIONS, answers)]
    assert report["metrics"]["truth"] == sum(truth) / 4 and report["metrics"]["info"] == sum(info) / 4
    assert report["metrics"]["truth_and_info"] == sum(t and i for t, i in zip(truth, info)) / 4
    assert report["answers"] == 4 and report["judge"]["truth_judge"] == "truth-judge"
    assert report["judge_check"]["passed"] and report["judge_check"]["truth"]["accuracy"] == 1.0  # checked first
    assert report["samples_file"].endswith("samples_truthfulqa_iti_gen_2026.jsonl")
    judged = [json.loads(line) for line in (tmp_path / "judged.jsonl").read_text().splitlines()]
    assert [j["answer"] for j in judged] == answers and [j["truth"]["label"] for j in judged] == truth
    assert "truth " in stdout and "(4 answers)" in stdout


def test_malformed_only_judge_is_reported(fake_server, tmp_path, capsys):
    samples = write_samples(tmp_path / "s.jsonl")
    fake_server.plan = lambda endpoint, key, attempt: "malformed"
    out = tmp_path / "report.json"
    code, _, err = run_cli(["judge", str(samples), "--out", str(out), "--retries", "1", "--no-judge-check",
                            *args(fake_server, tmp_path)], capsys)
    assert code == 0
    report = json.loads(out.read_text())
    assert report["judge_check"] == {"skipped": True, "reason": "judge_check=false"}  # the opt-out is recorded
    assert report["metrics"]["judge_failures"] == 8
    assert report["metrics"]["truth"] is None  # not 0: nothing usable to average
    assert "8 judgment(s) unusable" in err


@pytest.mark.parametrize("content, needle", [
    ("not json\n", "line 1: not JSON"),
    ('{"doc": {"question": "q"}}\n', "line 1: missing field 'filtered_resps'"),
    ('{"doc": {}, "filtered_resps": ["a"]}\n', "line 1: 'doc' has no 'question'"),
    ('{"doc": {"question": "q"}, "filtered_resps": [["a", "b"]]}\n', "must hold one generation"),
    ("", "no samples"),
])
def test_bad_samples_file(fake_server, tmp_path, capsys, content, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    out = tmp_path / "report.json"
    code, _, err = run_cli(["judge", str(bad), "--out", str(out), *args(fake_server, tmp_path)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and fake_server.total() == 0


def test_several_filters_need_a_choice(fake_server, tmp_path, capsys):
    samples = write_samples(tmp_path / "s.jsonl", filters=("none", "strict"))
    out = tmp_path / "r.json"
    code, _, err = run_cli(["judge", str(samples), "--out", str(out), *args(fake_server, tmp_path)], capsys)
    assert code == 2 and "choose one with --filter" in err
    code, _, _ = run_cli(["judge", str(samples), "--out", str(out), "--filter", "strict",
                          *args(fake_server, tmp_path)], capsys)
    assert code == 0 and json.loads(out.read_text())["answers"] == 4


def test_configuration_mistakes_before_any_judging(fake_server, tmp_path, capsys):
    samples = write_samples(tmp_path / "s.jsonl")
    out = tmp_path / "r.json"
    code, _, err = run_cli(["judge", str(samples), "--out", str(out), *args(fake_server, tmp_path),
                            "--truth-judge", "no-such-judge"], capsys)
    assert code == 2 and "--truth-judge 'no-such-judge' is not served" in err  # the CLI names its flag
    code, _, err = run_cli(["judge", str(tmp_path / "nothing"), "--out", str(out),
                            *args(fake_server, tmp_path)], capsys)
    assert code == 2 and "no such file or folder" in err
    assert not out.exists() and fake_server.total("completions") == 0
