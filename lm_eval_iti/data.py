"""TruthfulQA loading, from the hub (the default users expect) or from local files in TruthfulQA's own formats.

Every loader returns plain dicts in the Hugging Face ``truthfulqa/truthful_qa`` schema:
  multiple choice: ``question``, ``mc1_targets`` / ``mc2_targets`` (and ``mc0_targets`` in the 2025 file) as
  ``{"choices": [...], "labels": [...]}`` in file order;
  generation: ``type``, ``category``, ``question``, ``best_answer``, ``correct_answers``, ``incorrect_answers``,
  ``source`` (and ``best_incorrect_answer`` in the 2025 CSV).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .errors import ITIError

HUB_ID = "truthfulqa/truthful_qa"
MC_COLUMNS = ("question", "mc1_targets", "mc2_targets")


def _targets(obj, where: str) -> dict:
    if isinstance(obj, dict) and "choices" in obj and "labels" in obj:
        return {"choices": list(obj["choices"]), "labels": [int(x) for x in obj["labels"]]}
    if isinstance(obj, dict):  # TruthfulQA's mc_task.json: {answer: label}; empty answers (2025 file) dropped
        items = [(k, int(v)) for k, v in obj.items() if str(k).strip()]
        return {"choices": [k for k, _ in items], "labels": [v for _, v in items]}
    raise ITIError(f"{where}: targets must be {{answer: label}} or {{choices, labels}}, got {type(obj).__name__}")


def _check_columns(row: dict, needed, where: str) -> None:
    for col in needed:
        if col not in row:
            raise ITIError(f"{where}: missing column '{col}' (needed: {', '.join(needed)})")


def _mc_rows(rows: list[dict], where: str) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        _check_columns(row, MC_COLUMNS, f"{where} row {i}")
        doc = {"question": str(row["question"]).strip()}
        for key in ("mc0_targets", "mc1_targets", "mc2_targets"):
            if key in row and row[key] is not None:
                doc[key] = _targets(row[key], f"{where} row {i} '{key}'")
        out.append(doc)
    return out


def resolve_local(path: str | Path, filename: str) -> Path | None:
    """``path`` itself if it is a file, ``path/filename`` if it is a folder, else None (a hub id)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        f = p / filename
        if not f.is_file():
            raise ITIError(f"{p}: folder has no {filename}")
        return f
    if str(path).startswith((".", "/", "~")) or str(path).endswith((".json", ".jsonl", ".csv")):
        raise ITIError(f"{path}: no such file or folder")
    return None


def _read_json_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ITIError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict):
        data = data.get("validation") or data.get("data") or data
    if not isinstance(data, list):
        raise ITIError(f"{path}: expected a list of questions")
    return data


def load_mc(source: str | Path = HUB_ID) -> list[dict]:
    """Multiple-choice TruthfulQA in file order (v0 = the hub's ``multiple_choice`` config = lm-eval's data)."""
    local = resolve_local(source, "mc_task.json")
    if local is not None:
        return _mc_rows(_read_json_rows(local), str(local))
    from datasets import load_dataset

    try:
        ds = load_dataset(str(source), "multiple_choice", split="validation")
    except Exception as exc:
        raise ITIError(f"could not load {source} (multiple_choice): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}; "
                       "pass a local folder holding mc_task.json instead") from None
    return _mc_rows([dict(r) for r in ds], str(source))


def _split_answers(text: str) -> list[str]:
    return [a.strip() for a in (text or "").split(";") if a.strip()]


GEN_CSV_COLUMNS = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")


def load_generation(source: str | Path = HUB_ID) -> list[dict]:
    """Generation TruthfulQA (CSV order); ``;``-joined answer lists split, empty items dropped."""
    local = resolve_local(source, "TruthfulQA.csv")
    if local is None:
        from datasets import load_dataset

        try:
            ds = load_dataset(str(source), "generation", split="validation")
        except Exception as exc:
            raise ITIError(f"could not load {source} (generation): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}; "
                           "pass a local folder holding TruthfulQA.csv instead") from None
        return [dict(r) for r in ds]
    if local.suffix in (".json", ".jsonl"):
        rows = _read_json_rows(local)
        for i, r in enumerate(rows):
            _check_columns(r, ("question", "best_answer", "correct_answers", "incorrect_answers"), f"{local} row {i}")
        return rows
    with open(local, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in GEN_CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ITIError(f"{local}: missing column '{missing[0]}' (needed: {', '.join(GEN_CSV_COLUMNS)})")
        out = []
        for row in reader:
            doc = {
                "type": row.get("Type", ""),
                "category": row.get("Category", ""),
                "question": row["Question"].strip(),
                "best_answer": row["Best Answer"].strip(),
                "correct_answers": _split_answers(row["Correct Answers"]),
                "incorrect_answers": _split_answers(row["Incorrect Answers"]),
                "source": row.get("Source", ""),
            }
            if "Best Incorrect Answer" in row:
                doc["best_incorrect_answer"] = row["Best Incorrect Answer"].strip()
            out.append(doc)
        return out
