"""Judging an existing lm-eval samples file (``samples_truthfulqa_iti_gen_*.jsonl``, e.g. from ``--predict_only``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..artifact import file_sha256
from ..atomic import write_json_atomic, write_text_atomic
from ..errors import ITIError
from .config import JudgeConfig
from .judging import judge_items, validate
from .prompts import Item, item_from_doc

SAMPLES_GLOB = "samples_truthfulqa_iti_gen_*.jsonl"


def find_samples_file(path: str | Path) -> Path:
    """``path`` itself, or the one gen samples file under the folder ``path``."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted(p.rglob(SAMPLES_GLOB))
        if len(found) == 1:
            return found[0]
        if not found:
            raise ITIError(f"{p}: no {SAMPLES_GLOB} in this folder (run lm_eval with --log_samples)")
        raise ITIError(f"{p}: {len(found)} files match {SAMPLES_GLOB}; pass the one to judge")
    raise ITIError(f"{p}: no such file or folder")


def _generation(value, where: str) -> str:
    while isinstance(value, list):
        if len(value) != 1:
            raise ITIError(f"{where}: 'filtered_resps' must hold one generation, found {len(value)}")
        value = value[0]
    if not isinstance(value, str):
        raise ITIError(f"{where}: 'filtered_resps' is not text")
    return value


def read_samples(path: Path, filter_name: str | None = None) -> tuple[list[dict], list[Item]]:
    """(sample lines, judge items) of one filter; ITIError naming the line and field on bad input."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ITIError(f"{path} line {n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ITIError(f"{path} line {n}: not a sample object")
        for field in ("doc", "filtered_resps"):
            if field not in row:
                raise ITIError(f"{path} line {n}: missing field '{field}' (is this an lm-eval samples file?)")
        if not isinstance(row["doc"], dict) or "question" not in row["doc"]:
            raise ITIError(f"{path} line {n}: 'doc' has no 'question'")
        row["_line"] = n
        rows.append(row)
    if not rows:
        raise ITIError(f"{path}: no samples")
    filters = sorted({str(r.get("filter", "none")) for r in rows})
    if filter_name is None:
        if len(filters) > 1:
            raise ITIError(f"{path}: samples of several filters ({', '.join(filters)}); choose one with filter=")
        filter_name = filters[0]
    rows = [r for r in rows if str(r.get("filter", "none")) == filter_name]
    if not rows:
        raise ITIError(f"{path}: no samples with filter {filter_name!r} (found: {', '.join(filters)})")
    items = [item_from_doc(r["doc"], _generation(r["filtered_resps"], f"{path} line {r['_line']}")) for r in rows]
    return rows, items


def _finite_or_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def finite_check(report: dict) -> dict:
    return {k: ({kk: _finite_or_none(vv) for kk, vv in v.items()} if isinstance(v, dict) else v)
            for k, v in report.items()}


def _judgment_record(j) -> dict:
    return {"p_yes": j.p_yes, "label": j.label, **({"failure": j.failure} if j.failure else {}),
            **({"undecided": True} if j.undecided else {})}


def judge_samples_file(path: str | Path, cfg: JudgeConfig, out: str | Path, samples_out: str | Path | None = None,
                       filter_name: str | None = None, progress: bool = True) -> dict:
    """Judge every answer of a samples file; write the report (and per-sample judgments) atomically."""
    if not cfg.enabled:
        raise ITIError("no judge configured: pass judge=openai|hf|chat (or set LM_EVAL_ITI_JUDGE)")
    samples_path = find_samples_file(path)
    rows, items = read_samples(samples_path, filter_name)
    validate(cfg)
    from .check import SKIPPED, check_judges

    check = check_judges(cfg, progress=progress) if cfg.check else dict(SKIPPED)
    verdicts = judge_items(items, cfg, progress=progress)
    report = {
        "samples_file": str(samples_path),
        "samples_sha256": file_sha256(samples_path),
        "answers": len(items),
        "metrics": {k: _finite_or_none(v) for k, v in verdicts.metrics.items()},
        "judge": cfg.record(),
        "requests": verdicts.stats,
        "judge_check": finite_check(check),
        "notes": "truth/info: shares over usable judgments; truth_info = truth*info (product of means); "
                 "truth_and_info: share judged both; judge_failures: unusable judgments (null metric = none usable); "
                 "judge_undecided: top-k lists with neither ' yes' nor ' no', scored 'no' (the reference's rule)",
    }
    if samples_out is not None:
        lines = []
        for row, item, t, i in zip(rows, items, verdicts.truth, verdicts.info):
            lines.append(json.dumps({
                "doc_id": row.get("doc_id"), "question": item.question, "answer": item.answer,
                "truth": _judgment_record(t), "info": _judgment_record(i),
            }, ensure_ascii=False))
        write_text_atomic(samples_out, "\n".join(lines) + "\n")
    write_json_atomic(out, report)
    return report
