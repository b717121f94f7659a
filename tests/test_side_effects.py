"""side-effects: CE and KL(base || steered) on the same documents, checked against independent computations
(torch's cross_entropy/kl_div, Hugging Face's loss with labels, a baked checkpoint instead of hooks)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import shared_data

from lm_eval_iti.cli import main
from lm_eval_iti.errors import ITIError
from lm_eval_iti import side_effects as se

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def _paragraph(i: int, n: int = 110) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(n)) + " @-@ end ."


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """A WikiText-shaped raw file: headings, short lines, 6 long paragraphs, CRLF line ends."""
    lines = [" = Title = ", " short line of few words . "]
    for i in range(6):
        lines += [f" = = Section {i} = = ", " " + _paragraph(i) + " "]
    path = tmp_path_factory.mktemp("corpus") / "wiki.raw"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval(),
            AutoTokenizer.from_pretrained(str(tiny_model_dir)))


def test_ce_and_kl_math_against_torch():
    torch.manual_seed(0)
    logits, other = torch.randn(3, 7, 11), torch.randn(3, 7, 11)
    ids = torch.randint(0, 11, (3, 7))
    lengths = torch.tensor([7, 4, 2])
    ce = se.doc_cross_entropy(logits, ids, lengths)
    kl = se.doc_kl(logits, other, lengths)
    for row, n in enumerate(lengths.tolist()):
        assert ce[row] == pytest.approx(float(F.cross_entropy(logits[row, :n - 1], ids[row, 1:n])), abs=1e-5)
        expected = F.kl_div(torch.log_softmax(other[row, :n], -1), torch.log_softmax(logits[row, :n], -1),
                            log_target=True, reduction="sum") / n
        assert kl[row] == pytest.approx(float(expected), abs=1e-5)
    assert torch.equal(se.doc_kl(logits, logits, lengths), torch.zeros(3))


def test_corpus_drops_headings_keeps_long_paragraphs_and_samples_with_a_seed(corpus_file):
    lines = corpus_file.read_text().splitlines()
    assert len(se.paragraphs(lines)) == 6 and not any(p.startswith("=") for p in se.paragraphs(lines))
    first = se.load_corpus(str(corpus_file), num_docs=4, seed=1)
    assert first.texts == se.load_corpus(str(corpus_file), num_docs=4, seed=1).texts
    assert first.info["paragraph_indices"] != se.load_corpus(str(corpus_file), num_docs=4, seed=2).info[
        "paragraph_indices"]
    assert first.info["detokenized"] == "lm-eval wikitext_detokenizer" and "@-@" not in " ".join(first.texts)
    raw = se.load_corpus(str(corpus_file), num_docs=4, seed=1, detokenized=False)
    assert raw.info["detokenized"].startswith("no") and all("@-@" in t for t in raw.texts)
    with pytest.raises(ITIError, match="only 6 paragraphs"):
        se.load_corpus(str(corpus_file), num_docs=7)


def test_the_shared_wikitext_file_has_the_documented_paragraph_count():
    raw = shared_data("webtext", "wikitext-2-raw-v1.test.raw")
    lines = raw.read_text(encoding="utf-8").splitlines()
    assert sum(se.is_heading(line) for line in lines) == 706
    assert len(se.paragraphs(lines)) == 1085  # data README: 1,085 paragraphs of >= 100 words


def test_alpha_zero_gives_zero_kl_and_equal_ce_and_alpha_positive_moves_both(loaded, corpus_file,
                                                                             tiny_directions_file):
    model, tok = loaded
    common = dict(corpus=str(corpus_file), num_docs=5, num_tokens=40, seed=0, batch_size=2, progress=False)
    off = se.side_effects(model, tok, tiny_directions_file, alpha=0.0, **common)
    on = se.side_effects(model, tok, tiny_directions_file, alpha=8.0, **common)
    assert off["corpus"]["paragraph_indices"] == on["corpus"]["paragraph_indices"]  # the same documents
    assert off["side_effects"]["kl"] == 0.0
    assert off["side_effects"]["ce_base"] == off["side_effects"]["ce_steered"]
    assert on["side_effects"]["ce_base"] == off["side_effects"]["ce_base"]
    assert on["side_effects"]["kl"] > 1e-4 and all(k > 0 for k in on["per_doc"]["kl"])
    assert on["side_effects"]["ce_steered"] != on["side_effects"]["ce_base"]
    assert on["intervention"]["directions_sha256"] and on["side_effects"]["tokens_per_doc"] == {"min": 40, "max": 40}
    assert not model._forward_pre_hooks and all(not m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_ce_and_kl_equal_an_independent_computation_with_hf_loss_and_a_baked_model(loaded, corpus_file,
                                                                                   tiny_directions_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.export import bake

    model, tok = loaded
    alpha = 8.0
    result = se.side_effects(model, tok, tiny_directions_file, alpha=alpha, corpus=str(corpus_file), num_docs=3,
                             num_tokens=33, seed=3, batch_size=3, progress=False)
    docs, _ = se.corpus_docs(tok, str(corpus_file), 3, 33, seed=3)
    baked = AutoModelForCausalLM.from_pretrained(
        str(bake(model, load_directions(tiny_directions_file), alpha, tmp_path / "baked", tokenizer=tok))).eval()
    with torch.no_grad():
        for i, doc in enumerate(docs):
            ids = torch.tensor([doc])
            base_out, baked_out = model(input_ids=ids, labels=ids), baked(input_ids=ids, labels=ids)
            assert result["per_doc"]["ce_base"][i] == pytest.approx(float(base_out.loss), abs=1e-5)
            assert result["per_doc"]["ce_steered"][i] == pytest.approx(float(baked_out.loss), abs=1e-4)
            p, q = torch.log_softmax(base_out.logits[0], -1), torch.log_softmax(baked_out.logits[0], -1)
            kl = float(F.kl_div(q, p, log_target=True, reduction="sum")) / len(doc)
            assert result["per_doc"]["kl"][i] == pytest.approx(kl, rel=1e-3, abs=1e-6)


def test_cli_writes_the_json_and_bad_input_is_one_line(tiny_model_dir, tiny_directions_file, corpus_file, tmp_path,
                                                       capsys):
    out = tmp_path / "se.json"
    main(["side-effects", "--model", str(tiny_model_dir), "--directions", str(tiny_directions_file), "--alpha", "4",
          "--corpus", str(corpus_file), "--num-docs", "2", "--num-tokens", "24", "--device", "cpu", "--quiet",
          "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["side_effects"]["num_docs"] == 2 and saved["side_effects"]["kl"] > 0
    assert saved["corpus"]["detokenized"] == "lm-eval wikitext_detokenizer" and saved["model"] == str(tiny_model_dir)
    assert "KL(base||steered)" in capsys.readouterr().out
    for args, match in ((["--corpus", str(tmp_path / "nope.raw")], "no such file"),
                        (["--num-docs", "50"], "fewer than --num-docs 50"),
                        (["--num-docs", "2", "--num-tokens", "1"], "--num-tokens 1")):
        bad_out = tmp_path / "bad.json"
        with pytest.raises(SystemExit) as exit_info:
            main(["side-effects", "--model", str(tiny_model_dir), "--directions", str(tiny_directions_file),
                  "--corpus", str(corpus_file), "--device", "cpu", "--quiet", "--out", str(bad_out)] + args)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and match in err, err
        assert not bad_out.exists()


def test_a_base_logits_cache_kept_across_calls_gives_the_same_numbers_with_one_base_pass(loaded, corpus_file):
    model, tok = loaded
    docs, _ = se.corpus_docs(tok, str(corpus_file), 5, 40, 0)
    calls = []

    def base(ids):
        calls.append(ids.shape[0])
        return model(input_ids=ids).logits

    def shifted(scale):
        return lambda ids: model(input_ids=ids).logits * scale

    cache: dict = {}
    plain = [se.measure(base, shifted(s), docs, batch_size=2) for s in (1.0, 0.7)]
    assert len(calls) == 2 * 3
    calls.clear()
    kept = [se.measure(base, shifted(s), docs, batch_size=2, base_cache=cache) for s in (1.0, 0.7)]
    assert len(calls) == 3  # the second call read all three batches from the cache
    for a, b in zip(plain, kept):
        assert a["per_doc"] == b["per_doc"]
    assert kept[1]["kl"] > 0 and kept[0]["kl"] == 0
    # other documents at the same batch positions are not answered from the cache
    other, _ = se.corpus_docs(tok, str(corpus_file), 5, 40, 1)
    calls.clear()
    fresh = se.measure(base, shifted(0.7), other, batch_size=2, base_cache=cache)
    assert len(calls) == 3 and fresh["per_doc"] == se.measure(base, shifted(0.7), other, batch_size=2)["per_doc"]


def test_the_detokenizer_equals_lm_evals_on_the_whole_wikitext_test_split():
    """side_effects.detokenize is lm-eval's WikiText detokeniser, step for step (it lives below the lm-eval glue in
    the import graph): equal to lm-eval's own function on every line of the test split and on a whole document."""
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    text = shared_data("webtext", "wikitext-2-raw-v1.test.raw").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines(keepends=True) if line.strip()]
    assert len(lines) > 2000
    changed = 0
    for line in lines:
        ours = se.detokenize(line)
        assert ours == wikitext_detokenizer({"page": line}), line
        changed += ours != line
    assert changed > 1000  # the steps do act on this text
    assert se.detokenize(text[:200000]) == wikitext_detokenizer({"page": text[:200000]})
