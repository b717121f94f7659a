"""validate's study rows: every row scored by the engine (--engine on) against the same rows through lm-eval,
controls matched in KL (against a fresh KL measurement and an analytic KL curve), and nested selection under a KL
budget. Tiny Llama; TruthfulQA v0 from ../shared/data."""

from __future__ import annotations

import math

import pytest

from conftest import shared_data, write_wikitext_corpus
from lm_eval_iti.errors import ITIError
from lm_eval_iti.side_effects import alpha_for_kl_target

TASKS = ("truthfulqa_iti_mc1", "truthfulqa_iti_mc2")


def _config(tiny_model_dir, root, **kw):
    from lm_eval_iti.experiments import ExperimentConfig

    settings = dict(model=str(tiny_model_dir), dtype="float32", device="cpu",
                    data_dir=str(shared_data("truthfulqa", "v0")), num_questions=24, tasks=TASKS,
                    corpus=str(write_wikitext_corpus(root / "corpus.raw")), num_docs=3, num_tokens=32,
                    cache_dir=str(root / "cache"), progress=False, folds=(0,), bootstrap_iters=0)
    settings.update(kw)
    return ExperimentConfig(**settings)


class _QuadraticMeter:
    """KL = c * alpha^power (power 2: the small-shift behaviour of KL); counts its calls."""

    def __init__(self, c, power=2.0):
        self.c, self.power, self.calls = c, power, 0

    def __call__(self, directions, alpha):
        self.calls += 1
        return self.c * alpha ** self.power

    def describe(self):
        return {}


class _SaturatingMeter(_QuadraticMeter):
    """KL = c * (1 - exp(-alpha^2 / 50)): quadratic at first, then flattening (a curve no secant step fits)."""

    def __call__(self, directions, alpha):
        self.calls += 1
        return self.c * (1 - math.exp(-alpha * alpha / 50))


@pytest.mark.parametrize("start", [0.5, 3.0, 40.0])
@pytest.mark.parametrize("power", [2.0, 1.3, 3.5])
def test_alpha_for_kl_target_finds_the_analytic_alpha(start, power):
    meter = _QuadraticMeter(0.01, power)
    match = alpha_for_kl_target(meter, None, 0.25, start=start, tolerance=0.01)
    assert match["alpha"] == pytest.approx((0.25 / 0.01) ** (1 / power), rel=0.01)
    assert abs(match["kl"] - 0.25) <= 0.01 * 0.25 and match["within_tolerance"]
    assert meter.calls == len(match["measured"]) <= 8


@pytest.mark.parametrize("start", [0.5, 6.0, 60.0])
def test_alpha_for_kl_target_on_a_flattening_curve(start):
    meter = _SaturatingMeter(1.0)
    match = alpha_for_kl_target(meter, None, 0.9, start=start, tolerance=0.01)
    assert match["alpha"] == pytest.approx(math.sqrt(-50 * math.log(0.1)), rel=0.02)
    assert match["within_tolerance"] and meter.calls <= 24


def test_alpha_for_kl_target_refuses_an_unreachable_or_empty_target():
    with pytest.raises(ITIError, match="below the target"):
        alpha_for_kl_target(_SaturatingMeter(0.1), None, 0.5, start=1.0)  # KL never exceeds 0.1
    with pytest.raises(ITIError, match="target_kl=0"):
        alpha_for_kl_target(_QuadraticMeter(1.0), None, 0.0)


@pytest.fixture(scope="module")
def engine_and_lm_eval_runs(tiny_model_dir, tmp_path_factory):
    from lm_eval_iti.experiments import validate

    root = tmp_path_factory.mktemp("study_rows")
    runs = {}
    for engine in ("on", "off"):
        config = _config(tiny_model_dir, root, engine=engine)
        runs[engine] = validate(config, root / f"run_{engine}", alpha=6.0, num_heads=3, random_draws=2,
                                baselines=("random-matched", "random-matched-kl", "no-instruction"))
    return root, runs


def test_engine_on_scores_every_validate_row_as_lm_eval_does(engine_and_lm_eval_runs):
    _, runs = engine_and_lm_eval_runs
    on, off = ({r["variant"]: r for r in runs[e]["rows"]} for e in ("on", "off"))
    assert set(on) == set(off) == {"baseline", "iti", "random-matched-0", "random-matched-1", "random-matched-kl-0",
                                   "random-matched-kl-1", "no-instruction"}
    for name in on:
        assert on[name]["scored_by"] == "engine" and off[name]["scored_by"] == "lm-eval"
        assert on[name]["metrics"]["MC1"]["mean"] == off[name]["metrics"]["MC1"]["mean"], name
        assert on[name]["metrics"]["MC2"]["mean"] == pytest.approx(off[name]["metrics"]["MC2"]["mean"], abs=1e-4)
        assert on[name]["metrics"]["KL"]["mean"] == pytest.approx(off[name]["metrics"]["KL"]["mean"], abs=1e-6)
    # one engine call scored every row sharing the instruction (each with its own directions and alpha)
    folds = runs["on"]["folds"]
    assert {folds[name][0]["model_info"]["engine_rows_in_call"] for name in on if name != "no-instruction"} == {6}
    assert folds["no-instruction"][0]["model_info"]["engine_rows_in_call"] == 1
    # the steered rows differ from the unedited ones: the comparison above is not between identical numbers
    assert on["iti"]["metrics"]["KL"]["mean"] > 0 and on["baseline"]["metrics"]["KL"]["mean"] == 0


def test_engine_rows_write_the_per_question_records_lm_eval_rows_write(engine_and_lm_eval_runs):
    """per_question.csv of --engine on against --engine off: the same lines, MC1 equal, MC2 within 1e-4."""
    from lm_eval_iti.experiments import records

    root, _ = engine_and_lm_eval_runs
    on, off = ({(x["row"], x["fold"], x["question_id"]): x
                for x in records.read_per_question(root / f"run_{e}" / records.PER_QUESTION_FILE)}
               for e in ("on", "off"))
    assert set(on) == set(off) and len(on) == 7 * 12  # 7 rows, held-out fold 0 of 24 questions
    for key, line in on.items():
        assert line["mc1"] == off[key]["mc1"], key
        assert line["mc2"] == pytest.approx(off[key]["mc2"], abs=1e-4), key


def test_kl_matched_controls_cost_the_kl_of_iti_on_a_fresh_measurement(engine_and_lm_eval_runs, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.side_effects import AUTO_NUM_DOCS, KLMeter

    root, runs = engine_and_lm_eval_runs
    folds = runs["on"]["folds"]
    iti = folds["iti"][0]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    meter = KLMeter(model, tok, str(root / "corpus.raw"), AUTO_NUM_DOCS, 32, held_out_from=(3, 0))
    target = meter(load_directions(iti["directions"]["path"]), iti["alpha_used"])
    for draw in (0, 1):
        sized, matched = folds[f"random-matched-{draw}"][0], folds[f"random-matched-kl-{draw}"][0]
        assert sized["alpha_used"] == iti["alpha_used"] and sized["kl_match"] is None
        record = matched["kl_match"]
        assert record["target_kl"] == pytest.approx(target, rel=1e-6)
        control = load_directions(matched["directions"]["path"])
        # the same random draw as the size-matched row, at its own alpha
        sized_directions = load_directions(sized["directions"]["path"]).directions
        assert control.directions.keys() == sized_directions.keys()
        assert all(control.directions[key].equal(sized_directions[key]) for key in sized_directions)
        assert meter(control, matched["alpha_used"]) == pytest.approx(target, rel=0.02)
        assert matched["alpha_used"] == record["alpha"] != iti["alpha_used"]
    row = next(r for r in runs["on"]["rows"] if r["variant"] == "random-matched-kl-0")
    assert row["α"].startswith("KL-matched: ")


def test_nested_selection_scores_only_points_within_the_kl_budget(tiny_model_dir, tmp_path):
    from lm_eval_iti.experiments import validate

    config = _config(tiny_model_dir, tmp_path, tasks=("truthfulqa_iti_mc2",), side_effects=False, engine="on")
    free = {"alphas": [2.0, 30.0], "num_heads": [1, 3], "by": "MC2", "inner_folds": 2}
    unconstrained = validate(config, tmp_path / "free", alpha="select", num_heads=3, selection=free)
    grid = unconstrained["folds"]["iti"][0]["selection"]["grid"]
    assert all(g["kl_mean"] is None and g["mean"] is not None for g in grid)
    # a budget between the KLs of the grid: measure them first on the same sample
    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.side_effects import AUTO_NUM_DOCS, KLMeter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    meter = KLMeter(model, tok, config.corpus, AUTO_NUM_DOCS, config.num_tokens, held_out_from=(3, 0))
    inner = [load_directions(r["directions"]) for r in unconstrained["folds"]["iti"][0]["selection"]["inner_folds"]]
    kls = {(a, k): [meter(d.top_k(k), a) for d in inner] for a in (2.0, 30.0) for k in (1, 3)}
    budget = (max(max(v) for v in kls.values()) + min(max(v) for v in kls.values())) / 2
    chosen = validate(config, tmp_path / "budget", alpha="select", num_heads=3,
                      selection=dict(free, kl_budget=budget))["folds"]["iti"][0]
    for point in chosen["selection"]["grid"]:
        expected = kls[(point["alpha"], point["num_heads"])]
        assert point["kl_per_inner_fold"] == pytest.approx(expected, rel=1e-6)
        within = max(expected) <= budget
        assert (point["mean"] is not None) == within
        if within:
            free_point = next(g for g in grid if (g["alpha"], g["num_heads"]) == (point["alpha"], point["num_heads"]))
            assert point["mean"] == pytest.approx(free_point["mean"], abs=1e-9)
    assert max(kls[(chosen["alpha_used"], chosen["num_heads_used"])]) <= budget
    assert chosen["scored_by"] == "engine"
    # the table shows the whole grid: scored points with their gain, the others as over budget, the choice marked
    table = (tmp_path / "budget" / "table.md").read_text()
    grid_part = table.split("Nested selection of alpha and K")[1].split("Positions edited")[0]
    assert sum(line.startswith("| 0 | ") for line in grid_part.splitlines()) == 1 + 4
    assert table.count("over budget") == sum(g["mean"] is None for g in chosen["selection"]["grid"]) >= 1
    assert f"| 0 | {chosen['alpha_used']:g} | {chosen['num_heads_used']} |" in table and "**yes**" in table
    assert (tmp_path / "budget" / "pareto.png").stat().st_size > 0
    with pytest.raises(ITIError, match="costs more than the KL budget"):
        validate(config, tmp_path / "tight", alpha="select", num_heads=3, selection=dict(free, kl_budget=1e-12))


def test_curve_scales_rerun_each_hooked_row_at_multiples_of_its_own_alpha(tiny_model_dir, tmp_path):
    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.experiments import validate
    from lm_eval_iti.experiments.plots import _gain_curves

    config = _config(tiny_model_dir, tmp_path, tasks=("truthfulqa_iti_mc2",), engine="on")
    run = validate(config, tmp_path / "curves", alpha=6.0, num_heads=3, random_draws=2,
                   baselines=("random-matched", "random-heads"), curve_scales=(0.5, 2.0))
    rows, folds = {r["variant"]: r for r in run["rows"]}, run["folds"]
    curve_names = {f"{base}-x{s}" for base in ("iti", "random-matched-0", "random-heads-0") for s in ("0.5", "2")}
    assert curve_names <= set(rows) and not any(name.startswith(("random-matched-1-x", "random-heads-1-x"))
                                                for name in rows)
    for name in curve_names:
        base, scale = name.rsplit("-x", 1)
        point, origin = folds[name][0], folds[base][0]
        assert point["alpha_used"] == pytest.approx(float(scale) * origin["alpha_used"])
        same, own = load_directions(point["directions"]["path"]), load_directions(origin["directions"]["path"])
        assert same.heads.keys() == own.heads.keys()
        assert all(same.directions[k].equal(own.directions[k]) for k in own.directions)  # same draw, same heads
    # independently: ITI at twice the alpha is the plain ITI row of a run at that alpha
    plain = validate(config, tmp_path / "plain", alpha=12.0, num_heads=3)
    iti12 = next(r for r in plain["rows"] if r["variant"] == "iti")
    for column in ("MC2", "KL"):
        assert rows["iti-x2"]["metrics"][column]["mean"] == pytest.approx(iti12["metrics"][column]["mean"], abs=1e-6)
    line = _gain_curves(run, "MC2")["iti"]
    kls = [rows[n]["metrics"]["KL"]["mean"] for n in ("iti-x0.5", "iti", "iti-x2")]
    assert [p[0] for p in line] == [0.0] + kls and kls[0] < kls[2]
    assert (tmp_path / "curves" / "pareto.png").stat().st_size > 0
    main, _, curve_part = (tmp_path / "curves" / "table.md").read_text().partition("other multiples of their own alpha")
    assert "α×2" not in main and sum("α×" in line for line in curve_part.splitlines()) == len(curve_names)
    with pytest.raises(ITIError, match="not 1"):
        validate(config, tmp_path / "bad", alpha=6.0, num_heads=3, curve_scales=(1.0,))
