"""report: fixture results (an experiment run, lm-eval results files, a side-effects JSON) -> a hand-written table;
the fold aggregation against hand arithmetic; bad input -> one line, no output."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from lm_eval_iti.cli import main
from lm_eval_iti.errors import ITIError
from lm_eval_iti.experiments import aggregate as agg
from lm_eval_iti.experiments.report import build_report, rows_from_path

FIXTURES = Path(__file__).parent / "fixtures" / "experiments"
INPUTS = [FIXTURES / "validate_results.json", FIXTURES / "lm_eval_results_hf_iti.json",
          FIXTURES / "lm_eval_results_steered.json", FIXTURES / "side_effects.json"]
HOOKS = ("hf-iti hooks; MC: the answer-scoring positions; gen: last prompt token + every generated token; "
         "CE/KL: every position")

EXPECTED = f"""# Leaderboard

| model | method | α | K | instruction | mc/gen | judge | data | N | MC1 | MC2 | MC3 | binary | True | Info | True*Info | True&Info | CE | KL |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| org/tiny-chat | baseline (α=0, instruction=default) | 0 |  |  |  |  |  |  | 0.341 ± 0.017 | 0.512 ± 0.012 | 0.250 |  | 0.600 ± 0.020 | 0.800 ± 0.015 | 0.480 | 0.450 | 2.510 | 0.0000 |
| org/tiny-chat | ITI (mass-mean) | 15 | 48 |  |  |  |  |  | 0.400 ± 0.017 | 0.580 ± 0.012 | 0.301 | 0.700 ± 0.016 | 0.830 | 0.930 | 0.772 | 0.760 | 2.820 | 0.6500 |
| org/tiny-chat | hf-iti (mass-mean) | 10 | 16 |  | answer/last |  |  |  | 0.375 ± 0.013 | 0.550 ± 0.011 |  |  | 0.700 | 0.900 | 0.630 | 0.610 |  |  |
| org/tiny-chat | lm-eval steered |  |  |  |  |  |  |  | 0.420 ± 0.017 |  |  | 0.655 ± 0.017 |  |  |  |  |  |  |
| org/tiny-chat | side effects (dirs_fold0.safetensors) | 20 | 64 |  |  |  |  |  |  |  |  |  |  |  |  |  | 2.750 | 0.3123 |

Positions edited:
- **baseline (α=0, instruction=default)**: no edit
- **ITI (mass-mean)**: {HOOKS}
- **hf-iti (mass-mean)**: {HOOKS}
- **lm-eval steered**: lm-eval steered: every position
- **side effects (dirs_fold0.safetensors)**: hf-iti hooks: every position

Means over folds for experiment runs (stderr: sqrt(sum of per-fold stderr²)/folds); lm-eval's own stderr for single runs. True*Info = mean(True) × mean(Info) (product of means, as ITI reports it); True&Info = share of answers judged both true and informative. CE: the row's model on the side-effect corpus; KL: KL(base ‖ row's model) per token, nats. Blank = not measured. Δ: row − its run's baseline over the questions both scored, pooled over folds, [95% CI] by bootstrap over questions within folds, p McNemar exact (0/1 metrics) or sign-flip permutation; † survives Holm at 0.05 across the comparisons of the run's own table.
"""


def test_report_from_fixture_results_matches_the_hand_written_table(tmp_path):
    written = build_report(INPUTS, tmp_path / "report")
    assert (tmp_path / "report" / "leaderboard.md").read_text(encoding="utf-8") == EXPECTED
    assert written["table"] == EXPECTED
    saved = json.loads((tmp_path / "report" / "leaderboard.json").read_text())
    assert [r["method"] for r in saved["rows"]][2:] == ["hf-iti (mass-mean)", "lm-eval steered",
                                                       "side effects (dirs_fold0.safetensors)"]
    assert (tmp_path / "report" / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "report" / "metric_vs_alpha.png").exists()  # alpha curves only for sweep inputs


def test_cli_report_accepts_a_run_folder_and_lm_eval_output_folders(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURES / "validate_results.json", run / "results.json")
    lm_out = tmp_path / "lm_eval_out" / "org__tiny-chat"
    lm_out.mkdir(parents=True)
    shutil.copy(FIXTURES / "lm_eval_results_steered.json", lm_out / "results_2026-01-01T00-00-00.json")
    main(["report", str(run), str(tmp_path / "lm_eval_out"), "--out", str(tmp_path / "rep"), "--no-plots"])
    table = (tmp_path / "rep" / "leaderboard.md").read_text(encoding="utf-8")
    lines = [line for line in table.splitlines() if line.startswith("| org/")]
    assert len(lines) == 3 and lines[2].startswith("| org/tiny-chat | lm-eval steered |")
    assert "leaderboard.md" in capsys.readouterr().out
    assert not (tmp_path / "rep" / "leaderboard.png").exists()


def test_fold_aggregation_against_hand_arithmetic():
    folds = [
        {"metrics": {"truthfulqa_iti_mc1": {"acc": 0.30, "acc_stderr": 0.03},
                     "truthfulqa_iti_gen": {"truth": 0.5, "info": 0.9, "truth_and_info": 0.4, "judge_failures": 1}},
         "side_effects": {"ce_steered": 3.0, "kl": 0.2}},
        {"metrics": {"truthfulqa_iti_mc1": {"acc": 0.40, "acc_stderr": 0.04},
                     "truthfulqa_iti_gen": {"truth": 0.7, "info": 0.7, "truth_and_info": 0.5, "judge_failures": 2}},
         "side_effects": {"ce_steered": 3.5, "kl": 0.4}},
    ]
    out = agg.aggregate_variant(folds)
    assert out["MC1"]["mean"] == pytest.approx(0.35)
    assert out["MC1"]["stderr"] == pytest.approx(math.sqrt(0.03 ** 2 + 0.04 ** 2) / 2)  # 0.025
    assert out["True"]["mean"] == pytest.approx(0.6) and out["Info"]["mean"] == pytest.approx(0.8)
    assert out["True*Info"]["mean"] == pytest.approx(0.48)  # product of means, not the mean of 0.45 and 0.49
    assert out["True*Info"]["per_fold"] == pytest.approx([0.45, 0.49])
    assert out["True&Info"]["mean"] == pytest.approx(0.45)
    assert out["CE"]["mean"] == pytest.approx(3.25) and out["KL"]["mean"] == pytest.approx(0.3)
    assert out["judge_failures"]["sum"] == 3
    for column in ("MC2", "MC3", "binary"):  # absent everywhere: None, printed blank, never 0
        assert out[column]["mean"] is None and agg.format_cell(column, out[column]) == ""
    one_fold_without_stderr = agg.aggregate_variant([folds[0], {"metrics": {"truthfulqa_iti_mc1": {"acc": 0.5}}}])
    assert one_fold_without_stderr["MC1"]["mean"] == pytest.approx(0.4)
    assert one_fold_without_stderr["MC1"]["stderr"] is None
    assert one_fold_without_stderr["True"]["folds"] == 1


@pytest.mark.parametrize("content, match", [
    ("not json", "not valid JSON"),
    ('{"something": 1}', "not an experiment results.json"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_report_input_is_one_line_and_writes_nothing(tmp_path, capsys, content, match):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(FIXTURES / "side_effects.json"), str(bad), "--out", str(tmp_path / "rep")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and str(bad) in err
    assert not (tmp_path / "rep").exists()
    with pytest.raises(ITIError):
        rows_from_path(tmp_path / "missing")
