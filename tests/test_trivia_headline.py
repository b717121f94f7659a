"""trivia_qa_iti's headline ``acc`` does not depend on the order of the aliases (whose first is often junk): every
alias is scored against the false answer and the wins averaged (chance 0.5); a synthetic set with its aliases
permuted gives the same headline, per document and through lm-eval."""

from __future__ import annotations

import csv
import itertools
import random

import numpy as np
import pytest

from lm_eval_iti.harness import taskfns


def _doc(aliases: list[str], false: str) -> dict:
    return {"answers": aliases, "false_answer": false, "choices": aliases + [false], "num_true": len(aliases),
            "excluded_rows": 0, "duplicate_rows": 0}


def _results(lls) -> list[tuple[float, bool]]:
    return [(float(x), False) for x in lls]


def test_the_headline_is_the_same_for_every_order_of_the_aliases():
    rng = np.random.default_rng(0)
    changed_first_alias_score = False
    for k in (1, 2, 3, 5):
        aliases = [f"alias {i}" for i in range(k)]
        lls = list(rng.normal(size=k)) + [float(rng.normal())]
        base = taskfns.process_results_trivia(_doc(aliases, "false"), _results(lls))
        for order in itertools.permutations(range(k)):
            doc = _doc([aliases[i] for i in order], "false")
            got = taskfns.process_results_trivia(doc, _results([lls[i] for i in order] + [lls[k]]))
            assert got["acc"] == base["acc"] and got["acc_any"] == base["acc_any"]
            assert got["prob_mass_true"] == pytest.approx(base["prob_mass_true"], abs=1e-15)
            old = taskfns.process_results_transfer(doc, _results([lls[i] for i in order] + [lls[k]]))["acc"]
            changed_first_alias_score |= old != taskfns.process_results_transfer(
                _doc(aliases, "false"), _results(lls))["acc"]
    assert changed_first_alias_score  # the old headline (first alias vs false) does depend on the order


def test_the_headline_by_hand_and_its_chance_level():
    # aliases scored -1, -3, -2 against a false answer at -2.5: two wins of three; a tie counts half
    assert taskfns.alias_win_rate([-1.0, -3.0, -2.0, -2.5], 3) == pytest.approx(2 / 3)
    assert taskfns.alias_win_rate([-1.0, -2.0, -2.0], 2) == pytest.approx(0.75)
    # chance: with k + 1 exchangeable scores, each equally likely to be the false one, the mean is exactly 0.5
    values = [0.3, -1.2, 2.0, 0.7, -0.1]
    means = [taskfns.alias_win_rate([v for j, v in enumerate(values) if j != f] + [values[f]], 4)
             for f in range(len(values))]
    assert np.mean(means) == pytest.approx(0.5)


@pytest.mark.slow
def test_permuted_aliases_give_the_same_headline_through_lm_eval(tiny_model_dir, tmp_path):
    """A synthetic TriviaQA CSV and the same with every row's aliases shuffled, through the packaged task."""
    from lm_eval_iti.harness.driver import evaluate
    from lm_eval_iti.harness.driver import hf_lm

    rng = random.Random(0)
    rows = [(f"Which river flows through city number {i}?",
             [f"The {w} River" for w in ("Blue", "Long", "Quiet", "Green", "Old")[: 2 + i % 4]], f"Mount {i}")
            for i in range(6)]
    paths = {}
    for name, shuffle in (("original", False), ("permuted", True)):
        path = tmp_path / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["Question", "Best Answer", "Correct Answers", "Incorrect Answers"])
            for q, aliases, false in rows:
                aliases = rng.sample(aliases, len(aliases)) if shuffle else aliases
                writer.writerow([q, aliases[0], "<MULTIPLE_ANS_SEP>".join(aliases), false])
        paths[name] = path
    lm = hf_lm(pretrained=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=1)
    headline = {}
    for name, path in paths.items():
        out = evaluate(lm, ["trivia_qa_iti"], {"trivia_data": str(path)}, quiet=True, bootstrap_iters=0,
                       log_samples=True)
        res = out["results"]["trivia_qa_iti"]
        headline[name] = (res["acc,none"], res["acc_any,none"])
        assert out["versions"]["trivia_qa_iti"] == 3.0
        for sample in out["samples"]["trivia_qa_iti"]:  # each document's acc: its aliases' wins, by hand
            lls = [float(r[0][0]) for r in sample["resps"]]
            k = sample["doc"]["num_true"]
            assert sample["acc"] == pytest.approx(sum((a > lls[k]) + 0.5 * (a == lls[k]) for a in lls[:k]) / k)
    assert headline["permuted"][0] == pytest.approx(headline["original"][0], abs=1e-12)
    assert headline["permuted"][1] == pytest.approx(headline["original"][1], abs=1e-12)
