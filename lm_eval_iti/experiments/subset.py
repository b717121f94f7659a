"""A small local TruthfulQA folder: the first N questions of ``mc_task.json`` with their rows of the CSVs.

Fitting and the tasks must see the same question list for the folds to agree (``fit_directions(num_questions=...)``
truncates before the split, the tasks do not), so quick runs use a real subset folder instead. Rows are copied
verbatim (the same JSON objects, the same CSV lines), so every loader reads them exactly as it reads the full files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..atomic import write_text_atomic
from ..data import resolve_local
from ..errors import ITIError


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    if "Question" not in (reader.fieldnames or []):
        raise ITIError(f"{path}: missing column 'Question'")
    return list(reader.fieldnames), list(reader)


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def write_truthfulqa_subset(source: str | os.PathLike, out_dir: str | os.PathLike, num_questions: int | None,
                            binary_csv: str | os.PathLike | None = None, *, keep: set[str] | None = None) -> dict:
    """Write ``out_dir/mc_task.json`` (first ``num_questions`` questions of ``source``, or with ``keep`` those whose
    stripped text is in it, in file order), ``out_dir/TruthfulQA.csv`` (their generation rows) and, with
    ``binary_csv``, ``out_dir/binary/TruthfulQA.csv`` (their 2025 rows).

    Returns {"data_dir", "binary_data" (or None), "num_questions", "questions"}."""
    if keep is None and (num_questions is None or num_questions < 2):
        raise ITIError(f"num_questions={num_questions} must be at least 2")
    mc_path = resolve_local(source, "mc_task.json")
    if mc_path is None:
        raise ITIError(f"num_questions= needs a local data folder (data_dir= with mc_task.json), not {source}")
    try:
        rows = json.loads(mc_path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ITIError(f"{mc_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(rows, list):
        raise ITIError(f"{mc_path}: expected a list of questions")
    if keep is not None:
        kept = [r for r in rows if str(r.get("question", "")).strip() in keep]
        if len(kept) < 2:
            raise ITIError(f"{mc_path}: fewer than 2 of its questions are in the subset asked for")
        num_questions = len(kept)
    elif num_questions > len(rows):
        raise ITIError(f"num_questions={num_questions} is more than the {len(rows)} questions of {mc_path}")
    else:
        kept = rows[:num_questions]
    questions = [str(r.get("question", "")).strip() for r in kept]
    wanted = set(questions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    gen_path = mc_path.parent / "TruthfulQA.csv"
    if not gen_path.is_file():
        raise ITIError(f"{mc_path.parent}: folder has no TruthfulQA.csv (needed for generation and sigma)")
    fields, gen_rows = _read_csv(gen_path)
    gen_kept = [r for r in gen_rows if (r.get("Question") or "").strip() in wanted]
    missing = wanted - {(r.get("Question") or "").strip() for r in gen_kept}
    if missing:
        raise ITIError(f"{gen_path}: no row for question {sorted(missing)[0]!r} of {mc_path}")
    write_text_atomic(out / "mc_task.json", json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
    _write_csv(out / "TruthfulQA.csv", fields, gen_kept)

    binary_out = None
    if binary_csv is not None:
        binary_path = resolve_local(binary_csv, "TruthfulQA.csv")
        if binary_path is None:
            raise ITIError(f"binary_data={binary_csv}: num_questions= needs a local 2025 TruthfulQA.csv")
        bfields, brows = _read_csv(binary_path)
        binary_dir = out / "binary"
        binary_dir.mkdir(exist_ok=True)
        _write_csv(binary_dir / "TruthfulQA.csv", bfields,
                   [r for r in brows if (r.get("Question") or "").strip() in wanted])
        binary_out = str(binary_dir / "TruthfulQA.csv")
    return {"data_dir": str(out), "binary_data": binary_out, "num_questions": num_questions, "questions": questions}
