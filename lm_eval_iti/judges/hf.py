"""The local judge: a transformers causal LM (e.g. AllenAI's Llama-2 truth/info judges), batched.

Score = P(" yes" | prompt), the probability of the judges' training completion, with the same >= 0.5 rule as the
API judge. How " yes" is tokenized: like lm-eval's ``_encode_pair``, ``prompt + " yes"`` is encoded as a whole
and the tokens after the prompt's are the continuation, so SentencePiece ("▁yes", Llama) and byte-level BPE
("Ġyes") are handled alike and the prompt's tokens are exactly those of ``prompt + " yes"``. If " yes" spans
several tokens, P is the product of their conditional probabilities (exp of the summed log-probs).
Sequences are right-padded (real tokens keep positions 0..n-1) and scored in float32.

A judge is a hub id, a local folder, a ``.gguf`` file or a named model (``lm_eval_iti.gguf.KNOWN_MODELS``, e.g.
``smollm2-135m-instruct``); GGUF weights are read from the dequantized-weights cache. The cache identity
(:meth:`HFJudge.identity`) is the resolved hub commit, or the sha256 of the folder's files (of the GGUF file),
plus the dtype the judge runs in.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ITIError
from .config import JudgeConfig, is_local_path
from .prompts import Item, completion_prompt
from .scoring import Judgment, failed, judgment_from_logprob

CONTINUATION = " yes"


def gguf_source(model: str):
    """The GGUF source of a named model or a ``.gguf`` path (ITIError if it is missing), else None."""
    from .. import gguf

    if model in gguf.KNOWN_MODELS or model.lower().endswith(".gguf"):
        return gguf.resolve_model(model)
    return None


def resolved_dtype(cfg: JudgeConfig) -> tuple[str, str]:
    """(device, dtype) the judge runs in: ``auto`` is bfloat16 on CUDA and float32 elsewhere."""
    import torch

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


def folder_sha256(folder: Path) -> str:
    """One sha256 over the names and contents of a model folder's files (weights, config, tokenizer)."""
    import hashlib

    from ..gguf import gguf_sha256  # a memoized file hash

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{path.name}\x00{gguf_sha256(path)}\n".encode())
    return digest.hexdigest()


def hub_commit(model: str, revision: str) -> str:
    """The commit a hub id and revision resolve to (from the local hub cache when offline)."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model, "config.json", revision=revision or None)).parent.name
    except Exception as exc:  # noqa: BLE001 - any failure means the commit is unknown
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ITIError(f"judge=hf: cannot resolve the commit of {model!r} ({first[:160]})") from None


def weights_identity(model: str, revision: str) -> str:
    """What the judge's weights are: ``gguf:sha256:…``, ``files:sha256:…`` of a folder, or ``commit:…``."""
    source = gguf_source(model)
    if source is not None:
        from ..gguf import gguf_identity

        return gguf_identity(source.gguf_path)
    if is_local_path(model):
        return "files:sha256:" + folder_sha256(Path(model).expanduser())
    return "commit:" + hub_commit(model, revision)


def check_model(cfg: JudgeConfig) -> None:
    """Before any generation: each judge is a local folder with a config.json, a GGUF file or named model, or a
    hub id already available."""
    for kind in ("truth", "info"):
        model, revision = cfg.judge_for(kind)
        if gguf_source(model) is not None:
            continue
        if is_local_path(model):
            path = Path(model).expanduser()
            if not (path / "config.json").is_file():
                raise ITIError(f"judge=hf: {kind}_judge={model}: no such model folder (config.json not found)")
            continue
        try:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(model, revision=revision or None)
        except Exception as exc:  # noqa: BLE001 - any failure means the model cannot be loaded
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ITIError(f"judge=hf: {kind}_judge={model!r}: cannot load its config ({first[:160]})") from None


def split_continuation(tokenizer, prompt: str, continuation: str = CONTINUATION) -> tuple[list[int], list[int]]:
    """(prompt ids, continuation ids) from the encoding of ``prompt + continuation`` (lm-eval's rule)."""
    whole = tokenizer(prompt + continuation)["input_ids"]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    return list(whole[:n_prompt]), list(whole[n_prompt:])


class HFJudge:
    backend = "hf"
    continuation = CONTINUATION

    def __init__(self, kind: str, cfg: JudgeConfig, model=None, tokenizer=None):
        self.kind, self.cfg = kind, cfg
        self.model_id, self.revision = cfg.judge_for(kind)
        self.model = self.model_id  # the cache key's model id
        self.name = f"{kind} judge {self.model_id!r} (hf)"
        self._model, self._tokenizer = model, tokenizer
        self._owned = model is None  # close() frees only what it loaded
        self._identity: str | None = None

    def identity(self) -> str:
        """The cache identity: the weights (hub commit, or sha256 of the files) and the dtype."""
        if self._identity is None:
            _, dtype = resolved_dtype(self.cfg)
            self._identity = json.dumps({"weights": weights_identity(self.model_id, self.revision), "dtype": dtype},
                                        sort_keys=True)
        return self._identity

    def request_text(self, item: Item) -> str:
        return completion_prompt(self.kind, item.question, item.answer)

    def _load(self):
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device, dtype = resolved_dtype(self.cfg)
        source = str(self.model_id)
        revision = self.revision or None
        try:
            gguf = gguf_source(source)
            if gguf is not None:
                from ..gguf import dequantized_folder

                source, revision = str(dequantized_folder(gguf)), None
            self._tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
            self._model = AutoModelForCausalLM.from_pretrained(source, revision=revision,
                                                               dtype=getattr(torch, dtype)).to(device).eval()
        except ITIError:
            raise
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise ITIError(f"judge=hf: cannot load {self.kind}_judge={self.model_id!r} ({first})") from None

    @property
    def device(self):
        return next(self._model.parameters()).device

    def score_batch(self, prompts: list[str]) -> list[Judgment]:
        """One forward for the whole list (callers cut it to ``batch_size``)."""
        import torch

        self._load()
        pairs = [split_continuation(self._tokenizer, p, self.continuation) for p in prompts]
        out: list[Judgment | None] = [None] * len(prompts)
        rows = []
        for i, (ctx, cont) in enumerate(pairs):
            if not ctx or not cont:
                out[i] = failed("the prompt or ' yes' encodes to no tokens")
            else:
                rows.append((i, ctx + cont[:-1], len(ctx), cont))
        if rows:
            width = max(len(ids) for _, ids, _, _ in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (_, seq, _, _) in enumerate(rows):
                ids[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = 1
            with torch.no_grad():
                logits = self._model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for r, (i, _, n_ctx, cont) in enumerate(rows):
                positions = torch.arange(n_ctx - 1, n_ctx - 1 + len(cont), device=logprobs.device)
                picked = logprobs[r, positions, torch.tensor(cont, device=logprobs.device)]
                out[i] = judgment_from_logprob(float(picked.sum()))
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Free the judge's weights (the two judges are loaded one after the other)."""
        if not self._owned:
            return
        self._model = None
        self._tokenizer = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
