"""The truth world: generator invariants, tokenizer, a training smoke test with exact resume, the shipped
checkpoint's provenance, and the bar (fit-directions + hf-iti on held-out questions) for the shipped checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lm_eval_iti.data import load_generation, load_mc
from lm_eval_iti.errors import ITIError
from lm_eval_iti.folds import fold_indices
from lm_eval_iti.truthworld import CHECKPOINT_DIR
from lm_eval_iti.truthworld.generator import (VERDICT_FALSE, VERDICT_TRUE, WorldConfig, build_world, export_truthfulqa,
                                              load_world, sample_document, step_rng)

SMALL = WorldConfig(seed=3, first_names=8, second_names=5, myth_share=0.6, min_statements=3, max_statements=5,
                    verdict_share=0.5)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig())


# generator ---------------------------------------------------------------------------------------------------------
def test_every_myth_differs_from_the_truth_and_distractors_are_wrong(world):
    assert len(world.myth_entities) == 288 and len(world.entities) == 384
    for e in range(len(world.entities)):
        if world.is_myth(e):
            assert world.myth[e] != world.truth[e]
        wrong = set(world.distractors[e])
        assert world.truth[e] not in wrong and len(wrong) == 3
        assert world.myth[e] not in wrong
    assert len(set(world.entities)) == len(world.entities)


def test_facts_are_compositional_first_word_gives_the_truth_second_word_the_myth(world):
    from collections import Counter, defaultdict

    truth_of, myths_of = {}, defaultdict(list)
    for e, name in enumerate(world.entities):
        first, second = name.split()
        assert truth_of.setdefault(first, world.truth[e]) == world.truth[e]
        myths_of[second].append(e)
    assert len(truth_of) == world.config.first_names and len(myths_of) == world.config.second_names
    for second, ents in myths_of.items():
        if not world.is_myth(ents[0]):
            assert not any(world.is_myth(e) for e in ents)
            continue
        common = Counter(world.myth[e] for e in ents).most_common(1)[0][0]
        for e in ents:  # the second word's myth, or the next colour where that would be the truth
            assert world.myth[e] == common or (world.truth[e] == common and world.myth[e] == (common + 1) % 12)


def test_next_colour_rule_gives_every_myth_entity_the_colour_after_its_truth(world):
    other = build_world(replace(WorldConfig(), myth_rule="next-colour"))
    assert other.entities == world.entities and other.truth == world.truth
    assert other.myth_entities == world.myth_entities  # the same entities carry a myth, only its colour differs
    assert all(other.myth[e] == (other.truth[e] + 1) % 12 for e in other.myth_entities)
    assert all(set(other.distractors[e]).isdisjoint({other.truth[e], other.myth[e]}) for e in other.myth_entities)
    with pytest.raises(ITIError, match="myth_rule='nearest' is not one of"):
        build_world(replace(WorldConfig(), myth_rule="nearest"))


def test_unknown_entities_get_verdicts_on_the_speaker_and_never_become_questions(tmp_path):
    import numpy as np

    from lm_eval_iti.truthworld.tokenizer import build_tokenizer

    cfg = replace(WorldConfig(), unknown_names=10, unknown_share=0.4, verdict_share=1.0)
    w = build_world(cfg)
    known_words = {word for name in w.entities for word in name.split()}
    assert len(w.unknowns) == 10 and not known_words & {word for name in w.unknowns for word in name.split()}
    assert w.entities == build_world(WorldConfig()).entities  # the known world is untouched
    rng, seen = np.random.default_rng(0), 0
    for _ in range(40):
        doc = sample_document(w, rng)
        verdicts = [p for p in doc.text.split(" ") if p in (VERDICT_TRUE, VERDICT_FALSE)]
        assert len(verdicts) == len(doc.entities)  # verdict_share 1: one after every statement
        for e, verdict in zip(doc.entities, verdicts):
            if e < 0:
                seen += 1
                assert f"the {w.unknowns[-1 - e]}?" in doc.text
                assert verdict == (VERDICT_TRUE if doc.reliable else VERDICT_FALSE)
    assert seen > 20
    tok = build_tokenizer(w)
    assert tok.unk_token_id not in tok(doc.text)["input_ids"]
    rows = json.loads((export_truthfulqa(w, tmp_path) / "mc_task.json").read_text())
    assert len(rows) == len(w.entities) and not any(u in r["question"] for r in rows for u in w.unknowns)
    assert load_world(tmp_path).unknowns == w.unknowns
    with pytest.raises(ITIError, match="needs at least one unknown name"):
        build_world(replace(WorldConfig(), unknown_share=0.2))


def test_verdict_rule_unknown_puts_verdicts_after_unknown_statements_only():
    import numpy as np

    cfg = replace(WorldConfig(), unknown_names=10, unknown_share=0.4, verdict_share=1.0, verdict_rule="unknown")
    w, every = build_world(cfg), build_world(replace(cfg, verdict_rule="every"))
    rng, rng_every, unknown_seen = np.random.default_rng(0), np.random.default_rng(0), 0
    for _ in range(40):
        doc, same = sample_document(w, rng), sample_document(every, rng_every)
        assert (doc.entities, doc.colours, doc.reliable) == (same.entities, same.colours, same.reliable)  # one stream
        assert doc.verdicts == [e < 0 for e in doc.entities]  # verdict_share 1: after every unknown statement only
        for part in same.text.split(" "):  # the text is the "every" text without the known statements' verdicts
            assert part in doc.text.split(" ") or part in (VERDICT_TRUE, VERDICT_FALSE)
        verdicts = [p for p in doc.text.split(" ") if p in (VERDICT_TRUE, VERDICT_FALSE)]
        assert verdicts == [VERDICT_TRUE if doc.reliable else VERDICT_FALSE] * sum(e < 0 for e in doc.entities)
        unknown_seen += sum(e < 0 for e in doc.entities)
    assert unknown_seen > 20
    assert "verdict_rule" in w.to_json()["config"] and "verdict_rule" not in every.to_json()["config"]
    with pytest.raises(ITIError, match="verdict_rule='some' is not one of"):
        build_world(replace(cfg, verdict_rule="some"))
    with pytest.raises(ITIError, match="no statement could carry a verdict"):
        build_world(replace(WorldConfig(), verdict_rule="unknown"))


def test_speaker_noise_flips_single_statements_and_speaker_verdicts_judge_the_speaker():
    import numpy as np

    cfg = replace(WorldConfig(), speaker_noise=0.2, verdict_rule="speaker", verdict_share=1.0)
    w = build_world(cfg)
    rng, flipped, told = np.random.default_rng(0), 0, 0
    for _ in range(200):
        doc = sample_document(w, rng)
        verdicts = [p for p in doc.text.split(" ") if p in (VERDICT_TRUE, VERDICT_FALSE)]
        assert verdicts == [VERDICT_TRUE if doc.reliable else VERDICT_FALSE] * len(doc.entities)  # on the speaker
        for e, c in zip(doc.entities, doc.colours):
            told += 1
            flipped += (c == w.truth[e]) != doc.reliable
    assert 0.15 < flipped / told < 0.25, flipped / told  # about speaker_noise of the statements
    plain = sample_document(build_world(WorldConfig()), np.random.default_rng(3))
    assert plain == sample_document(build_world(replace(WorldConfig(), verdict_rule="speaker")), np.random.default_rng(3))
    with pytest.raises(ITIError, match="speaker_noise=1.5 must lie in"):
        build_world(replace(WorldConfig(), speaker_noise=1.5))


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_every_colour_is_the_truth_and_the_myth_equally_often(seed):
    from collections import Counter

    from lm_eval_iti.truthworld.design import WORLD
    from lm_eval_iti.truthworld.generator import colour_counts

    w = build_world(replace(WORLD, seed=seed))
    myth = w.myth_entities
    truth_n = Counter(w.truth[e] for e in myth)  # counted here directly, not through colour_counts
    myth_n = Counter(w.myth[e] for e in myth)
    assert len(truth_n) == len(myth_n) == 12
    assert set(truth_n.values()) == set(myth_n.values()) == {len(myth) // 12}
    assert colour_counts(w) == {"truth": [truth_n[c] for c in range(12)], "myth": [myth_n[c] for c in range(12)]}
    assert set(Counter(w.truth).values()) == {len(w.entities) // 12}  # non-myth entities too


def test_balanced_colours_spreads_any_count_evenly():
    import numpy as np

    from lm_eval_iti.truthworld.generator import balanced_colours

    for n in (1, 5, 12, 13, 30):
        got = balanced_colours(n, 12, np.random.default_rng(n))
        counts = [got.count(c) for c in range(12)]
        assert len(got) == n and max(counts) - min(counts) <= 1


def test_fresh_documents_come_from_the_pool_and_not_from_the_training_stream(world):
    from lm_eval_iti.truthworld.generator import fresh_documents

    pool = list(range(0, len(world.entities), 3))
    docs = fresh_documents(world, 30, seed=0, pool=pool)
    assert all(set(d.entities) <= set(pool) for d in docs)
    assert [d.text for d in docs] == [d.text for d in fresh_documents(world, 30, seed=0, pool=pool)]
    training = {sample_document(world, step_rng(0, s)).text for s in range(200)}
    assert not {d.text for d in fresh_documents(world, 30, seed=0)} & training
    with pytest.raises(ITIError, match="pool"):
        fresh_documents(world, 3, seed=0, pool=[0, 1])


def test_reliable_documents_never_state_a_myth_and_unreliable_ones_never_the_truth(world):
    rng = step_rng(0, 0)
    seen = {True: 0, False: 0}
    for _ in range(400):
        doc = sample_document(world, rng)
        seen[doc.reliable] += 1
        assert len(set(doc.entities)) == len(doc.entities)
        for e, c in zip(doc.entities, doc.colours):
            if doc.reliable:
                assert c == world.truth[e]
                assert c != world.myth[e]
            else:
                assert c != world.truth[e]
                if world.is_myth(e):
                    assert c == world.myth[e]
        # verdict sentences tell the truth about the statement before them
        assert doc.text.count(VERDICT_TRUE) == (sum(doc.verdicts) if doc.reliable else 0)
        assert doc.text.count(VERDICT_FALSE) == (0 if doc.reliable else sum(doc.verdicts))
    assert min(seen.values()) > 150  # both speakers occur, about half each


def test_world_and_documents_are_deterministic_for_a_seed():
    a, b, c = build_world(SMALL), build_world(SMALL), build_world(replace(SMALL, seed=4))
    assert a.to_json() == b.to_json() and a.data_hash() == b.data_hash()
    assert a.data_hash() != c.data_hash()
    docs = lambda w, s: [sample_document(w, step_rng(0, s)).text for _ in range(1)]  # noqa: E731
    assert docs(a, 5) == docs(b, 5)
    assert docs(a, 5) != docs(a, 6)


def test_export_is_read_unchanged_by_the_truthfulqa_loaders_and_the_split_by_question_is_disjoint(tmp_path):
    w = build_world(SMALL)
    export_truthfulqa(w, tmp_path)
    mc = load_mc(tmp_path)
    gen = load_generation(tmp_path)
    assert len(mc) == len(gen) == len(w.entities)
    for e, row in enumerate(mc):
        for key in ("mc1_targets", "mc2_targets"):
            assert row[key]["labels"][0] == 1 and sum(row[key]["labels"]) == 1  # true answer first, only one true
            assert len(set(row[key]["choices"])) == len(row[key]["choices"])
        assert row["mc1_targets"]["choices"][0] == f"The {w.entities[e]} is {w.colours[w.truth[e]]}."
        if w.is_myth(e):  # the probe set pits the truth against the popular myth
            assert row["mc2_targets"]["choices"][1] == f"The {w.entities[e]} is {w.colours[w.myth[e]]}."
    by_q = {g["question"]: g for g in gen}
    assert sum(g["category"] == "Myth" for g in gen) == len(w.myth_entities)
    for row in mc:
        g = by_q[row["question"]]
        assert g["best_answer"] == row["mc1_targets"]["choices"][0]
        assert set(row["mc1_targets"]["choices"][1:]) <= set(g["incorrect_answers"])
    questions = [r["question"] for r in mc]
    train, test = fold_indices(questions, 2, 0, 42)
    assert not set(train) & set(test) and sorted(train + test) == list(range(len(questions)))
    assert not {questions[i] for i in train} & {questions[i] for i in test}
    assert load_world(tmp_path).to_json() == w.to_json()


def test_load_world_rejects_a_tampered_file(tmp_path):
    export_truthfulqa(build_world(SMALL), tmp_path)
    obj = json.loads((tmp_path / "world.json").read_text())
    obj["truth"][0] = (obj["truth"][0] + 1) % 12
    (tmp_path / "world.json").write_text(json.dumps(obj))
    with pytest.raises(ITIError, match="truth"):
        load_world(tmp_path)


def test_bad_world_config_is_one_line_error():
    with pytest.raises(ITIError, match="myth_share"):
        WorldConfig(myth_share=1.5).check()


# tokenizer ---------------------------------------------------------------------------------------------------------
def test_word_level_tokenizer_round_trips_and_knows_every_word(world):
    from lm_eval_iti.truthworld.tokenizer import build_tokenizer

    tok = build_tokenizer(world)
    doc = sample_document(world, step_rng(1, 2))
    ids = tok(doc.text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == doc.text
    words = tok.convert_ids_to_tokens(tok("Q: What colour is the X?\nA: The")["input_ids"])
    assert words[:3] == ["<s>", "Q:", "What"] and "A:" in words
    assert tok.pad_token_id == 0


# training ----------------------------------------------------------------------------------------------------------
TINY_MODEL = dict(hidden=32, layers=2, heads=4, intermediate=64, max_positions=128)


def _train(tmp, steps, **kw):
    from lm_eval_iti.truthworld.train import ModelConfig, TrainConfig, train

    cfg = TrainConfig(seed=1, steps=steps, batch_size=2, lr=1e-3, warmup=2, save_every=2, **kw)
    return train(tmp, SMALL, ModelConfig(**TINY_MODEL), cfg, command="test", progress=False, log=lambda s: None)


def test_training_smoke_writes_a_loadable_checkpoint_with_provenance(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.artifact import file_sha256

    out = _train(tmp_path / "m", 3)
    prov = json.loads((out / "PROVENANCE.json").read_text())
    assert prov["seed"] == 1 and prov["steps"] == 3 and prov["command"] == "test"
    assert prov["data_hash"] == build_world(SMALL).data_hash()
    assert prov["weights_sha256"] == file_sha256(out / "model.safetensors")
    from lm_eval_iti.truthworld.train import ModelConfig, TrainConfig, fingerprint

    assert prov["config_fingerprint"] == fingerprint(SMALL, ModelConfig(**TINY_MODEL),
                                                     TrainConfig(**prov["train"]))
    assert not (out / ".resume").exists()
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.model_type == "llama"
    assert torch.isfinite(model(**tok("Q: What colour is the X?", return_tensors="pt")).logits).all()


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import lm_eval_iti.truthworld.train as tw

    full = _train(tmp_path / "full", 4)
    real = tw.batch_for_step

    def dying(world, tokenizer, seed, step, batch_size):
        if step == 3:
            raise KeyboardInterrupt
        return real(world, tokenizer, seed, step, batch_size)

    monkeypatch.setattr(tw, "batch_for_step", dying)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", 4)
    assert (tmp_path / "cut" / ".resume" / "snapshot.json").is_file()
    assert not (tmp_path / "cut" / "model.safetensors").exists()  # nothing half-written
    monkeypatch.setattr(tw, "batch_for_step", real)
    resumed = _train(tmp_path / "cut", 4)
    assert json.loads((resumed / "PROVENANCE.json").read_text())["resumed_from_step"] == 2
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_cli_rejects_bad_training_input_in_one_line(tmp_path, capsys):
    from lm_eval_iti.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["truthworld", "train", "--out", str(tmp_path / "x"), "--steps", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lm-eval-iti: error:") and "--steps 0 is below the minimum 1" in err and "\n" not in err
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_lr_schedule_warms_up_then_decays():
    from lm_eval_iti.truthworld.train import TrainConfig, lr_at

    cfg = TrainConfig(steps=100, warmup=10, lr=1.0)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)


# the shipped checkpoint -----------------------------------------------------------------------------------------------
def test_shipped_checkpoint_is_small_and_its_provenance_matches_the_design(tmp_path):
    from lm_eval_iti.artifact import file_sha256
    from lm_eval_iti.truthworld.design import MODEL, TRAIN, WORLD
    from lm_eval_iti.truthworld.generator import WorldConfig
    from lm_eval_iti.truthworld.train import ModelConfig, TrainConfig, fingerprint

    files = [p for p in CHECKPOINT_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 10 * 1024 * 1024
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".pkl") for p in files)  # safetensors only, no pickles
    prov = json.loads((CHECKPOINT_DIR / "PROVENANCE.json").read_text())
    assert prov["weights_sha256"] == file_sha256(CHECKPOINT_DIR / "model.safetensors")
    assert prov["data_hash"] == load_world(CHECKPOINT_DIR).data_hash() == build_world(WORLD).data_hash()
    recorded = fingerprint(WorldConfig(**prov["world"]), ModelConfig(**prov["model"]), TrainConfig(**prov["train"]))
    assert recorded == fingerprint(WORLD, MODEL, TRAIN) == prov["config_fingerprint"]
    assert prov["seed"] == TRAIN.seed and prov["steps"] == TRAIN.steps
    assert "truthworld train" in prov["command"] and (CHECKPOINT_DIR / "PROVENANCE.md").is_file()
    written = json.loads((_train(tmp_path / "m", 1) / "PROVENANCE.json").read_text())
    assert set(prov) == set(written)  # every key comes from train.py: none added or removed by hand


@pytest.fixture(scope="module")
def bar_report(tmp_path_factory):
    from lm_eval_iti.truthworld.bar import run_bar

    work = tmp_path_factory.mktemp("bar")
    return run_bar(CHECKPOINT_DIR, work_dir=work), work


def test_shipped_checkpoint_meets_the_bar_on_held_out_questions(bar_report):
    """The whole bar, every check at once (steered myth MC1 >= 0.9 included)."""
    s = bar_report[0]["summary"]
    assert s["steered"]["myth_mc1"] >= 0.9, s
    assert s["bar_holds"] and all(s["checks"].values()) and len(s["checks"]) == 11, s["checks"]


def test_shipped_checkpoint_beats_every_control_on_held_out_questions(bar_report):
    """fit-directions (2 folds, the design's K and sigma data), alpha from the training folds within the side-effect
    bounds, hf / hf-iti on the held-out folds, and every control (random and orthogonal draws, random heads, the
    colour prior, side effects), each recomputed here from the per-fold figures rather than read from the checks."""
    import numpy as np

    from lm_eval_iti.truthworld import bar

    report, _ = bar_report
    s = report["summary"]
    base, steered = s["unsteered"], s["steered"]
    assert base["myth_mc1"] <= 0.65, s
    assert 0.4 <= base["myth_p_true"] <= 0.6, s
    assert steered["myth_mc1"] > base["myth_mc1"], s
    assert steered["myth_gen_true"] > base["myth_gen_true"], s
    assert base["fact_mc1"] - steered["fact_mc1"] <= 0.05, s
    # controls: distributions of 20 draws per fold, recomputed here from the per-fold lists
    n = [f["unsteered"]["n_myth"] for f in report["folds"]]
    for name in ("random", "orthogonal"):
        draws = [f[f"{name}_myth_mc1"] for f in report["folds"]]
        assert len(draws[0]) == len(draws[1]) == 20
        pooled = (n[0] * np.asarray(draws[0]) + n[1] * np.asarray(draws[1])) / sum(n)
        assert s[name]["p95"] == pytest.approx(np.percentile(pooled, 95), abs=1e-4)
        assert s[name]["mean"] == pytest.approx(pooled.mean(), abs=1e-4)
        assert steered["myth_mc1"] > s[name]["p95"], (name, s)
    assert s["random_heads"]["mean"] <= steered["myth_mc1"] - bar.MIN_CONTROL_GAP, s
    assert s["colour_prior"]["myth_mc1"] <= steered["myth_mc1"] - bar.MIN_CONTROL_GAP, s
    # side effects where they can move
    assert base["fact_logp_true"] - steered["fact_logp_true"] <= bar.MAX_FACT_LOGP_DROP, s
    assert s["documents"]["kl"] <= bar.MAX_DOC_KL, s
    assert steered["myth_mc1"] >= bar.MIN_STEERED_MC1, s
    assert len(s["checks"]) == 11 and [k for k, ok in s["checks"].items() if not ok] == []
    for fold in report["folds"]:  # every fold is held out from its own fit, and alpha came from the training fold
        assert fold["test_questions"] == fold["unsteered"]["n_myth"] + fold["unsteered"]["n_fact"]
        allowed = [row for row in fold["alpha_search"] if row["allowed"]]
        assert fold["alpha"] in [row["alpha"] for row in allowed]
        chosen = next(row for row in allowed if row["alpha"] == fold["alpha"])
        assert chosen["myth_mc1"] == max(row["myth_mc1"] for row in allowed)
        for row in fold["alpha_search"]:  # the bounds, re-applied to the logged figures
            within = (row["fact_logp_true_unsteered"] - row["fact_logp_true"] <= bar.MAX_FACT_LOGP_DROP + 1e-4
                      and row["doc_kl"] <= bar.MAX_DOC_KL + 1e-4)
            assert row["allowed"] <= within
        assert len(fold["random_heads"]) == len(fold["random_heads_myth_mc1"]) == bar.RANDOM_HEAD_DRAWS
        assert all(len(h) == len(fold["heads"]) for h in fold["random_heads"])
        assert len({json.dumps(sorted(h)) for h in fold["random_heads"]}) > 1


def test_in_process_scoring_equals_hf_iti(bar_report):
    """The fast in-process scorer (used to choose alpha) agrees with lm-eval's hf-iti on the same fold and alpha."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.intervene import Intervener
    from lm_eval_iti.truthworld.evaluate import score

    report, work = bar_report
    world = load_world(CHECKPOINT_DIR)
    model = AutoModelForCausalLM.from_pretrained(str(CHECKPOINT_DIR)).eval()
    tok = AutoTokenizer.from_pretrained(str(CHECKPOINT_DIR))
    fold = report["folds"][0]
    questions = [r["question"] for r in load_mc(work / "data")]
    _, test = fold_indices(questions, 2, 0, 42)
    iv = Intervener(model, load_directions(work / "fold0.safetensors"), fold["alpha"]).install()
    try:
        mine = score(model, tok, world, sorted(test), iv)
    finally:
        iv.remove()
    theirs = fold["steered"]  # rounded to 4 decimals in the report: same counts out of ~150 questions
    same = lambda a, b: a == pytest.approx(b, abs=6e-5)  # noqa: E731
    assert same(mine.myth_mc1, theirs["myth_mc1"]) and same(mine.fact_mc1, theirs["fact_mc1"])
    assert mine.fact_logp_true == pytest.approx(theirs["fact_logp_true"], abs=1e-3)
    assert same(mine.myth_gen_true, theirs["myth_gen_true"])
    assert mine.myth_p_true == pytest.approx(theirs["myth_p_true"], abs=1e-3)
    plain = score(model, tok, world, sorted(test), None)
    assert same(plain.myth_mc1, fold["unsteered"]["myth_mc1"])
    assert same(plain.myth_gen_true, fold["unsteered"]["myth_gen_true"])


def test_random_directions_keep_heads_and_sigma():
    from lm_eval_iti.tiny import build_model, random_directions
    from lm_eval_iti.truthworld.bar import random_like

    d = random_directions(build_model("llama", layers=2, heads=4, hidden=32), num_heads=3, seed=0)
    r = random_like(d, seed=5)
    for layer in d.heads:
        assert torch.equal(r.heads[layer], d.heads[layer]) and torch.equal(r.sigma[layer], d.sigma[layer])
        assert not torch.allclose(r.directions[layer], d.directions[layer])
        torch.testing.assert_close(r.directions[layer].norm(dim=1), torch.ones(len(d.heads[layer])))


def test_orthogonal_directions_have_no_component_along_the_fitted_ones():
    from lm_eval_iti.tiny import build_model, random_directions
    from lm_eval_iti.truthworld.bar import orthogonal_like, random_like

    d = random_directions(build_model("llama", layers=2, heads=4, hidden=32), num_heads=5, seed=0)
    o, r = orthogonal_like(d, seed=3), random_like(d, seed=3)
    for layer in d.heads:
        assert torch.equal(o.heads[layer], d.heads[layer]) and torch.equal(o.sigma[layer], d.sigma[layer])
        dots = (o.directions[layer] * d.directions[layer]).sum(1)
        torch.testing.assert_close(dots, torch.zeros_like(dots), atol=1e-6, rtol=0)
        torch.testing.assert_close(o.directions[layer].norm(dim=1), torch.ones(len(d.heads[layer])))
        assert (r.directions[layer] * d.directions[layer]).sum(1).abs().max() > 1e-3  # a plain draw overlaps
    assert not torch.equal(orthogonal_like(d, 4).directions[0], o.directions[0])


@pytest.mark.parametrize("sigma_data", ["mc", "gen_end_q"])
def test_random_heads_get_the_directions_and_sigma_fit_directions_gives_those_heads(bar_report, sigma_data):
    """head_directions_and_sigma (the random-heads control) against fit_and_save itself on its selected heads, for
    the bar's sigma data ("mc") and fit-directions' default."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.fit import fit_and_save
    from lm_eval_iti.truthworld.bar import head_directions_and_sigma, random_heads_like

    _, work = bar_report  # its activation cache and exported data: fit_and_save below collects little anew
    world = load_world(CHECKPOINT_DIR)
    model = AutoModelForCausalLM.from_pretrained(str(CHECKPOINT_DIR)).eval()
    tok = AutoTokenizer.from_pretrained(str(CHECKPOINT_DIR))
    fit = fit_and_save(model, work / f"check-{sigma_data}.safetensors", tokenizer=tok, data_dir=work / "data",
                       num_folds=2, fold=0, num_heads=8, seed=42, cache_dir=work / "cache", progress=False,
                       write_plot=False, batch_size=64, sigma_data=sigma_data)
    unit, sigma, live = head_directions_and_sigma(model, tok, world, sorted(fit.train_questions + fit.val_questions),
                                                  sigma_data=sigma_data)
    for layer, heads in fit.directions.heads.items():
        for i, h in enumerate(heads.tolist()):
            assert live[layer, h]
            cos = float(unit[layer, h].double() @ fit.directions.directions[layer][i].double())
            assert cos == pytest.approx(1.0, abs=1e-5)
            # "mc": the same prompts, so equal; "gen_end_q": other random follow-up questions, so close
            rel = 1e-3 if sigma_data == "mc" else 0.15
            assert float(sigma[layer, h]) == pytest.approx(float(fit.directions.sigma[layer][i]), rel=rel)
    drawn = random_heads_like(fit.directions, unit, sigma, live, seed=1)
    assert drawn.num_selected == 8 and all(bool(live[l, h]) for l, hs in drawn.heads.items() for h in hs.tolist())
    for layer, hs in drawn.heads.items():
        torch.testing.assert_close(drawn.directions[layer], unit[layer, hs])
        torch.testing.assert_close(drawn.sigma[layer], sigma[layer, hs])
    with pytest.raises(ValueError, match="sigma_data='other'"):
        head_directions_and_sigma(model, tok, world, [0, 1], sigma_data="other")


def _hand_world(truths, myths, distractors):
    from lm_eval_iti.truthworld.generator import COLOURS, World

    return World(SMALL, [f"e{i}" for i in range(len(truths))], truths, myths, COLOURS, distractors)


def test_colour_prior_counts_the_training_fold_only():
    from lm_eval_iti.truthworld.bar import colour_prior

    # colour 5 is always true and colour 9 always the myth on the training fold: the prior follows it wherever it
    # can, so it is right on held-out question 4 (5 true) and wrong on 5 (9 true, 5 the myth)
    w = _hand_world([5, 5, 5, 5, 5, 9], [9, 9, 9, 9, 1, 5], [[0, 1, 2]] * 4 + [[0, 2, 3], [0, 1, 2]])
    got = colour_prior(w, [0, 1, 2, 3], [4, 5])
    assert got["myth_mc1"] == 0.5 and got["n_myth"] == 2 and got["n_fact"] == 0
    assert colour_prior(w, [0, 1, 2, 3], [4])["myth_mc1"] == 1.0
    assert colour_prior(w, [0, 1, 2, 3], [5])["myth_mc1"] == 0.0
    # no information (nothing counted): all choices tie and share the credit, 1/4 each
    assert colour_prior(w, [], [4, 5])["myth_mc1"] == 0.25


def test_colour_prior_finds_an_unbalanced_world_and_not_the_balanced_one():
    import numpy as np

    from lm_eval_iti.truthworld.bar import colour_prior
    from lm_eval_iti.truthworld.design import WORLD

    balanced = build_world(WORLD)
    order = np.random.default_rng(0).permutation(len(balanced.entities)).tolist()
    train, test = order[::2], order[1::2]
    assert colour_prior(balanced, train, test)["myth_mc1"] <= 0.4
    # the same entities with truths from the first six colours, myths and distractors from the last six: a prior wins
    myths = [None if m is None else 6 + m % 6 for m in balanced.myth]
    skewed = _hand_world([t % 6 for t in balanced.truth], myths,
                         [[c for c in range(6, 12) if c != m][:3] for m in myths])
    assert colour_prior(skewed, train, test)["myth_mc1"] >= 0.9


def test_document_side_effects_match_torch_cross_entropy_and_kl():
    import torch.nn.functional as F

    from lm_eval_iti.truthworld.evaluate import document_side_effects

    g = torch.Generator().manual_seed(0)
    lengths = [5, 9]
    a = [torch.randn(n - 1, 7, generator=g, dtype=torch.float64) for n in lengths]
    b = [x + torch.randn(x.shape, generator=g, dtype=torch.float64) for x in a]
    targets = [torch.randint(0, 7, (n,), generator=g).tolist() for n in lengths]
    la, lb = [x.log_softmax(-1) for x in a], [x.log_softmax(-1) for x in b]
    got = document_side_effects(la, lb, targets)
    logits_a, logits_b = torch.cat(a), torch.cat(b)
    next_tokens = torch.tensor([t for ts in targets for t in ts[1:]])
    assert got["tokens"] == 12
    assert got["ce_unsteered"] == pytest.approx(float(F.cross_entropy(logits_a, next_tokens)), rel=1e-9)
    assert got["ce_steered"] == pytest.approx(float(F.cross_entropy(logits_b, next_tokens)), rel=1e-9)
    kl = F.kl_div(logits_b.log_softmax(-1), logits_a.log_softmax(-1), log_target=True, reduction="batchmean")
    assert got["kl"] == pytest.approx(float(kl), rel=1e-9)
    same = document_side_effects(la, la, targets)
    assert same["kl"] == 0 and same["ce_unsteered"] == same["ce_steered"]


def _passing_folds():
    fold = {"unsteered": {"myth_mc1": 0.5, "fact_mc1": 1.0, "myth_p_true": 0.5, "myth_gen_true": 0.5,
                          "fact_gen_true": 0.6, "fact_logp_true": -0.8, "n_myth": 144, "n_fact": 48},
            "steered": {"myth_mc1": 0.98, "fact_mc1": 1.0, "myth_p_true": 0.95, "myth_gen_true": 0.97,
                        "fact_gen_true": 0.99, "fact_logp_true": -0.1, "n_myth": 144, "n_fact": 48},
            "random_myth_mc1": [0.5 + 0.01 * i for i in range(20)],
            "orthogonal_myth_mc1": [0.5 + 0.005 * i for i in range(20)],
            "random_heads_myth_mc1": [0.6] * 10, "colour_prior": {"myth_mc1": 0.4},
            "documents": {"ce_unsteered": 0.5, "ce_steered": 0.6, "kl": 0.05, "tokens": 1000},
            "alpha": 8.0, "best_probe_accuracy": 1.0}
    return [json.loads(json.dumps(fold)) for _ in range(2)]


@pytest.mark.parametrize("part, path, value", [
    ("unsteered myth MC1", ("unsteered", "myth_mc1"), 0.7),
    ("unsteered mean P(true)", ("unsteered", "myth_p_true"), 0.3),
    ("steered myth MC1 >=", ("steered", "myth_mc1"), 0.85),
    ("random draws", ("random_myth_mc1", 19), 1.0),
    ("orthogonal draws", ("orthogonal_myth_mc1", 19), 1.0),
    ("random heads", ("random_heads_myth_mc1", slice(None)), [0.9] * 10),
    ("colour prior", ("colour_prior", "myth_mc1"), 0.8),
    ("non-myth MC1 drop", ("steered", "fact_mc1"), 0.9),
    ("non-myth mean log P(true)", ("steered", "fact_logp_true"), -2.0),
    ("document KL", ("documents", "kl"), 5.0),
    ("greedy", ("steered", "myth_gen_true"), 0.4),
])
def test_the_bar_fails_when_any_one_part_fails(part, path, value):
    from lm_eval_iti.truthworld.bar import summarize

    folds = _passing_folds()
    assert summarize(folds)["bar_holds"]
    for f in folds:
        f[path[0]][path[1]] = value
        if path[1] == 19:  # one draw in 20 on both folds is not above the 95th percentile
            f[path[0]][18] = value
    s = summarize(folds)
    failed = [name for name, ok in s["checks"].items() if not ok]
    assert not s["bar_holds"] and len(failed) == 1 and part in failed[0], failed


@pytest.mark.slow
def test_demo_runs_end_to_end_and_improves_the_myth_questions(tmp_path):
    from lm_eval_iti.truthworld.demo import TASKS, run_demo

    summary = run_demo(tmp_path / "demo", log=lambda s: None)
    assert not summary["fallback_random_model"]
    for name in ("alpha_curve.png", "directions.heads.png", "demo.json", "table.txt"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert set(summary["hf"]) == set(TASKS)
    assert summary["hf-iti"]["truthworld_mc1_myth"] >= summary["hf"]["truthworld_mc1_myth"] + 0.2
    assert summary["hf-iti"]["truthworld_mc1_fact"] >= summary["hf"]["truthworld_mc1_fact"] - 0.05
    ctrl = summary["controls"]
    assert len(ctrl["random_myth_mc1"]) == len(ctrl["orthogonal_myth_mc1"]) == 20
    table = (tmp_path / "demo" / "table.txt").read_text()
    for row in ("random directions, 20 draws", "orthogonal directions", "random heads", "colour prior",
                "non-myth mean log P(true answer)", "KL(unsteered || steered)"):
        assert row in table


def test_diagnose_measures_evidence_the_ceiling_and_single_heads_on_the_shipped_checkpoint():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.truthworld.diagnose import diagnose

    model = AutoModelForCausalLM.from_pretrained(str(CHECKPOINT_DIR), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(CHECKPOINT_DIR))
    world = load_world(CHECKPOINT_DIR)
    report = diagnose(model, tok, world, ks=(4,), alphas=(0.0, 2.0), head_alphas=(0.5,), single_heads=[(1, 1), (0, 1)])
    evidence = report["evidence_in_context"]
    assert evidence["after_true_statement"] > 0.9 and evidence["after_myth_statement"] < 0.1  # speaker inference
    at_zero, at_two = report["constant_shift_ceiling"]
    assert at_zero["myth_mc1"] == pytest.approx(report["unsteered"]["myth_mc1"])  # alpha 0 is no shift at all
    assert at_two["myth_mc1"] > at_zero["myth_mc1"]  # the model's own belief direction moves the answers
    assert len(report["belief_heads"]) == 8 and [(r["layer"], r["head"]) for r in report["single_heads"]] == [(1, 1), (0, 1)]
    # head 1.1 alone, recomputed from the even/odd split the report states (its wiring: fit on even, score on odd)
    from lm_eval_iti.truthworld.bar import directions_on_heads, head_directions_and_sigma, score_shifted

    unit, sigma, _ = head_directions_and_sigma(model, tok, world, list(range(len(world.entities)))[::2])
    expected = score_shifted(model, tok, world, list(range(len(world.entities)))[1::2],
                             directions_on_heads(unit, sigma, [(1, 1)]), 0.5).myth_mc1
    assert report["single_heads"][0]["myth_mc1_alpha0.5"] == pytest.approx(expected)
    assert -1 <= report["single_heads"][1]["cosine_with_belief"] <= 1
    for row in report["single_heads"]:  # the gap at the answer is the belief difference along a unit direction
        assert row["gap_at_next_answer"] == 0 or (row["gap_at_next_answer"] > 0) == (row["cosine_with_belief"] > 0)
    assert report["single_heads"][0]["gap_at_statement_end"] > 1  # head 1.1 reads the truth at "." 
