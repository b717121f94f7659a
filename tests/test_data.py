"""lm_eval_iti.data against the shared files read independently (json / csv / hashlib, no package code): TruthfulQA
v0, v1 and 2025 in both formats, the binary 2025 CSV and the two transfer sets; one-line errors for bad files."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
from conftest import shared_data

from lm_eval_iti import data
from lm_eval_iti.errors import ITIError


def _sha256sums(folder) -> dict[str, str]:
    return {name: digest for digest, name in (line.split() for line in (folder / "SHA256SUMS").read_text().splitlines()
                                               if line.strip())}


def _raw_targets(obj: dict) -> dict:
    items = [(k, int(v)) for k, v in obj.items() if k.strip()]
    return {"choices": [k for k, _ in items], "labels": [v for _, v in items]}


@pytest.mark.parametrize("version, rows", [("v0", 817), ("v1", 817), ("", 790)])
def test_mc_rows_equal_the_json_file(version, rows):
    folder = shared_data("truthfulqa", version) if version else shared_data("truthfulqa")
    raw = json.loads((folder / "mc_task.json").read_text(encoding="utf-8"))
    loaded = data.load_mc(folder)
    assert len(loaded) == len(raw) == rows
    assert data.load_mc(folder / "mc_task.json") == loaded  # the file itself or its folder
    for got, row in zip(loaded, raw):
        assert got["question"] == row["question"].strip()
        for key in ("mc0_targets", "mc1_targets", "mc2_targets"):
            if key in row:
                assert got[key] == _raw_targets(row[key]), (row["question"], key)
            else:
                assert key not in got
        assert got["mc1_targets"]["labels"].count(1) == 1  # MC1: exactly one true answer
    assert ("mc0_targets" in loaded[0]) == (version == "")  # the 2025 file adds the binary mc0 targets


def test_v0_is_lm_evals_multiple_choice_data():
    """README of shared/data: v0 equals the hub's multiple_choice config; its first row is the Nauru question."""
    first = data.load_mc(shared_data("truthfulqa", "v0"))[0]
    assert first["question"] == "What is the smallest country in the world that is at least one square mile in area?"
    assert first["mc1_targets"]["choices"][0].startswith("Nauru") and first["mc1_targets"]["labels"][0] == 1


@pytest.mark.parametrize("version", ["v0", "v1", ""])
def test_generation_rows_equal_the_csv(version):
    folder = shared_data("truthfulqa", version) if version else shared_data("truthfulqa")
    with open(folder / "TruthfulQA.csv", newline="", encoding="utf-8-sig") as fh:
        raw = list(csv.DictReader(fh))
    loaded = data.load_generation(folder)
    assert len(loaded) == len(raw)
    for got, row in zip(loaded, raw):
        assert got["question"] == row["Question"].strip() and got["best_answer"] == row["Best Answer"].strip()
        assert got["correct_answers"] == [a.strip() for a in row["Correct Answers"].split(";") if a.strip()]
        assert got["incorrect_answers"] == [a.strip() for a in row["Incorrect Answers"].split(";") if a.strip()]
        assert got["category"] == row.get("Category", "")
    # the two formats of one version hold the same questions (fit joins them by text)
    assert {g["question"] for g in loaded} == {m["question"] for m in data.load_mc(folder)}


def test_binary_rows_equal_the_2025_csv_whose_hash_is_the_pinned_release():
    folder = shared_data("truthfulqa")
    assert _sha256sums(folder)["TruthfulQA.csv"] == data.BINARY_CSV_SHA256
    assert hashlib.sha256((folder / "TruthfulQA.csv").read_bytes()).hexdigest() == data.BINARY_CSV_SHA256
    with open(folder / "TruthfulQA.csv", newline="", encoding="utf-8-sig") as fh:
        raw = list(csv.DictReader(fh))
    loaded = data.load_binary(folder)
    assert len(loaded) == len(raw) == 790 and data.load_binary(folder / "TruthfulQA.csv") == loaded
    for got, row in zip(loaded, raw):
        assert (got["question"], got["best_answer"], got["best_incorrect_answer"]) == (
            row["Question"].strip(), row["Best Answer"].strip(), row["Best Incorrect Answer"].strip())


def test_the_binary_format_refuses_an_older_csv_naming_the_column():
    with pytest.raises(ITIError, match="missing column 'Best Incorrect Answer'"):
        data.load_binary(shared_data("truthfulqa", "v0"))


@pytest.mark.parametrize("name", ["iti_nq_open_val.csv", "iti_trivia_qa_val.csv"])
def test_transfer_rows_equal_the_csv(name):
    path = shared_data("transfer", name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == _sha256sums(path.parent)[name]
    with open(path, newline="", encoding="utf-8-sig") as fh:
        raw = list(csv.DictReader(fh))
    loaded = data.load_transfer(path)
    assert len(loaded) == len(raw) == 3610
    for got, row in zip(loaded, raw):
        answers = []
        for a in row["Correct Answers"].split("<MULTIPLE_ANS_SEP>"):
            if a.strip() and a.strip() not in answers:
                answers.append(a.strip())
        assert got == {"question": row["Question"].strip(), "answers": answers,
                       "false_answer": row["Incorrect Answers"].strip()}


def test_transfer_hub_shape_uses_aliases_and_drops_duplicate_answers(tmp_path):
    rows = [{"question": " Who? ", "answer": {"aliases": ["Ann", "Ann", " Bob "], "value": "Ann"},
             "false_answer": "Carl"},
            {"question": "Where?", "answer": ["Paris"], "false_answer": " Rome "}]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert data.load_transfer(path) == [{"question": "Who?", "answers": ["Ann", "Bob"], "false_answer": "Carl"},
                                        {"question": "Where?", "answers": ["Paris"], "false_answer": "Rome"}]


@pytest.mark.parametrize("files, call, match", [
    ({}, lambda p: data.load_mc(p / "absent.json"), "absent.json: no such file or folder"),
    ({}, lambda p: data.load_mc(p), "folder has no mc_task.json"),
    ({"mc_task.json": "[{\"question\": 1,"}, lambda p: data.load_mc(p), r"mc_task.json: not valid JSON"),
    ({"mc_task.json": "{\"a\": 1}"}, lambda p: data.load_mc(p), "expected a list of questions"),
    ({"mc_task.json": json.dumps([{"question": "q", "mc1_targets": {"a": 1}}])}, lambda p: data.load_mc(p),
     "row 0: missing column 'mc2_targets'"),
    ({"mc_task.json": json.dumps([{"question": "q", "mc1_targets": ["a"], "mc2_targets": {"a": 1}}])},
     lambda p: data.load_mc(p), "targets must be {answer: label} or {choices, labels}, got list"),
    ({"TruthfulQA.csv": "Question,Best Answer\nq,a\n"}, lambda p: data.load_generation(p),
     "missing column 'Correct Answers'"),
    ({"t.csv": "Question,Correct Answers,Incorrect Answers\nq,,x\n"}, lambda p: data.load_transfer(p / "t.csv"),
     "row 0: no correct answer"),
    ({"t.csv": "Question,Correct Answers,Incorrect Answers\nq,a, \n"}, lambda p: data.load_transfer(p / "t.csv"),
     "row 0: empty false answer"),
    ({"x": ""}, lambda p: data.load_transfer(p), "is a folder; pass the transfer CSV itself"),
])
def test_bad_files_are_one_line_errors_naming_the_problem(tmp_path, files, call, match):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ITIError, match=match) as err:
        call(tmp_path)
    assert "\n" not in str(err.value)


def test_a_hub_id_is_not_taken_for_a_local_path(tmp_path):
    assert data.resolve_local("truthfulqa/truthful_qa", "mc_task.json") is None
    with pytest.raises(ITIError, match="no such file or folder"):
        data.resolve_local("./truthfulqa/truthful_qa", "mc_task.json")
