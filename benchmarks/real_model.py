"""Real-model figures on SmolLM2-135M-Instruct (the packaged GGUF, dequantized to fp32), on this machine's CPU/GPU.

(a) fit-directions wall time / its floor. The fit: ``fit_and_save`` on the first --questions TruthfulQA v0 questions,
    --num-folds 2 --fold 0, batch 16, a fresh activation cache each run (so it collects and writes it), probes,
    heatmap and files included. The floor: the forward passes of the prompts that fit needs (the probe and sigma prompts
    of its training questions, one pass per prompt), in the same length-sorted batches and padding, up to the last
    activation the fit reads (the input of the last layer's attention output projection, where collection also stops),
    with nothing captured, in the same process. The ratio is what everything else costs: tokenising, capturing,
    the cache, probes, heads, directions, sigma, the heatmap and the files.
(b) hf-iti's cost on the same requests: loglikelihood (TruthfulQA MC prompts: instruction-free 6-shot primer +
    question, ~200 tokens, answer continuations, batch 16, mc_positions=answer) and greedy generation (the same
    prompts, 32 new tokens, batch 8) for every gen_positions mode, each against the SAME hf-iti instance with no edit
    (an alpha-0 intervener: no hook, HFLM's own path). A separate hf instance is timed too, and a second one (A/A):
    two identical instances differed by up to 9% on this machine, so they are context, not the judged ratio.
(c) the per-decode-step cost of the hooks: one decode step (batch 8, after a 200-token prompt) with hf-iti's hooks in a
    generation phase (every hooked layer adds its vector) / the same step with no hooks.
Every timing is interleaved with its alternative; a ratio is min/min over the repeats, the spread is (max-min)/min of
the per-repeat ratios. With the model or the data missing, each figure is a "not run: <reason>" row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, figure, interleaved, machine, not_run, ratio, spread  # noqa: E402

MODEL = "smollm2-135m-instruct"
GEN_MODES = ("last", "generated", "all")
FIT_TARGET, OVERHEAD_TARGET = 1.2, 1.03


def figure_names(questions: int, requests: int, gen_tokens: int) -> dict[str, str]:
    names = {"fit": f"SmolLM2: fit-directions / floor ({questions} questions, fold 0 of 2, bs16)",
             "ll": f"SmolLM2: hf-iti / same instance without edit, loglikelihood ({requests} MC requests, bs16)"}
    for mode in GEN_MODES:
        names[f"gen {mode}"] = (f"SmolLM2: hf-iti / same instance without edit, generation gen_positions={mode} "
                                f"(8 x {gen_tokens} tok, bs8)")
    names["gen aa"] = f"SmolLM2: hf/hf generation, a second identical instance (the A/A noise; 8 x {gen_tokens} tok)"
    names["step"] = "SmolLM2: decode step with hooks / without (bs8)"
    return names


def targets() -> dict[str, str]:
    out = {"fit": f"<= {FIT_TARGET}", "ll": f"<= {OVERHEAD_TARGET}", "step": f"<= {OVERHEAD_TARGET}"}
    out.update({f"gen {m}": f"<= {OVERHEAD_TARGET}" for m in GEN_MODES})
    out["gen aa"] = "report"
    return out


def shared_data() -> Path:
    return Path(os.environ.get("LM_EVAL_ITI_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def mc_requests(docs: list[dict], n: int) -> list[tuple[str, str]]:
    """(context, continuation) pairs as the truthfulqa_iti MC tasks build them (instruction none)."""
    from lm_eval_iti.prompts import QA_PRIMER

    out = []
    for doc in docs:
        for choice in doc["mc2_targets"]["choices"]:
            out.append((f"{QA_PRIMER}\n\nQ: {doc['question']}\nA:", f" {choice}"))
    return out[:n]


def fit_floor_batches(tok, v0: Path, questions: int, batch_size: int, chunk_size: int = 512) -> list[list[list[int]]]:
    """The token batches the fit forwards: its training questions' probe and sigma prompts, chunked and sorted as
    collect.py does (rebuilt here from the prompt sets, not read from the fit)."""
    from lm_eval_iti.collect import _batches, tokenize_prompts
    from lm_eval_iti.data import load_generation, load_mc
    from lm_eval_iti.fit import fit_split
    from lm_eval_iti.folds import fold_assignment
    from lm_eval_iti.prompts import gen_end_q_prompt_set, mc_prompt_set

    docs = load_mc(v0)[:questions]
    names = [d["question"] for d in docs]
    fit_q = fit_split(names, 2, 0, 42)[0]
    sets = [mc_prompt_set(docs), gen_end_q_prompt_set(docs, load_generation(v0), 42, groups=fold_assignment(names, 2, 42))]
    batches = []
    for prompt_set in sets:
        needed = prompt_set.subset(prompt_set.rows_of_questions(fit_q))
        tokens = tokenize_prompts(tok, needed.prompts, needed.add_special_tokens)
        for start in range(0, len(tokens), chunk_size):
            rows = range(start, min(start + chunk_size, len(tokens)))
            batches += [[tokens[r] for r in batch] for batch in _batches(tokens, rows, batch_size)]
    return batches


def padded(batch: list[list[int]], pad_id: int):
    import torch

    width = max(len(r) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


def measure_fit(model, tok, v0: Path, questions: int, repeats: int, work: Path) -> tuple[float, float, str]:
    import torch

    from lm_eval_iti.architectures import out_projections
    from lm_eval_iti.fit import fit_and_save

    device = model.get_input_embeddings().weight.device
    batches = fit_floor_batches(tok, v0, questions, 16)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    runs = {"n": 0, "result": None}

    def fit():
        runs["n"] += 1
        runs["result"] = fit_and_save(model, work / "dirs.safetensors", tokenizer=tok, data_dir=v0,
                                        num_questions=questions, num_folds=2, fold=0, batch_size=16,
                                        cache_dir=work / f"cache{runs['n']}", progress=False)

    class Stop(Exception):
        pass

    def stop(module, args):
        raise Stop

    @torch.no_grad()
    def floor():
        handle = out_projections(model)[-1].register_forward_pre_hook(stop)
        try:
            for batch in batches:
                ids, mask = padded(batch, pad_id)
                try:
                    model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                except Stop:
                    pass
        finally:
            handle.remove()

    t = interleaved({"fit": fit, "floor": floor}, repeats=repeats, warmup=0)
    result = runs["result"]
    prompts = sum(len(b) for b in batches)
    forwarded = sum(s.prompts_forwarded for s in result.collect_stats.values())
    if forwarded != prompts or result.forward_passes != len(batches):
        raise SystemExit(f"the floor's prompts ({prompts} in {len(batches)} batches) are not the fit's "
                         f"({forwarded} in {result.forward_passes})")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    detail = (f"fit {t['fit'].min:.1f}s (median {t['fit'].median:.1f}s) vs floor {t['floor'].min:.1f}s "
              f"(median {t['floor'].median:.1f}s) for {prompts} prompts in {len(batches)} forwards; last fit: {timings}")
    return ratio(t, "fit", "floor"), spread(t, "fit", "floor"), detail


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=40, help="TruthfulQA questions of the fit (fold 0 of 2 of them)")
    ap.add_argument("--fit-repeats", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--requests", type=int, default=32, help="loglikelihood requests")
    ap.add_argument("--gen-tokens", type=int, default=32, help="new tokens per generation request")
    args = ap.parse_args()
    names, want = figure_names(args.questions, args.requests, args.gen_tokens), targets()

    from lm_eval_iti.errors import ITIError
    from lm_eval_iti.gguf import dequantized_folder, require_gguf_package, resolve_model

    try:
        require_gguf_package()
        source = resolve_model(MODEL)
    except ITIError as exc:
        print(f"real model: not run: {exc}")
        emit([not_run(names[k], want[k], str(exc)) for k in names])
        return

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_iti.artifact import save_directions
    from lm_eval_iti.data import load_mc
    from lm_eval_iti.intervene import Intervener
    from lm_eval_iti.loading import load_model
    from lm_eval_iti.harness.model import HFITI
    from lm_eval_iti.tiny import random_directions

    print(f"machine: {machine()}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_model(MODEL, dtype="float32", device=device, progress=False)
    folder = dequantized_folder(source)
    v0 = shared_data() / "truthfulqa" / "v0"
    work = Path(tempfile.mkdtemp(prefix="lm_eval_iti_real_bench_"))
    figures = {}

    # (a) fit-directions vs its floor
    if v0.is_dir():
        r, s, detail = measure_fit(model, tok, v0, args.questions, args.fit_repeats, work)
        print(f"(a) {detail}\n    ratio {r:.3f} (spread {s:.3f})")
        figures["fit"] = figure(names["fit"], r, want["fit"], r <= FIT_TARGET, s)
        docs = load_mc(v0)[:20]
    else:
        reason = f"TruthfulQA v0 not found at {v0}"
        figures["fit"] = not_run(names["fit"], want["fit"], reason)
        docs = [{"question": "Where were the 1992 Olympics held?",
                 "mc2_targets": {"choices": [f"In city number {i}." for i in range(40)]}}]

    # (b) hf-iti / hf: directions of SmolLM2's shape (48 heads); the cost does not depend on which heads or alpha
    dirs = save_directions(random_directions(model, num_heads=48, seed=0, alpha=5.0), work / "random.safetensors")
    common = dict(device=device, dtype="float32")
    hf = HFLM(pretrained=str(folder), batch_size=16, **common)
    iti = HFITI(pretrained=MODEL, directions=str(dirs), batch_size=16, **common)
    pairs = mc_requests(docs, args.requests)
    ll_reqs = [Instance("loglikelihood", None, p, i) for i, p in enumerate(pairs)]
    contexts = sorted({c for c, _ in pairs})[:8]
    contexts += [contexts[-1] + f" ({i})" for i in range(8 - len(contexts))]
    # min_new_tokens = max_gen_toks: every variant decodes the same number of steps (steering may move an early EOS)
    gen_kwargs = {"until": ["never-stop"], "max_gen_toks": args.gen_tokens, "min_new_tokens": args.gen_tokens}
    gen_reqs = [Instance("generate_until", None, (c, dict(gen_kwargs)), i) for i, c in enumerate(contexts)]
    # The judged ratios compare hf-iti with its hooks against the SAME instance with no edit (an alpha-0 intervener:
    # no hook, no plan, HFLM's own code path). Two identical HFLM instances differed by up to 9% here (the A/A row
    # below), which is weight placement, not hook cost; a second instance as the denominator cannot resolve 3%.
    def unedited(fn):
        def run():
            real = iti.intervener
            real.remove()
            iti.intervener = Intervener(iti.model, iti.directions, 0.0)
            try:
                fn()
            finally:
                iti.intervener = real.install()
        return run

    def hf_ll():
        hf.loglikelihood(ll_reqs, disable_tqdm=True)

    def iti_ll():
        iti.loglikelihood(ll_reqs, disable_tqdm=True)

    ll = interleaved({"hf": hf_ll, "hf-iti": iti_ll, "no edit": unedited(iti_ll)}, repeats=args.repeats)
    r, s = ratio(ll, "hf-iti", "no edit"), spread(ll, "hf-iti", "no edit")
    print(f"(b) loglikelihood: hf-iti {ll['hf-iti'].min:.2f}s  same instance without edit {ll['no edit'].min:.2f}s  "
          f"ratio {r:.3f} (spread {s:.3f}); separate hf instance {ll['hf'].min:.2f}s "
          f"(ratio {ratio(ll, 'hf-iti', 'hf'):.3f})")
    figures["ll"] = figure(names["ll"], r, want["ll"], r <= OVERHEAD_TARGET, s,
                           note=f"hf-iti / a separate hf instance: {ratio(ll, 'hf-iti', 'hf'):.3f}")

    def generate(mode):
        def run():
            iti.gen_positions = mode
            iti.generate_until(gen_reqs, disable_tqdm=True)
        return run

    hf_again = HFLM(pretrained=str(folder), batch_size=16, **common)
    fns = {"hf": lambda: hf.generate_until(gen_reqs, disable_tqdm=True),
           "hf again": lambda: hf_again.generate_until(gen_reqs, disable_tqdm=True),
           "no edit": unedited(generate("last"))}
    fns.update({mode: generate(mode) for mode in GEN_MODES})
    gen = interleaved(fns, repeats=args.repeats)
    aa = ratio(gen, "hf again", "hf")
    print(f"(b) generation A/A: hf {gen['hf'].min:.2f}s  hf again {gen['hf again'].min:.2f}s  ratio {aa:.3f}")
    figures["gen aa"] = figure(names["gen aa"], aa, want["gen aa"], None, spread(gen, "hf again", "hf"))
    for mode in GEN_MODES:
        r, s = ratio(gen, mode, "no edit"), spread(gen, mode, "no edit")
        print(f"(b) generation gen_positions={mode}: hf-iti {gen[mode].min:.2f}s  same instance without edit "
              f"{gen['no edit'].min:.2f}s  ratio {r:.3f} (spread {s:.3f}); separate hf instance {gen['hf'].min:.2f}s")
        figures[f"gen {mode}"] = figure(names[f"gen {mode}"], r, want[f"gen {mode}"], r <= OVERHEAD_TARGET, s,
                                        note=f"hf-iti / a separate hf instance: {ratio(gen, mode, 'hf'):.3f}")

    # (c) one decode step with and without the hooks, on the hf-iti model's weights
    from transformers import DynamicCache

    intervener = Intervener(model, iti.directions, 5.0)
    ids = tok([contexts[0]] * 8, return_tensors="pt")["input_ids"].to(device)

    with torch.no_grad():  # one prefill; every timed step then sees the same cache length (cropped back after it)
        cache = DynamicCache(config=model.config)
        token = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)

    @torch.no_grad()
    def steps(n=16):
        for _ in range(n):
            model(input_ids=token, past_key_values=cache, use_cache=True)
            cache.crop(-1)  # drop the step's token again

    def hooked():
        intervener.install()
        try:
            with intervener.generation("all"):
                steps()
        finally:
            intervener.remove()

    step = interleaved({"none": steps, "hooks": hooked}, repeats=args.repeats)
    r, s = ratio(step, "hooks", "none"), spread(step, "hooks", "none")
    print(f"(c) 16 decode steps: none {step['none'].min:.3f}s  hooks ({len(intervener.vectors)} layers) "
          f"{step['hooks'].min:.3f}s  ratio {r:.3f} (spread {s:.3f})")
    figures["step"] = figure(names["step"], r, want["step"], r <= OVERHEAD_TARGET, s)
    emit([figures[k] for k in names])


if __name__ == "__main__":
    main()
