"""One prepared GPU check (< 8 minutes on one H100/H200, no network): realistic-shape random Llama in bf16.

  (a) hf-iti / hf time ratios, loglikelihood and greedy generation, batch 1 and 16 (targets at batch 16:
      <= 1.02 loglikelihood, <= 1.03 generation);
  (b) batched activation collection vs a batch-1 loop (target >= 10x);
  (c) batched probe fitting on the device vs the sklearn loop, 1,024 heads x d=128 x 4,700 rows (target >= 50x;
      sklearn timed on a subset of heads and extrapolated);
  (d) bf16 agreement of hf-iti (all positions), lm-eval's `steered` model with the exported .pt, and the baked model;
  (e) multi-GPU (only when torch.cuda.device_count() > 1, else reported "not run (N GPU)"): fit-directions on a small
      fp32 Llama sharded over every GPU with a device_map (layers split evenly) writes the same directions file as
      the fit on one GPU (max |diff| <= 1e-5, metadata equal), on synthetic multiple-choice data (no dataset needed).

Run:  python benchmarks/gpu_check.py            (CUDA; hidden 4096, 32 heads, 8 layers, bf16)
      python benchmarks/gpu_check.py --small    (any machine: a small shape, correctness only)
      python benchmarks/gpu_check.py --only multi-gpu   (just (e))
Prints one line per figure and, last, the JSON figures; --json PATH also writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import emit, figure, interleaved, machine, ratio as min_ratio, spread  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(shape: dict, device: str, dtype, folder: Path):
    """Random-weight Llama of ``shape`` saved to ``folder`` (weights initialised on the device for speed)."""
    from transformers import AutoModelForCausalLM

    from lm_eval_iti.tiny import build_tokenizer, tiny_config

    tok = build_tokenizer(folder, vocab_size=512)
    cfg = tiny_config("llama", vocab_size=shape["vocab"], hidden=shape["hidden"], layers=shape["layers"],
                      heads=shape["heads"], intermediate_size=shape["mlp"], num_key_value_heads=shape["heads"])
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    for module in model.modules():  # small weights so bf16 activations stay in range
        if isinstance(module, torch.nn.Linear):
            module.weight.data.normal_(0, 0.02)
    model.save_pretrained(str(folder))
    return model.eval(), tok


def requests(n, words, seed):
    import random

    rng = random.Random(seed)
    vocab = "the of a truth myth answer question model head light focus lens mirror city year party".split()
    return [("Q: " + " ".join(rng.choice(vocab) for _ in range(words + i % 7)) + "?\nA:",
             " " + " ".join(rng.choice(vocab) for _ in range(2 + i % 4))) for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="small shape (CPU-friendly; correctness, not speed)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--only", choices=("all", "multi-gpu"), default="all", help="multi-gpu: only check (e)")
    args = ap.parse_args()
    if args.only == "multi-gpu":
        print(f"machine: {machine()}")
        figures = multi_gpu_check(Path(tempfile.mkdtemp(prefix="lm_eval_iti_gpu_check_")))
        if args.json:
            Path(args.json).write_text(json.dumps({"figures": figures, "machine": machine()}, indent=2))
        emit(figures)
        return 0

    from lm_eval.api.instance import Instance
    from lm_eval.models.hf_steered import SteeredModel
    from lm_eval.models.huggingface import HFLM

    from lm_eval_iti.artifact import save_directions
    from lm_eval_iti.collect import collect_activations
    from lm_eval_iti.export import bake, export_steered
    from lm_eval_iti.harness.model import HFITI
    from lm_eval_iti.probes import fit_probes, fit_probes_sklearn
    from lm_eval_iti.tiny import random_directions

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if args.small:
        shape = dict(hidden=128, heads=4, layers=2, mlp=256, vocab=512)
        sizes = dict(ll=16, ll_words=20, gen=4, gen_tokens=8, collect=32, probe_layers=2, probe_heads=4, rows=400,
                     sk_heads=8)
    else:
        shape = dict(hidden=4096, heads=32, layers=8, mlp=11008, vocab=32000)
        sizes = dict(ll=64, ll_words=120, gen=16, gen_tokens=64, collect=512, probe_layers=32, probe_heads=32,
                     rows=5880, sk_heads=32)
    dtype = torch.bfloat16
    timing = (lambda ok: ok) if cuda else (lambda ok: None)  # speed targets are for the GPU; on CPU: n/a
    work = Path(tempfile.mkdtemp(prefix="lm_eval_iti_gpu_check_"))
    started = time.perf_counter()
    print(f"machine: {machine()}")
    print(f"shape: Llama hidden {shape['hidden']}, {shape['heads']} heads, {shape['layers']} layers, bf16, {device}")
    model, tok = build(shape, device, dtype, work / "model")
    directions = random_directions(model, num_heads=min(48, shape["layers"] * shape["heads"]), seed=0, alpha=15.0)
    dirs_file = save_directions(directions, work / "dirs.safetensors")
    figures = []

    # (a) overhead -----------------------------------------------------------------------------------------------
    common = dict(pretrained=model, tokenizer=tok, device=device, dtype="bfloat16")
    ll_reqs = [Instance("loglikelihood", None, r, i) for i, r in enumerate(requests(sizes["ll"], sizes["ll_words"], 0))]
    for bs in (1, 16):
        hf = HFLM(batch_size=bs, **common)
        iti = HFITI(batch_size=bs, directions=str(dirs_file), **common)
        try:
            # min_new_tokens: both decode the same number of steps whatever the steering does to an early EOS
            gen_reqs = [Instance("generate_until", None, (r[0], {"until": ["never-stop"], "max_gen_toks": sizes["gen_tokens"],
                                                                 "min_new_tokens": sizes["gen_tokens"]}), i)
                        for i, r in enumerate(requests(sizes["gen"] if bs > 1 else max(2, sizes["gen"] // 4), 30, 1))]

            def unhooked(fn):  # hf shares the model object: it runs without hf-iti's hooks, as stock hf would
                def run():
                    iti.intervener.remove()
                    try:
                        fn()
                    finally:
                        iti.intervener.install()
                    sync()
                return run

            ll = interleaved({"hf": unhooked(lambda: hf.loglikelihood(ll_reqs, disable_tqdm=True)),
                              "iti": lambda: (iti.loglikelihood(ll_reqs, disable_tqdm=True), sync())}, args.repeats)
            gen = interleaved({"hf": unhooked(lambda: hf.generate_until(gen_reqs, disable_tqdm=True)),
                               "iti": lambda: (iti.generate_until(gen_reqs, disable_tqdm=True), sync())}, args.repeats)
        finally:
            iti.intervener.remove()  # the model object is shared: take the hooks off again
        for kind, t, target in (("loglikelihood", ll, 1.02), ("generation", gen, 1.03)):
            ratio, moved = min_ratio(t, "iti", "hf"), spread(t, "iti", "hf")
            print(f"(a) hf-iti/hf {kind} batch {bs}: {t['iti'].min:.3f}s / {t['hf'].min:.3f}s = {ratio:.3f} "
                  f"(spread {moved:.3f})")
            at16 = bs == 16
            figures.append(figure(f"gpu_check (a) hf-iti/hf {kind} bs{bs}", ratio,
                                  f"<= {target} (GPU)" if at16 else "info", timing(ratio <= target) if at16 else None,
                                  moved))

    # (b) collection ---------------------------------------------------------------------------------------------
    prompts = [f"Q: {q[0][3:-3]} A:{q[1]}" for q in requests(sizes["collect"], 30, 2)]
    timed = {}
    acts = {}
    for bs in (16, 1):
        sync()
        t = time.perf_counter()
        acts[bs] = collect_activations(model, tok, prompts, batch_size=bs, use_cache=False, progress=False)
        sync()
        timed[bs] = time.perf_counter() - t
    ratio = timed[1] / timed[16]
    agree = float((acts[16].float() - acts[1].float()).abs().max())
    print(f"(b) collection batch-1 / batch-16: {timed[1]:.2f}s / {timed[16]:.2f}s = {ratio:.1f}x (max |diff| {agree:.3g})")
    figures.append(figure("gpu_check (b) collection batch-1 loop / batched", ratio, ">= 10x (GPU)", timing(ratio >= 10)))

    # (c) probes -------------------------------------------------------------------------------------------------
    from probes import synthetic_fold

    x, y, train, val = synthetic_fold(layers=sizes["probe_layers"], heads=sizes["probe_heads"], head_dim=128,
                                      n_train=int(sizes["rows"] * 0.8), n_val=sizes["rows"] - int(sizes["rows"] * 0.8))
    sync()
    t = time.perf_counter()
    batched = fit_probes(x.to(device), y, train, val, device=device)
    sync()
    t_batched = time.perf_counter() - t
    per_layer = sizes["probe_heads"]
    subset_layers = max(1, sizes["sk_heads"] // per_layer)
    t = time.perf_counter()
    ref = fit_probes_sklearn(x[:, :subset_layers], y, train, val, seed=42)
    t_ref = (time.perf_counter() - t) * sizes["probe_layers"] / subset_layers
    mad = float((batched.accuracy[:subset_layers].cpu() - ref.accuracy).abs().mean())
    ratio = t_ref / t_batched
    print(f"(c) probes sklearn loop / batched on {device}: {t_ref:.1f}s (extrapolated) / {t_batched:.2f}s = {ratio:.1f}x;"
          f" mean |acc diff| {mad:.4f}")
    figures.append(figure("gpu_check (c) probes sklearn loop / batched", ratio, ">= 50x (GPU)", timing(ratio >= 50)))
    figures.append(figure("gpu_check (c) probes mean |acc diff|", mad, "<= 0.01", mad <= 0.01))

    # (d) bf16 agreement -----------------------------------------------------------------------------------------
    pt = export_steered(model, directions, 15.0, work / "steer.pt")
    baked_dir = bake(model, directions, 15.0, work / "baked", tokenizer=tok)
    few = ll_reqs[:16]
    iti = HFITI(batch_size=8, directions=str(dirs_file), mc_positions="all", **common)
    s_iti = [r[0] for r in iti.loglikelihood(few, disable_tqdm=True)]
    iti.intervener.remove()
    del model
    if cuda:
        torch.cuda.empty_cache()
    s_steer = [r[0] for r in SteeredModel(pretrained=str(work / "model"), steer_path=str(pt), device=device,
                                          dtype="bfloat16", batch_size=8).loglikelihood(few, disable_tqdm=True)]
    s_baked = [r[0] for r in HFLM(pretrained=str(baked_dir), device=device, dtype="bfloat16",
                                  batch_size=8).loglikelihood(few, disable_tqdm=True)]
    scale = max(1e-6, sum(abs(v) for v in s_iti) / len(s_iti))
    for name, other in (("steered", s_steer), ("baked", s_baked)):
        rel = max(abs(a - b) for a, b in zip(s_iti, other)) / scale
        print(f"(d) bf16 max |hf-iti(all) - {name}| / mean |loglik| = {rel:.4f}")
        figures.append(figure(f"gpu_check (d) bf16 hf-iti(all) vs {name}: max rel diff", rel, "<= 0.02", rel <= 0.02))
    figures += multi_gpu_check(work)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "machine": machine()}, indent=2))
    emit(figures)
    return 0


def synthetic_mc(path: Path, questions: int = 24, seed: int = 0) -> Path:
    """An mc_task.json of made-up questions (1 true, 2 false answers each): the fit needs no downloaded dataset."""
    import random

    rng = random.Random(seed)
    words = "the of a truth myth answer question model head light focus lens mirror city year party river".split()
    rows = []
    for i in range(questions):
        q = f"Q{i}: " + " ".join(rng.choice(words) for _ in range(6)) + "?"
        answers = [" ".join(rng.choice(words) for _ in range(4)) + f" {i}{k}" for k in range(3)]
        targets = {answers[0]: 1, answers[1]: 0, answers[2]: 0}
        rows.append({"question": q, "mc1_targets": targets, "mc2_targets": dict(targets)})
    path.write_text(json.dumps(rows))
    return path


def multi_gpu_check(work: Path, shards: list | None = None, single: str = "cuda:0") -> list[dict]:
    """(e): a device_map over every GPU gives the single-GPU directions file; "not run (N GPU)" below two GPUs.
    ``shards``/``single`` (tests): the devices to shard over and the one to compare with (default: every GPU, cuda:0)."""
    count = torch.cuda.device_count()
    name = "gpu_check (e) multi-GPU device_map fit vs one GPU: max |diff|"
    if shards is None and count < 2:
        note = f"not run ({count} GPU)"
        print(f"(e) multi-GPU fit: {note}")
        return [figure(name, None, "<= 1e-5", None, note=note)]
    shards = shards if shards is not None else list(range(count))
    from safetensors import safe_open

    from lm_eval_iti.fit import fit_and_save

    shape = dict(hidden=256, heads=8, layers=8, mlp=512, vocab=512)
    folder = work / "multi_gpu_model"
    build(shape, "cpu", torch.float32, folder)
    data = synthetic_mc(work / "mc_task.json")
    layers = shape["layers"]
    device_map = {"model.embed_tokens": shards[0], "model.rotary_emb": shards[-1], "model.norm": shards[-1],
                  "lm_head": shards[-1]}
    device_map.update({f"model.layers.{i}": shards[i * len(shards) // layers] for i in range(layers)})
    common = dict(data_dir=data, num_heads=6, sigma_data="mc", dtype="float32", progress=False, write_plot=False,
                  use_cache=False, batch_size=8)
    torch.backends.cuda.matmul.allow_tf32 = False  # the same fp32 arithmetic on every GPU
    one = fit_and_save(str(folder), work / "one_gpu.safetensors", device=single, **common)
    sharded = fit_and_save(str(folder), work / "sharded.safetensors", device_map=device_map, **common)
    files = []
    for p in (one.out, sharded.out):
        with safe_open(str(p), framework="pt") as fh:
            files.append(({k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()))
    diff = max(float((files[0][0][k].double() - files[1][0][k].double()).abs().max()) for k in files[0][0])
    same_meta = files[0][1] == files[1][1] and files[0][0].keys() == files[1][0].keys()
    used = sorted({str(v) for v in device_map.values()})
    print(f"(e) multi-GPU fit over devices {', '.join(used)} vs {single}: max |diff| {diff:.3g}, metadata equal: "
          f"{same_meta}")
    return [figure(name, diff, "<= 1e-5", diff <= 1e-5 and same_meta)]


if __name__ == "__main__":
    sys.exit(main())
