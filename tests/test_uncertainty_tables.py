"""Tables that say whether a difference is real: a validate run whose rows are synthetic per-question records with a
known answer (no model: ``run_one`` is replaced), and the Δ, CI, p and Holm marks its table.md, results.json and
the report's leaderboard show. Rows: the baseline; an identical copy (p = 1, CI [0, 0]); ITI, a constant shift
(MC1 +20 questions, MC2 +0.1 on every question); 20 random-matched draws at the baseline (ITI the clear winner); 10
random-heads draws tied with ITI (half above, half below)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy.stats import binomtest

from lm_eval_iti.experiments import comparisons as cmp
from lm_eval_iti.experiments import records
from lm_eval_iti.experiments.aggregate import format_delta
from lm_eval_iti.experiments.baselines import NO_EDIT, Variant
from lm_eval_iti.experiments.report import build_report
from lm_eval_iti.experiments.executor import Executor, execute
from lm_eval_iti.experiments.plan import RESULTS_FORMAT, ExperimentConfig, make_plan
from lm_eval_iti.folds import fold_assignment, question_id

NQ = 80
MATCHED, HEADS = 20, 10


def _questions() -> list[dict]:
    """Synthetic TruthfulQA rows: every other question's true answer is hedged ("No, ..."), lengths vary."""
    docs = []
    for i in range(NQ):
        true = ("No, it never happens" if i % 2 else "It is the number") + " really" * (i % 5)
        false = f"It is certainly thing {i}"
        targets = {true: 1, false: 0, f"Surely thing {i + 1}": 0}
        docs.append({"question": f"Synthetic question {i}?", "mc1_targets": targets, "mc2_targets": targets})
    return docs


def _values(row: str, i: int) -> tuple[float, float]:
    """(MC1, MC2) of question i (data order) for ``row``."""
    mc1, mc2 = float(i % 4 == 0), 0.25 + 0.5 * ((i * 37) % 10) / 10
    if row in ("baseline", "same"):
        return mc1, mc2
    if row == "iti":
        return float(i % 4 in (0, 1)), mc2 + 0.1
    family, _, draw = row.rpartition("-")
    draw = int(draw)
    if family == "random-matched":  # the baseline, one MC1 question flipped and a little MC2 noise per draw
        noise = np.random.default_rng([draw, i]).normal(0, 0.01)
        return (1 - mc1 if i == (3 * draw) % NQ else mc1), mc2 + noise
    shift = 0.02 if draw % 2 == 0 else -0.02  # random-heads: ITI's values, half the draws above, half below
    return float(i % 4 in (0, 1)), mc2 + 0.1 + shift


def _variants() -> list[Variant]:
    rows = [Variant("baseline", "baseline (α=0, instruction=default)", "hf", NO_EDIT),
            Variant("same", "identical copy", "hf", NO_EDIT),
            Variant("iti", "ITI (mass-mean)", "hf-iti", "hooked", alpha=5.0)]
    rows += [Variant(f"random-matched-{d}", f"random directions, matched size (draw {d})", "hf-iti", "hooked",
                     alpha=5.0) for d in range(MATCHED)]
    rows += [Variant(f"random-heads-{d}", f"random heads, mass-mean (draw {d})", "hf-iti", "hooked", alpha=5.0)
             for d in range(HEADS)]
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("uncertainty")
    docs = _questions()
    data = root / "data"
    data.mkdir()
    (data / "mc_task.json").write_text(json.dumps(docs))
    assignment = fold_assignment([d["question"] for d in docs], 2, 42)
    config = ExperimentConfig(model="synthetic", data_dir=str(data), tasks=("truthfulqa_iti_mc1",
                              "truthfulqa_iti_mc2"), side_effects=False, progress=False)

    def synthetic_fold(self, fold, variant):
        held_out = [i for i, f in enumerate(assignment) if f == fold]
        ids = [question_id(docs[i]["question"]) for i in held_out]
        values = [_values(variant.name, i) for i in held_out]
        per_question = {task: {q: {"acc": v[j]} for q, v in zip(ids, values)}
                        for j, task in enumerate(("truthfulqa_iti_mc1", "truthfulqa_iti_mc2"))}
        metrics = {task: {"acc": float(np.mean([v[j] for v in values]))}
                   for j, task in enumerate(("truthfulqa_iti_mc1", "truthfulqa_iti_mc2"))}
        return {"format": RESULTS_FORMAT, "fold": fold, "num_folds": 2, "variant": variant.describe(),
                "alpha_used": variant.alpha, "scored_by": "lm-eval", "num_heads_used": None, "selection": None,
                "kl_match": None, "settings_hash": self.plan.fold_hash(fold, variant), "metrics": metrics,
                "n_samples": {t: len(ids) for t in metrics}, "question_ids": {t: ids for t in metrics},
                "leak_check": {"evaluated_questions": len(ids), "checked_against": None, "overlap": None},
                "per_question": per_question, "choice_loglikelihoods": {}, "judge_answers": [], "directions": None,
                "model_info": {"scored_by": "lm-eval"}, "side_effects": None, "seconds": 0.0}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Executor, "run_one", synthetic_fold)
        results = execute(make_plan(config, _variants(), root / "run"))
    return results, root / "run"


def _find(results, row, reference, metric):
    return next(c for c in results["comparisons"] if (c["row"], c["reference"], c["metric"]) == (row, reference, metric))


def _line(table: str, method: str) -> str:
    return next(line for line in table.splitlines() if line.startswith("| synthetic | " + method + " |"))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_identical_rows_give_p_1_and_a_ci_at_0(run):
    results, out = run
    for metric in ("MC1", "MC2"):
        c = _find(results, "same", "baseline", metric)
        assert c["n"] == NQ and c["delta"] == 0 and c["ci"] == [0.0, 0.0] and c["p"] == 1.0
        assert c["p_holm"] == 1.0 and c["survives"] is False and c["folds"] == [0, 1]
    line = _line((out / "table.md").read_text(), "identical copy")
    assert line.endswith("| +0.000 [+0.000, +0.000] p=1 | +0.000 [+0.000, +0.000] p=1 |") and "†" not in line


def test_a_constant_shift_is_detected_with_the_right_delta_ci_and_p(run):
    results, out = run
    mc2 = _find(results, "iti", "baseline", "MC2")
    assert mc2["delta"] == pytest.approx(0.1, abs=1e-12) and mc2["ci"] == pytest.approx([0.1, 0.1], abs=1e-12)
    assert mc2["p"] == pytest.approx(1 / 10001) and mc2["test"].startswith("sign-flip") and mc2["survives"]
    mc1 = _find(results, "iti", "baseline", "MC1")  # 20 questions gained, none lost: McNemar exact
    assert mc1["delta"] == pytest.approx(20 / NQ) and mc1["ci"][0] > 0 and mc1["ci"][0] <= 0.25 <= mc1["ci"][1]
    assert mc1["p"] == pytest.approx(binomtest(20, 20, 0.5).pvalue) == mc1["p_mcnemar"]
    assert mc1["test"].startswith("McNemar exact (20 questions gained, 0 lost)") and mc1["survives"]
    line = _line((out / "table.md").read_text(), "ITI (mass-mean)")
    assert _cells(line)[-2:] == ["+0.250 [" + f"{mc1['ci'][0]:+.3f}, {mc1['ci'][1]:+.3f}] p<0.0001†",
                                 "+0.100 [+0.100, +0.100] p<0.0001†"]


def test_a_family_with_a_clear_winner_and_a_tied_family(run):
    results, out = run
    clear = _find(results, "iti", "random-matched", "MC2")
    assert clear["kind"] == "draws" and clear["draws"] == MATCHED and clear["draws_at_or_above"] == 0
    assert clear["rank_p"] == pytest.approx(1 / (MATCHED + 1)) and clear["survives"]
    assert clear["gain"] == pytest.approx(0.1, abs=1e-12) and abs(clear["draw_gain_mean"]) < 0.01
    tied = _find(results, "iti", "random-heads", "MC2")
    assert tied["draws_at_or_above"] == HEADS // 2 and tied["rank_p"] == pytest.approx((1 + HEADS // 2) / (HEADS + 1))
    assert tied["delta"] == pytest.approx(0, abs=1e-12) and tied["p"] == 1.0 and tied["survives"] is False
    table = (out / "table.md").read_text()
    family_lines = [line for line in table.splitlines() if line.startswith("| iti | random-")]
    assert len(family_lines) == 4
    clear_line = next(line for line in family_lines if "| random-matched | 20 | MC2 |" in line)
    assert _cells(clear_line)[6:] == ["0", "0.048", f"{clear['delta']:+.3f} [{clear['ci'][0]:+.3f}, "
                                      f"{clear['ci'][1]:+.3f}] p<0.0001†"]
    tied_line = next(line for line in family_lines if "| random-heads | 10 | MC2 |" in line)
    assert _cells(tied_line)[6:] == ["5", "0.55", "+0.000 [+0.000, +0.000] p=1"]


def test_holm_spans_the_tables_claims_and_leaves_single_draws_out(run):
    results, out = run
    found = results["comparisons"]
    family = [c for c in found if c["in_holm"]]
    # same, iti against the baseline and iti against both families, in MC1 and MC2
    assert sorted((c["row"], c["reference"], c["metric"]) for c in family) == sorted(
        (r, ref, m) for r, ref in (("same", "baseline"), ("iti", "baseline"), ("iti", "random-matched"),
                                   ("iti", "random-heads")) for m in ("MC1", "MC2"))
    # Holm by hand: sorted p times (m - rank), running maximum, capped at 1
    p = np.array([c["p"] for c in family])
    order = np.argsort(p, kind="stable")
    expected = np.empty(len(p))
    expected[order] = np.minimum(1, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    assert [c["p_holm"] for c in family] == pytest.approx(expected.tolist())
    assert [c["survives"] for c in family] == (expected <= 0.05).tolist()
    assert {(c["row"], c["reference"]) for c in family if c["survives"]} == {("iti", "baseline"),
                                                                              ("iti", "random-matched")}
    draws = [c for c in found if c["row"].startswith("random-")]
    assert len(draws) == 2 * (MATCHED + HEADS) and all(c["p_holm"] is None and c["survives"] is None for c in draws)
    assert all(c["holm_family"] == 8 for c in found)
    table = (out / "table.md").read_text()
    assert "† survives Holm at 0.05 across the 8 comparisons of this table" in table
    assert "†" not in _line(table, "random directions, matched size (draw 0)")
    saved = json.loads((out / "results.json").read_text())
    keys = {"row", "reference", "metric", "n", "delta", "ci", "p", "p_holm", "survives"}
    assert all(keys <= set(c) for c in saved["comparisons"]) and saved["comparisons"] == results["comparisons"]


def test_leading_columns_say_what_defines_a_row(run):
    results, out = run
    header = _cells((out / "table.md").read_text().splitlines()[2])
    assert header[:9] == ["model", "method", "α", "K", "instruction", "mc/gen", "judge", "data", "N"]
    assert header[-2:] == ["ΔMC1", "ΔMC2"]
    base = _cells(_line((out / "table.md").read_text(), "baseline (α=0, instruction=default)"))
    assert base[4:9] == ["default", "none", "", results["settings"]["data_sha256"][:12], str(NQ)]


def test_iti_gain_by_answer_style_and_length(run):
    results, out = run
    gains = results["strata_gains"]
    style = {g["stratum"]: g for g in gains if g["split"] == "style" and g["metric"] == "MC2"}
    assert style["hedged/negated"]["n"] == style["plain"]["n"] == NQ // 2
    assert all(g["delta"] == pytest.approx(0.1, abs=1e-12) for g in style.values())
    mc1 = {g["stratum"]: g for g in gains if g["split"] == "style" and g["metric"] == "MC1"}
    # odd questions (hedged) gain where i % 4 == 1: 20 of 40; even (plain) gain nothing
    assert mc1["hedged/negated"]["delta"] == pytest.approx(0.5) and mc1["plain"]["delta"] == 0
    length = [g for g in gains if g["split"] == "length" and g["metric"] == "MC2"]
    assert sum(g["n"] for g in length) == NQ and len(length) == 2
    assert "| style | hedged/negated | MC1 | 40 | +0.500 [" in (out / "table.md").read_text()


def test_the_report_shows_the_runs_comparisons_and_recomputes_them_for_older_runs(run, tmp_path):
    results, out = run
    table_line = _line((out / "table.md").read_text(), "ITI (mass-mean)")
    written = build_report([out], tmp_path / "report", plots=False)
    leaderboard = written["table"]
    line = next(x for x in leaderboard.splitlines() if x.startswith("| synthetic | ITI (mass-mean) |"))
    assert _cells(line)[-2:] == _cells(table_line)[-2:]
    assert "| synthetic: iti | random-matched | 20 | MC2 |" in leaderboard
    # a results.json from before the comparisons: the report computes them from per_question.csv, identically
    older = json.loads((out / "results.json").read_text())
    del older["comparisons"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(older))
    (tmp_path / "old" / records.PER_QUESTION_FILE).write_bytes((out / records.PER_QUESTION_FILE).read_bytes())
    again = build_report([tmp_path / "old"], tmp_path / "report_old", plots=False)["table"]
    assert again == leaderboard.replace(str(out / "results.json"), str(tmp_path / "old" / "results.json"))


def test_comparisons_align_rows_on_shared_questions_only():
    lines = [{"row": "baseline", "fold": 0, "question_id": "a", "mc1": 0.0, "truth": 1.0},
             {"row": "baseline", "fold": 0, "question_id": "b", "mc1": 1.0, "truth": None},
             {"row": "iti", "fold": 0, "question_id": "a", "mc1": 1.0, "truth": 1.0},
             {"row": "iti", "fold": 0, "question_id": "b", "mc1": 1.0, "truth": 0.0}]
    scores = cmp.scores_from_lines(lines)
    truth = cmp.compare_rows(scores, "iti", "baseline", "True")
    assert truth["n"] == 1 and truth["delta"] == 0  # question b has no baseline judgment: left out
    assert cmp.compare_rows(scores, "iti", "baseline", "MC1")["n"] == 2
    assert cmp.compare_rows(scores, "iti", "baseline", "MC3") is None
    # one question gained: McNemar p = 1; the bootstrap CI spans 0 and the largest possible gain
    assert re.fullmatch(r"\+0\.500 \[\+0\.000, \+1\.000\] p=1",
                        format_delta(cmp.compare_rows(scores, "iti", "baseline", "MC1")))
