"""``--head-selection effect``: the first-order effect against an independent finite difference, and a tiny model
where the answer is known (a planted head that moves the objective, a decoy head that a probe reads but that cannot
change anything): effect picks the planted head, the probe ranking the decoy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lm_eval_iti.errors import ITIError

NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]


def yes_no_data(folder):
    """Forty questions whose true answer is `yes` and false answer `no` (TruthfulQA's mc_task.json format)."""
    docs = []
    for i, n in enumerate(NUMBERS * 2):
        colour = "red" if i < 20 else "blue"
        targets = {"yes": 1, "no": 0}
        docs.append({"question": f"Is box {n} {colour}?", "mc1_targets": targets, "mc2_targets": targets})
    (folder / "mc_task.json").write_text(json.dumps(docs))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    from lm_eval_iti.tiny import build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("effect")
    model = build_model("llama", seed=3).eval()
    tokenizer = build_tokenizer(folder / "tok")
    return model, AutoTokenizer.from_pretrained(str(folder / "tok")), yes_no_data(folder)


def independent_log_mc2(model, tokenizer, doc, shift=None, plan_fn=None):
    """log MC2 of one question, one unpadded forward per answer, the shift through the library's Intervener."""
    from lm_eval_iti.intervene import Intervener, answer_mask

    context = f"Q: {doc['question']}\nA:"
    n_ctx = len(tokenizer(context)["input_ids"])
    lls = []
    for answer in doc["mc2_targets"]["choices"]:
        whole = tokenizer(context + " " + answer)["input_ids"]
        ids = torch.tensor([whole[:-1]])
        n = len(whole) - n_ctx
        if shift is None:
            logits = model(input_ids=ids).logits
        else:
            with shift.editing(answer_mask([len(whole) - 1], [n], len(whole) - 1)):
                logits = model(input_ids=ids).logits
        logp = torch.log_softmax(logits.double(), -1)[0]
        lls.append(float(sum(logp.detach()[len(whole) - 1 - n + j, whole[len(whole) - n + j]] for j in range(n))))
    lls = np.asarray(lls)
    labels = np.asarray(doc["mc2_targets"]["labels"], bool)
    return float(np.logaddexp.reduce(lls[labels]) - np.logaddexp.reduce(lls))


def one_head_directions(model, layer, head, unit, sigma):
    from lm_eval_iti.artifact import Directions
    from lm_eval_iti.architectures import model_shape

    shape = model_shape(model)
    return Directions(shape.num_layers, shape.num_heads, shape.head_dim, {layer: torch.tensor([head])},
                      {layer: unit[None].float()}, {layer: torch.tensor([float(sigma)])}, {}, alpha=1.0)


def test_first_order_effect_matches_a_finite_difference_through_the_intervener(tiny):
    """d(mean log MC2)/d alpha of a one-head shift: the gradient path against a central difference computed with
    unpadded forwards and hf-iti's Intervener at the scoring positions."""
    from lm_eval_iti.data import load_mc
    from lm_eval_iti.effect import first_order_effect, objective_gradients, objective_requests
    from lm_eval_iti.intervene import Intervener

    model, tokenizer, folder = tiny
    docs = load_mc(str(folder))[:6]
    L, H, d = 2, 4, 16
    unit = torch.nn.functional.normalize(torch.randn(L, H, d, generator=torch.Generator().manual_seed(1)), dim=-1)
    sigma = torch.rand(L, H, generator=torch.Generator().manual_seed(2)) + 0.5
    requests = objective_requests(docs, list(range(len(docs))), tokenizer)
    grads, base, _ = objective_gradients(model, requests, L, H * d, max_rows=5)
    effect = first_order_effect(grads, unit, sigma)
    assert base == pytest.approx(np.mean([independent_log_mc2(model, tokenizer, doc) for doc in docs]), abs=1e-5)
    eps = 1e-2
    for layer, head in [(0, 1), (1, 3), (1, 0)]:
        dirs = one_head_directions(model, layer, head, unit[layer, head], sigma[layer, head])
        values = []
        for alpha in (eps, -eps):
            shift = Intervener(model, dirs, alpha).install()
            try:
                values.append(np.mean([independent_log_mc2(model, tokenizer, doc, shift) for doc in docs]))
            finally:
                shift.remove()
        finite = (values[0] - values[1]) / (2 * eps)
        assert float(effect[layer, head]) == pytest.approx(finite, rel=2e-3, abs=1e-7)
    assert any(abs(float(e)) > 1e-5 for e in effect.flatten())  # the check is not comparing zeros


def plant(model, tokenizer, planted, decoy, unit, gain=40.0):
    """Decoy: its output-projection columns zeroed (its shift reaches nothing). Planted: its columns write
    gain * (unembedding of ` yes` minus ` no`) along its own unit direction, so steering it along that direction
    raises the `yes` answer's log-probability; the activations every probe reads are unchanged (planted is in the
    last layer, the decoy's own input does not depend on its output projection)."""
    from lm_eval_iti.architectures import out_projections

    d = unit.shape[-1]
    projections = out_projections(model)
    yes, no = tokenizer(" yes")["input_ids"][0], tokenizer(" no")["input_ids"][0]
    w = model.get_output_embeddings().weight[yes] - model.get_output_embeddings().weight[no]
    with torch.no_grad():
        layer, head = decoy
        projections[layer].weight[:, head * d:(head + 1) * d] = 0
        layer, head = planted
        projections[layer].weight[:, head * d:(head + 1) * d] = gain * torch.outer(w, unit[layer, head])


def test_effect_picks_the_planted_head_and_the_probe_the_decoy(tiny, tmp_path):
    """On yes/no questions: the probe ranking puts the decoy first (its probe reads truth best), though its output
    cannot reach the logits; the planted head, which the probe ranks last in its layer, moves the objective."""
    import copy

    from lm_eval_iti.fit import fit_directions

    model, tokenizer, folder = tiny
    model = copy.deepcopy(model)
    common = dict(data_dir=str(folder), num_folds=2, fold=0, num_heads=1, sigma_data="mc", progress=False)
    # every head's mass-mean direction (the fit with K = all heads), then plant on it
    everything = fit_directions(model, tokenizer, **dict(common, num_heads=8))
    unit = torch.zeros(2, 4, 16)
    for layer, heads in everything.heads.items():
        for i, head in enumerate(heads.tolist()):
            unit[layer, head] = everything.directions[layer][i]
    # the decoy: the probe's best head; the planted head: the last layer's worst; both in the last layer, so the
    # planting changes no activation that a probe or a direction reads
    accuracy = everything.probe_accuracy
    decoy = tuple(int(v) for v in (accuracy == accuracy.max()).nonzero()[0])
    planted = (1, int(accuracy[1].argmin()))
    assert decoy == (1, 0) and planted == (1, 2) and float(accuracy[1, 2]) < float(accuracy.max())
    plant(model, tokenizer, planted, decoy, unit)

    probe = fit_directions(model, tokenizer, **common)
    effect = fit_directions(model, tokenizer, head_selection="effect", **common)
    assert [(l, int(h)) for l, hs in probe.heads.items() for h in hs] == [decoy]
    assert [(l, int(h)) for l, hs in effect.heads.items() for h in hs] == [planted]
    per_head = json.loads(effect.metadata["effect_per_head"])
    assert per_head[decoy[0]][decoy[1]] == 0.0  # the decoy's effect is exactly zero: nothing reads its output
    assert max(v for row in per_head for v in row if v is not None) == per_head[1][2]
    assert torch.equal(probe.probe_accuracy, accuracy)  # the planting changed nothing a probe reads
    assert effect.metadata["head_selection"] == "effect" and probe.metadata["head_selection"] == "probe"
    check = json.loads(effect.metadata["effect_check"])
    assert len(check["heads"]) == 8 and check["spearman"] > 0.5, check
    # only training questions: the held-out fold's ids are the fit's complement, and the sample is within the fit's
    assert int(effect.metadata["effect_questions"]) == 20
    # the planted head is the one that helps: steering it alone raises the held-out log MC2, the decoy changes nothing
    from lm_eval_iti.data import load_mc
    from lm_eval_iti.folds import fold_indices
    from lm_eval_iti.intervene import Intervener

    docs = load_mc(str(folder))
    held_out = [docs[i] for i in fold_indices([d["question"] for d in docs], 2, 0, seed=42)[1]]
    base = np.mean([independent_log_mc2(model, tokenizer, doc) for doc in held_out])
    for dirs, better in ((effect, True), (probe, False)):
        shift = Intervener(model, dirs, 5.0).install()
        try:
            steered = np.mean([independent_log_mc2(model, tokenizer, doc, shift) for doc in held_out])
        finally:
            shift.remove()
        assert (steered > base + 0.05) if better else steered == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize("options, message", [
    (dict(head_selection="effect", random_heads=True), "exclude each other"),
    (dict(head_selection="effect", method="random"), "needs method mass-mean or probe"),
    (dict(head_selection="greedy"), "head_selection='greedy' is not one of probe, effect"),
    (dict(head_selection="effect", effect_questions=1), "effect_questions=1 must be at least 2"),
])
def test_bad_effect_options_are_one_line(options, message):
    from lm_eval_iti.fit import make_config

    with pytest.raises(ITIError, match=message):
        make_config(**options)


@pytest.mark.parametrize("method", ["mass-mean", "probe"])
def test_every_head_direction_equals_the_selected_head_direction(method):
    """effect ranks each head by the direction it would get if selected: all_head_directions row by row against
    compute_directions on that one head; a head with identical class means is not live (no error, no NaN)."""
    from lm_eval_iti.select import all_head_directions, compute_directions, every_head

    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 6, 5, generator=g)  # 12 rows, 2 layers x 3 heads, d = 5
    labels = np.array([1, 0] * 6)
    x[:, 4] = 1.0  # head (1, 1): the same activation for every row, so its mass-mean direction is zero
    coef = torch.randn(2, 3, 5, generator=g)
    unit, live = all_head_directions(method, 2, 3, x=x, labels=labels, probe_coef=coef)
    for i, (layer, head) in enumerate(every_head(2, 3).tolist()):
        if method == "mass-mean" and (layer, head) == (1, 1):
            assert not live[1, 1] and torch.equal(unit[1, 1], torch.zeros(5))
            continue
        one = torch.tensor([[layer, head]])
        expected = compute_directions(method, one, x=x[:, [i]], labels=labels, probe_coef=coef)[0]
        assert live[layer, head] and torch.allclose(unit[layer, head], expected, atol=1e-6)


def test_fit_directions_command_ranks_by_effect_and_prints_the_check(tiny_model_dir, tiny, tmp_path, capsys):
    from conftest import run_cli

    from lm_eval_iti.artifact import load_directions

    out = tmp_path / "effect.safetensors"
    code, text, err = run_cli(["fit-directions", "--model", str(tiny_model_dir), "--data-dir", str(tiny[2]),
                          "--num-folds", "2", "--fold", "1", "--num-heads", "2", "--sigma-data", "mc",
                          "--head-selection", "effect", "--effect-questions", "6", "--effect-check-heads", "3",
                          "--no-cache", "--no-plot", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert "heads ranked by effect: estimate vs measured one-head effect on 3 heads, Spearman" in text
    meta = load_directions(out).metadata
    assert meta["head_selection"] == "effect" and meta["effect_questions"] == "6"
    assert len(json.loads(meta["effect_check"])["heads"]) == 3
