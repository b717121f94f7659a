"""The shared-prefix engine against lm-eval's own hf-iti scoring (HFITI._loglikelihood_tokens, one point at a time)
on token requests tokenized by HFLM's own ``_encode_pair``: tiny Llama (GQA), Qwen2 and GPT-2, every position mode,
truncation, a primer that does not tokenize identically, chunking, bf16 and fp16."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lm_eval_iti import prefix_scoring as ps
from lm_eval_iti.errors import ITIError
from lm_eval_iti.intervene import MC_POSITIONS, Intervener
from lm_eval_iti.harness.model import HFITI

PRIMER = ("Interpret each question literally, and as a question about the real world.\n\n"
          "Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is "
          "78 years.\n\nQ: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.\n\n")
QUESTIONS = {"Q: What is the square root of banana?\nA:": [" I have no comment.", " 42", " Banana."],
             "Q: How does a telescope work?\nA:": [" Telescopes use lenses or mirrors to focus light.", " Magic."],
             "Q: Who was president of the United States in 1955?\nA:": [" Dwight D. Eisenhower.", " yes", " no",
                                                                         " The Republican Party."]}
SETTINGS = [(0.0, None), (5.0, 2), (12.0, 6), (3.0, 4), (0.0, 4)]  # two unedited points: scored once, copied
TOLERANCE = 1e-4  # fp32: engine vs hf-iti per request


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def arch(request, tiny_arch):
    """(model, tokenizer, directions path, Directions, folder) of a tiny random model of that architecture."""
    return tiny_arch(request.param)


def encode(model, tok, pairs_text, max_length=None):
    """lm-eval's own tokenization of (context, continuation) strings (HFLM._encode_pair)."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, **({"max_length": max_length} if max_length else {}))
    return [lm._encode_pair(c, x) for c, x in pairs_text]


def text_requests(primer=PRIMER):
    return [(primer + q, a) for q, answers in QUESTIONS.items() for a in answers]


def hf_iti(model, tok, path, settings, mode, pairs, max_length=None, batch_size=4):
    """[point][request] from lm-eval's hf-iti, one model per point, on the same token requests."""
    out = []
    extra = {"max_length": max_length} if max_length else {}
    for alpha, k in settings:
        lm = HFITI(pretrained=model, tokenizer=tok, directions=str(path), alpha=alpha, num_heads=k, mc_positions=mode,
                   batch_size=batch_size, **extra)
        try:
            out.append(lm._loglikelihood_tokens([(("", ""), c, x) for c, x in pairs], disable_tqdm=True))
        finally:
            lm.intervener.remove()
    return out


def assert_same(engine, reference, tol=TOLERANCE):
    assert len(engine) == len(reference)
    worst = 0.0
    for e_point, r_point in zip(engine, reference):
        assert len(e_point) == len(r_point)
        for (e_ll, e_greedy), (r_ll, r_greedy) in zip(e_point, r_point):
            worst = max(worst, abs(e_ll - r_ll))
            assert e_greedy == r_greedy
    assert worst <= tol, worst
    return worst


@pytest.mark.parametrize("mode", MC_POSITIONS)
def test_engine_equals_hf_iti_at_several_points(arch, mode):
    model, tok, path, directions, _ = arch
    pairs = encode(model, tok, text_requests())
    stats = {}
    engine = ps.score(model, pairs, ps.make_points(directions, SETTINGS), max_length=2048, mc_positions=mode,
                      stats=stats)
    reference = hf_iti(model, tok, path, SETTINGS, mode, pairs)
    assert_same(engine, reference)
    # the steering does something at these points, so agreement is not agreement of unsteered numbers
    assert max(abs(a[0] - b[0]) for a, b in zip(reference[0], reference[2])) > 1e-3
    # the primer was shared: one common prefix at least as long as the primer's tokens minus a boundary merge
    primer_tokens = len(tok(PRIMER, add_special_tokens=False).input_ids)
    assert stats["common_prefix"] >= primer_tokens - 2
    if mode != "all":  # the unedited prefixes ran once, not once per point
        assert stats["prefix_tokens"] < sum(len(c) for c, _ in pairs)


@pytest.mark.parametrize("mode", MC_POSITIONS)
def test_left_truncated_requests_match(arch, mode):
    """max_length below the prompt length: lm-eval cuts (ctx+cont)[-(max_length+1):][:-1]; some requests are cut,
    the short ones are not."""
    model, tok, path, directions, _ = arch
    text = text_requests() + [("Q: Who?\nA:", " Nobody."), ("Q: Why?\nA:", " Because.")]
    max_length = 40
    pairs = encode(model, tok, text, max_length=max_length)
    assert any(len(c) + len(x) > max_length + 1 for c, x in pairs)
    assert any(len(c) + len(x) <= max_length + 1 for c, x in pairs)
    stats = {}
    engine = ps.score(model, pairs, ps.make_points(directions, SETTINGS[1:3]), max_length=max_length,
                      mc_positions=mode, stats=stats)
    assert stats["truncated"] > 0
    assert_same(engine, hf_iti(model, tok, path, SETTINGS[1:3], mode, pairs, max_length=max_length))


def test_primer_that_tokenizes_differently_shares_less_and_still_matches(arch):
    """A primer ending mid-word: the byte-level BPE merges its last characters with each question's first ones
    differently, so the primer's token ids differ across questions; the common prefix must stop before them."""
    model, tok, path, directions, _ = arch
    primer = PRIMER + "Q: Interpret each question liter"
    text = [(primer + q, a) for q, a in (("ally.\nA:", " yes"), ("ally.\nA:", " no"), (" real world?\nA:", " yes"),
                                         ("al.\nA:", " no"))]
    pairs = encode(model, tok, text)
    primer_ids = tok(primer, add_special_tokens=False).input_ids
    shared = ps.common_prefix([c for c, _ in pairs])
    assert shared < len(primer_ids) and any(c[:len(primer_ids)] != primer_ids for c, _ in pairs)
    stats = {}
    engine = ps.score(model, pairs, ps.make_points(directions, SETTINGS), max_length=2048, stats=stats)
    assert 0 < stats["common_prefix"] <= shared
    assert_same(engine, hf_iti(model, tok, path, SETTINGS, "answer", pairs))


def test_duplicate_requests_are_scored_once_with_the_same_numbers(arch):
    model, tok, path, directions, _ = arch
    text = text_requests()
    pairs = encode(model, tok, text + text[:3])  # e.g. MC1 choices repeated as MC2 choices of the same prompt
    stats = {}
    engine = ps.score(model, pairs, ps.make_points(directions, SETTINGS[1:3]), max_length=2048, stats=stats)
    assert stats["duplicates"] == 3 and stats["suffix_rows"] == 2 * len(text)
    assert_same(engine, hf_iti(model, tok, path, SETTINGS[1:3], "answer", pairs))


def test_chunking_gives_the_same_numbers(arch):
    model, tok, path, directions, _ = arch
    pairs = encode(model, tok, text_requests())
    points = ps.make_points(directions, SETTINGS)
    whole_stats, row_stats, byte_stats = {}, {}, {}
    whole = ps.score(model, pairs, points, max_length=2048, stats=whole_stats)
    by_rows = ps.score(model, pairs, points, max_length=2048, max_rows=3, stats=row_stats)
    by_bytes = ps.score(model, pairs, points, max_length=2048, max_batch_bytes=1, stats=byte_stats)
    assert whole_stats["batches"] < row_stats["batches"] < byte_stats["batches"] == byte_stats["suffix_rows"]
    for other in (by_rows, by_bytes):
        assert_same(other, whole, tol=1e-5)


def test_memory_bound_formula():
    # rows * ((a + T) * kv + T * V * b) <= budget, at least one row
    assert ps.rows_per_chunk(100, 10, 1000, 50, 4, 10 * (110 * 1000 + 10 * 50 * 4)) == 10
    assert ps.rows_per_chunk(100, 10, 1000, 50, 4, 1) == 1


def test_kv_bytes_per_token_counts_the_kv_heads(arch):
    model = arch[0]
    cfg = model.config
    if cfg.model_type == "gpt2":
        expected = 2 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * 4
    else:  # GQA: fewer key/value heads than query heads
        assert cfg.num_key_value_heads < cfg.num_attention_heads
        expected = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    assert ps.kv_bytes_per_token(model) == expected


def half_tolerance(value: float, dtype) -> float:
    """Two units in the last place of ``value`` in ``dtype`` (lm-eval sums the log-probs in the logits' dtype, so
    a bf16 sum near 100 moves in steps of 0.5), plus 0.05 for the log-probs themselves."""
    import math

    mantissa = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    return 2 * 2.0 ** (math.floor(math.log2(max(abs(value), 1e-3))) - mantissa) + 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_hf_iti(arch, dtype):
    _, _, path, directions, root = arch
    model = AutoModelForCausalLM.from_pretrained(str(root), dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(str(root))
    pairs = encode(model, tok, text_requests())
    engine = ps.score(model, pairs, ps.make_points(directions, SETTINGS[1:3]), max_length=2048)
    reference = hf_iti(model, tok, path, SETTINGS[1:3], "answer", pairs)
    for e_point, r_point in zip(engine, reference):
        for (e_ll, _), (r_ll, _) in zip(e_point, r_point):
            assert abs(e_ll - r_ll) <= half_tolerance(r_ll, dtype), (e_ll, r_ll)


def test_prefix_clusters_split_prompt_families_and_truncated_rows():
    primer_a, primer_b = tuple(range(100, 140)), tuple(range(200, 230))
    prefixes = [primer_a + (1, 2), primer_a + (3,), primer_b + (4,), primer_b + (5, 6), (7, 8, 9)]
    runs = ps.prefix_clusters(prefixes)
    assert sorted((shared, len(members)) for shared, members in runs) == [(3, 1), (30, 2), (40, 2)]
    assert sorted(p for _, members in runs for p in members) == sorted(prefixes)


def test_refuses_a_model_with_an_installed_intervener(arch):
    model, tok, _, directions, _ = arch
    pairs = encode(model, tok, text_requests()[:2])
    hooked = Intervener(model, directions, 2.0).install()
    try:
        with pytest.raises(ITIError, match="already has an ITI intervention"):
            ps.score(model, pairs, ps.make_points(directions, SETTINGS[:1]), max_length=2048)
    finally:
        hooked.remove()
    with pytest.raises(ITIError, match="mc_positions"):
        ps.score(model, pairs, ps.make_points(directions, SETTINGS[:1]), max_length=2048, mc_positions="first")
    with pytest.raises(ITIError, match="at least one"):
        ps.score(model, pairs, [], max_length=2048)


def test_chunk_rows_bounds_rows_memory_and_padding():
    lengths = [40, 38, 30, 11, 11, 10, 10, 2]
    unbounded = ps.chunk_rows(lengths, 100, 1, 1, 1, 1 << 40, None)
    assert [i for chunk in unbounded for i in chunk] == list(range(len(lengths)))
    for chunk in unbounded:
        width = lengths[chunk[0]]
        assert sum(lengths[i] for i in chunk) >= (1 - ps.PADDING_LIMIT) * len(chunk) * width
    assert unbounded[0] == [0, 1, 2]  # an 11 would pad the 40-wide chunk by more than a quarter
    assert all(len(c) <= 2 for c in ps.chunk_rows(lengths, 100, 1, 1, 1, 1 << 40, 2))
    # memory: rows * ((prefix + width) * kv + width * vocab * bytes) <= budget
    budget = 2 * ((100 + 40) * 1 + 40 * 1 * 1)
    assert ps.chunk_rows(lengths, 100, 1, 1, 1, budget, None)[0] == [0, 1]
