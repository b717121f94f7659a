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


def read_text_utf8(path: str | Path) -> str:
    """A data file's text; anything but UTF-8 (with or without BOM) is refused with one line saying what it is."""
    raw = Path(path).read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ITIError(f"{path}: is UTF-16 text; re-save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ITIError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); re-save it as "
                       "UTF-8") from None


def _label(value, where: str) -> int:
    """0 or 1 (also written "0"/"1" or true/false); anything else is refused, never coerced."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    raise ITIError(f"{where}: label {value!r} is not 0 or 1")


def _targets(obj, where: str) -> dict:
    if isinstance(obj, dict) and "choices" in obj and "labels" in obj:
        choices, labels = obj["choices"], obj["labels"]
        if not isinstance(choices, list) or not isinstance(labels, list) or len(choices) != len(labels):
            raise ITIError(f"{where}: 'choices' and 'labels' must be lists of the same length")
        return {"choices": [_answer(c, where) for c in choices], "labels": [_label(x, where) for x in labels]}
    if isinstance(obj, dict):  # TruthfulQA's mc_task.json: {answer: label}; empty answers (2025 file) dropped
        items = [(k, _label(v, f"{where} answer {str(k)[:40]!r}")) for k, v in obj.items() if str(k).strip()]
        return {"choices": [k for k, _ in items], "labels": [v for _, v in items]}
    raise ITIError(f"{where}: targets must be {{answer: label}} or {{choices, labels}}, got {type(obj).__name__}")


def _answer(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ITIError(f"{where}: an answer is empty or not text ({str(value)[:40]!r})")
    return value


def check_mc_row(doc: dict, where: str) -> None:
    """What every consumer of a multiple-choice question needs (the fit and the tasks refuse alike): a question, a
    true mc1 answer, and a true and a false mc2 answer."""
    if not doc["question"]:
        raise ITIError(f"{where}: empty question")
    for key, need_false in (("mc1_targets", False), ("mc2_targets", True)):
        if key not in doc:
            continue
        labels = doc[key]["labels"]
        if 1 not in labels:
            raise ITIError(f"{where} '{key}': no true answer (label 1)")
        if need_false and 0 not in labels:
            raise ITIError(f"{where} '{key}': no false answer (label 0)")


def check_unique_questions(questions: list[str], where: str) -> None:
    """Folds are assigned by question: a repeated question would sit in two folds (or leak between them)."""
    seen: dict[str, int] = {}
    for i, question in enumerate(questions):
        key = " ".join(question.split()).lower()
        if key in seen:
            raise ITIError(f"{where} row {i}: repeats the question of row {seen[key]} ({question[:60]!r})")
        seen[key] = i


def _check_columns(row: dict, needed, where: str) -> None:
    for col in needed:
        if col not in row:
            raise ITIError(f"{where}: missing column '{col}' (needed: {', '.join(needed)})")


def _mc_rows(rows: list[dict], where: str) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ITIError(f"{where} row {i}: expected an object with {', '.join(MC_COLUMNS)}")
        _check_columns(row, MC_COLUMNS, f"{where} row {i}")
        if not isinstance(row["question"], str):
            raise ITIError(f"{where} row {i}: 'question' is not text")
        doc = {"question": row["question"].strip()}
        for key in ("mc0_targets", "mc1_targets", "mc2_targets"):
            if key in row and row[key] is not None:
                doc[key] = _targets(row[key], f"{where} row {i} '{key}'")
        check_mc_row(doc, f"{where} row {i}")
        out.append(doc)
    check_unique_questions([d["question"] for d in out], where)
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
    text = read_text_utf8(path)
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
    import io

    with io.StringIO(read_text_utf8(local), newline="") as fh:
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


# The 2025 TruthfulQA release (binary format) -------------------------------------------------------------------
# The raw file of the TruthfulQA repository; its sha256 is the one of the 2025 release (790 questions), so a later
# upstream change shows up as a warning instead of silently different numbers.
BINARY_CSV_URL = "https://raw.githubusercontent.com/sylinrl/TruthfulQA/main/TruthfulQA.csv"
BINARY_CSV_SHA256 = "b8d8ef1e12f98b4f2a9f47abc9765da0640b182b6c5d9b92f0c1a1f2f1e02e5c"
BINARY_CSV_COLUMNS = ("Question", "Best Answer", "Best Incorrect Answer")
BINARY_JSON_COLUMNS = ("question", "best_answer", "best_incorrect_answer")


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _fetch_url(url: str, timeout: float = 60.0) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a fixed https URL or the user's)
            return response.read()
    except Exception as exc:
        raise ITIError(f"could not download {url}: {_first_line(exc)}; "
                       "pass binary_data=PATH (the 2025 TruthfulQA.csv or its folder) instead") from None


def _binary_rows_from_csv_text(text: str, where: str) -> list[dict]:
    import io

    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    missing = [c for c in BINARY_CSV_COLUMNS if c not in fields]
    if missing:
        raise ITIError(f"{where}: missing column '{missing[0]}' (the binary format needs the 2025 TruthfulQA.csv: "
                       f"{', '.join(BINARY_CSV_COLUMNS)})")
    out = []
    for i, row in enumerate(reader):
        doc = {
            "type": (row.get("Type") or "").strip(),
            "category": (row.get("Category") or "").strip(),
            "question": (row["Question"] or "").strip(),
            "best_answer": (row["Best Answer"] or "").strip(),
            "best_incorrect_answer": (row["Best Incorrect Answer"] or "").strip(),
        }
        for key in BINARY_JSON_COLUMNS:
            if not doc[key]:
                raise ITIError(f"{where} row {i}: empty '{key}'")
        out.append(doc)
    return out


def load_binary(source: str | Path = BINARY_CSV_URL) -> list[dict]:
    """The 2025 binary format: ``question``, ``best_answer``, ``best_incorrect_answer`` (+ ``type``, ``category``).

    ``source``: an http(s) URL (default: the raw 2025 CSV of the TruthfulQA repository), the 2025
    ``TruthfulQA.csv``, a folder holding it, or a JSON/JSONL file with those three fields.
    """
    src = str(source)
    if src.startswith(("http://", "https://")):
        import hashlib
        import logging

        raw = _fetch_url(src)
        digest = hashlib.sha256(raw).hexdigest()
        if src == BINARY_CSV_URL and digest != BINARY_CSV_SHA256:
            logging.getLogger(__name__).warning(
                "%s has sha256 %s, not the 2025 release's %s: upstream changed the file",
                src, digest, BINARY_CSV_SHA256)
        return _binary_rows_from_csv_text(raw.decode("utf-8-sig"), src)
    local = resolve_local(source, "TruthfulQA.csv")
    if local is None:
        raise ITIError(f"binary_data={src}: no such file or folder "
                       "(expected the 2025 TruthfulQA.csv, its folder or a URL)")
    if local.suffix in (".json", ".jsonl"):
        rows = _read_json_rows(local)
        out = []
        for i, r in enumerate(rows):
            _check_columns(r, BINARY_JSON_COLUMNS, f"{local} row {i}")
            out.append({"type": str(r.get("type", "")), "category": str(r.get("category", "")),
                        **{k: str(r[k]).strip() for k in BINARY_JSON_COLUMNS}})
        return out
    return _binary_rows_from_csv_text(read_text_utf8(local), str(local))


# NQ-open / TriviaQA transfer sets -----------------------------------------------------------------------------------
TRANSFER_HUB_IDS = {"nq_open": "OamPatel/iti_nq_open_val", "trivia_qa": "OamPatel/iti_trivia_qa_val"}
TRANSFER_CSV_COLUMNS = ("Question", "Correct Answers", "Incorrect Answers")
TRANSFER_HUB_COLUMNS = ("question", "answer", "false_answer")
TRANSFER_ANSWER_SEP = "<MULTIPLE_ANS_SEP>"


def _transfer_answers(value, where: str) -> list[str]:
    """The hub ``answer`` field: a list of strings (NQ) or a TriviaQA answer dict whose ``aliases`` are used."""
    if isinstance(value, dict):
        if "aliases" not in value:
            raise ITIError(f"{where}: 'answer' is a dict without 'aliases'")
        value = value["aliases"]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ITIError(f"{where}: 'answer' must be a list of strings or a dict with 'aliases'")
    return [str(a) for a in value]


def _transfer_row(question, answers: list[str], false_answer, where: str) -> dict:
    cleaned, seen = [], set()
    for a in answers:  # exact duplicates would count twice in the probability mass
        a = a.strip()
        if a and a not in seen:
            seen.add(a)
            cleaned.append(a)
    if not cleaned:
        raise ITIError(f"{where}: no correct answer")
    false = str(false_answer if false_answer is not None else "").strip()
    if not false:
        raise ITIError(f"{where}: empty false answer")
    return {"question": str(question).strip(), "answers": cleaned, "false_answer": false}


def load_transfer(source: str | Path) -> list[dict]:
    """An ITI transfer set as ``{question, answers: [...], false_answer}`` rows, in file order.

    ``source``: a hub id (``OamPatel/iti_nq_open_val`` / ``OamPatel/iti_trivia_qa_val``: ``question``, ``answer``
    (list, or dict whose ``aliases`` are used), ``false_answer``), a local CSV in the converted format
    (``Question``, ``Correct Answers`` joined by ``<MULTIPLE_ANS_SEP>``, ``Incorrect Answers``), or a local
    JSON/JSONL file in the hub shape.
    """
    p = Path(str(source)).expanduser()
    if p.is_dir():
        raise ITIError(f"{source}: is a folder; pass the transfer CSV itself")
    local = resolve_local(source, "")
    if local is None:
        from datasets import load_dataset

        try:
            ds = load_dataset(str(source), split="validation")
        except Exception as exc:
            raise ITIError(f"could not load {source}: {_first_line(exc)}; pass a local CSV instead") from None
        rows = [dict(r) for r in ds]
        where = str(source)
    elif local.suffix in (".json", ".jsonl"):
        rows = _read_json_rows(local)
        where = str(local)
    else:
        import io

        with io.StringIO(read_text_utf8(local), newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            missing = [c for c in TRANSFER_CSV_COLUMNS if c not in fields]
            if missing:
                raise ITIError(f"{local}: missing column '{missing[0]}' (needed: {', '.join(TRANSFER_CSV_COLUMNS)})")
            return [_transfer_row(r["Question"], (r["Correct Answers"] or "").split(TRANSFER_ANSWER_SEP),
                                  r["Incorrect Answers"], f"{local} row {i}") for i, r in enumerate(reader)]
    out = []
    for i, r in enumerate(rows):
        _check_columns(r, TRANSFER_HUB_COLUMNS, f"{where} row {i}")
        out.append(_transfer_row(r["question"], _transfer_answers(r["answer"], f"{where} row {i}"), r["false_answer"],
                                 f"{where} row {i}"))
    return out
