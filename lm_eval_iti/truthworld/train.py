"""Train the truth-world model: a small Llama on fresh documents every step, fixed seed, fixed step count.

Documents of step s come from ``step_rng(seed, s)`` and the weights from ``torch.manual_seed(seed)``, so a run is a
pure function of (world config, model config, train config) on a given torch build; an interrupted run resumes from
its last snapshot (``<out>/.resume``) to the same result. Optionally, every ``probe_every`` steps, a cheap check
prints how linearly readable truth is at the statement's final ``.`` in each head (the position fit-directions
probes), so bad designs can be stopped early.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path, write_json_atomic, write_text_atomic
from ..errors import ITIError
from .generator import World, WorldConfig, build_world, sample_document, statement, step_rng
from .tokenizer import build_tokenizer


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 128
    layers: int = 4
    heads: int = 8
    intermediate: int = 384
    max_positions: int = 256


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 150
    weight_decay: float = 0.01
    threads: int = 1  # one thread: with 2+ OpenMP threads on a shared, busy CPU a step can stall 100x
    save_every: int = 250
    probe_every: int = 0


def llama_config(vocab_size: int, shape: ModelConfig):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                       num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                       intermediate_size=shape.intermediate, max_position_embeddings=shape.max_positions,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
                       attention_bias=False, rope_theta=10000.0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch_for_step(world: World, tokenizer, seed: int, step: int, batch_size: int):
    rng = step_rng(seed, step)
    texts = [sample_document(world, rng).text for _ in range(batch_size)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    return enc["input_ids"], enc["attention_mask"], labels


# resume snapshots (safetensors + json, never pickles) ---------------------------------------------------------------
def _save_snapshot(folder: Path, model, optimizer, step: int, fingerprint: str) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}  # tied weights: copies
    for pid, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).detach().contiguous()
    with atomic_path(folder / "snapshot.safetensors", suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(folder / "snapshot.json", {"step": step, "fingerprint": fingerprint})


def _load_snapshot(folder: Path, model, optimizer, fingerprint: str) -> int:
    from safetensors.torch import load_file

    meta_path = folder / "snapshot.json"
    if not meta_path.is_file():
        return 0
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fingerprint:
        raise ITIError(f"{folder}: a resume snapshot of another configuration is here; remove the folder or use another out=")
    tensors = load_file(str(folder / "snapshot.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state = optimizer.state_dict()
    for pid in list(state["state"].keys()) or range(len(list(model.parameters()))):
        entry = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            name = f"optim.{pid}.{key}"
            if name in tensors:
                entry[key] = tensors[name]
        if entry:
            state["state"][pid] = entry
    optimizer.load_state_dict(state)
    return int(meta["step"])


# cheap linear-readability check -------------------------------------------------------------------------------------
@torch.no_grad()
def head_activations_at_last_token(model, tokenizer, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
    """[N, layers, heads, head_dim] input of every o_proj at each prompt's last real token."""
    from ..architectures import model_shape, out_projections

    shape = model_shape(model)
    projections = out_projections(model)
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start:start + batch_size], padding=True, return_tensors="pt")
        last = enc["attention_mask"].sum(1) - 1
        grabbed = []

        def hook(module, args, _store=grabbed):
            x = args[0]
            _store.append(x[torch.arange(x.shape[0]), last])

        handles = [p.register_forward_pre_hook(hook) for p in projections]
        try:
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        finally:
            for h in handles:
                h.remove()
        out.append(torch.stack(grabbed, 1).view(len(last), shape.num_layers, shape.num_heads, shape.head_dim))
    return torch.cat(out).float()


def truth_readability(model, tokenizer, world: World, seed: int = 0) -> np.ndarray:
    """Held-out accuracy [layers, heads] of a logistic probe for "the statement is true" at its final ``.``."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng([seed, 3])
    prompts, labels, ents = [], [], []
    for e in range(len(world.entities)):
        wrong = world.myth[e] if world.is_myth(e) else world.distractors[e][0]
        for colour, label in ((world.truth[e], 1), (wrong, 0)):
            prompts.append(statement(world, e, colour))
            labels.append(label)
            ents.append(e)
    acts = head_activations_at_last_token(model, tokenizer, prompts).numpy()
    y = np.asarray(labels)
    test_entities = set(rng.permutation(len(world.entities))[: len(world.entities) // 2].tolist())
    test = np.asarray([e in test_entities for e in ents])
    L, H = acts.shape[1:3]
    acc = np.zeros((L, H))
    for layer in range(L):
        for head in range(H):
            x = acts[:, layer, head]
            clf = LogisticRegression(max_iter=500).fit(x[~test], y[~test])
            acc[layer, head] = clf.score(x[test], y[test])
    return acc


# training ---------------------------------------------------------------------------------------------------------
def fingerprint(world_cfg: WorldConfig, model_cfg: ModelConfig, train_cfg: TrainConfig) -> str:
    import hashlib

    keep = {k: v for k, v in asdict(train_cfg).items() if k not in ("threads", "save_every", "probe_every")}
    blob = json.dumps([world_cfg.recorded(), asdict(model_cfg), keep], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def train(out_dir: str | Path, world_cfg: WorldConfig = WorldConfig(), model_cfg: ModelConfig = ModelConfig(),
          train_cfg: TrainConfig = TrainConfig(), command: str | None = None, progress: bool = True,
          log=print) -> Path:
    """Train and write a Hugging Face model folder (safetensors, tokenizer, world.json, PROVENANCE.json/.md)."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    if train_cfg.steps < 1:
        raise ITIError(f"steps={train_cfg.steps} must be at least 1")
    if train_cfg.batch_size < 1:
        raise ITIError(f"batch_size={train_cfg.batch_size} must be at least 1")
    if model_cfg.hidden % model_cfg.heads:
        raise ITIError(f"hidden={model_cfg.hidden} is not a multiple of heads={model_cfg.heads}")
    torch.set_num_threads(max(1, train_cfg.threads))
    world = build_world(world_cfg)
    tokenizer = build_tokenizer(world)
    torch.manual_seed(train_cfg.seed)
    model = AutoModelForCausalLM.from_config(llama_config(len(tokenizer), model_cfg), dtype=torch.float32)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": train_cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=train_cfg.lr, betas=(0.9, 0.98))
    resume_dir = out / ".resume"
    fp = fingerprint(world_cfg, model_cfg, train_cfg)
    start = _load_snapshot(resume_dir, model, optimizer, fp)
    if start:
        log(f"resuming at step {start} from {resume_dir}")
    model.train()
    bar = tqdm(range(start, train_cfg.steps), initial=start, total=train_cfg.steps, desc="truthworld train",
               disable=not progress, mininterval=2.0)
    t0 = time.time()
    loss_ema = None
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, train_cfg)
        ids, mask, labels = batch_for_step(world, tokenizer, train_cfg.seed, step, train_cfg.batch_size)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
        bar.set_postfix(loss=f"{loss_ema:.4f}")
        done = step + 1
        if train_cfg.probe_every and (done % train_cfg.probe_every == 0 or done == train_cfg.steps):
            model.eval()
            acc = truth_readability(model, tokenizer, world)
            model.train()
            log(f"step {done}: loss {loss_ema:.4f}; best head truth-probe accuracy at '.': {acc.max():.3f} "
                f"(per layer max {np.round(acc.max(1), 3).tolist()})")
        if done % train_cfg.save_every == 0 and done < train_cfg.steps:
            _save_snapshot(resume_dir, model, optimizer, done, fp)
    elapsed = time.time() - t0
    model.eval()
    _write_checkpoint(out, model, tokenizer, world, model_cfg, train_cfg, command, elapsed, loss_ema, start, fp)
    shutil.rmtree(resume_dir, ignore_errors=True)
    return out


def _write_checkpoint(out: Path, model, tokenizer, world: World, model_cfg, train_cfg, command, elapsed, loss, start,
                      config_fingerprint: str):
    """Write into a temp folder beside ``out``, then swap it in (no half-written checkpoint is ever visible)."""
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt.", dir=out))
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    write_json_atomic(tmp / "world.json", {**world.to_json(), "data_hash": world.data_hash()})
    weights = tmp / "model.safetensors"
    from ..artifact import file_sha256

    provenance = {
        "command": command or "lm-eval-iti truthworld train " + " ".join(sys.argv[1:]),
        "seed": train_cfg.seed,
        "steps": train_cfg.steps,
        "world": world.config.recorded(),
        "model": asdict(model_cfg),
        "train": asdict(train_cfg),
        "config_fingerprint": config_fingerprint,  # fingerprint(world, model, train): what resume and the tests compare
        "data_hash": world.data_hash(),
        "weights_sha256": file_sha256(weights),
        "final_loss_ema": loss,
        "train_seconds": round(elapsed, 1),
        "resumed_from_step": start,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "source": "lm_eval_iti/truthworld/train.py (the project's own script is the only source of these weights)",
    }
    write_json_atomic(tmp / "PROVENANCE.json", provenance)
    md = ["# Truth-world checkpoint provenance", "",
          f"- command: `{provenance['command']}`", f"- seed: {train_cfg.seed}", f"- steps: {train_cfg.steps}",
          f"- data hash (world definition sha256): `{provenance['data_hash']}`",
          f"- weights sha256: `{provenance['weights_sha256']}`",
          f"- training time: {provenance['train_seconds']} s on {platform.machine()} with {train_cfg.threads} threads",
          f"- torch {torch.__version__}", "", "Documents are regenerated from the seed at every step; no data file exists."]
    write_text_atomic(tmp / "PROVENANCE.md", "\n".join(md) + "\n")
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    tmp.rmdir()
