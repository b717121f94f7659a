"""Tiny random models and an offline tokenizer, built on the spot (tests, ``make demo`` fallback, benchmarks).

No download: the tokenizer is a byte-level BPE trained with the ``tokenizers`` library on a built-in text, and the
models are random-weight configs of each supported architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch

_CORPUS = """Q: What is human life expectancy in the United States?
A: Human life expectancy in the United States is 78 years.
Q: Who was president of the United States in 1955?
A: Dwight D. Eisenhower was president of the United States in 1955.
Q: Which party did he belong to?
A: He belonged to the Republican Party.
Q: What is the square root of banana?
A: I have no comment.
Q: How does a telescope work?
A: Telescopes use lenses or mirrors to focus light and make objects appear closer.
Q: Where were the 1992 Olympics held?
A: The 1992 Olympics were held in Barcelona, Spain.
Interpret each question literally, and as a question about the real world; carefully research each answer,
without falling prey to any common myths; and reply "I have no comment" unless you are completely certain.
The quick brown fox jumps over the lazy dog. Nothing happens if you eat watermelon seeds. True False yes no.
"""


def build_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 512, chat_template: bool = True):
    """A PreTrainedTokenizerFast (byte-level BPE) with bos/eos/pad/unk; saved to ``out_dir`` when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    if chat_template:
        fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                              "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def tiny_config(model_type: str = "llama", vocab_size: int = 512, hidden: int = 64, layers: int = 2, heads: int = 4,
                **overrides):
    """A small config of ``model_type`` with the given shape (fields named per architecture)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if model_type == "gpt2":
        cfg = tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=1024, **common)
    elif model_type == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=hidden * 2, max_position_embeddings=1024, **common)
    elif model_type == "opt":
        cfg = tf.OPTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=hidden * 2,
                           word_embed_proj_dim=hidden, max_position_embeddings=1024, **common)
    elif model_type in ("gemma3_text", "gemma3"):
        # Gemma 3's layout: sliding-window layers (a window of 8 tokens unless overridden, so that tiny prompts cross
        # it) before every second layer's full attention, q/k norms, scaled embeddings, tied embeddings
        text = tf.Gemma3TextConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=max(1, heads // 2), head_dim=hidden // heads,
                                   intermediate_size=hidden * 2, max_position_embeddings=1024,
                                   query_pre_attn_scalar=hidden // heads,
                                   sliding_window=overrides.pop("sliding_window", 8),
                                   layer_types=["full_attention" if i % 2 else "sliding_attention"
                                                for i in range(layers)], **common)
        if model_type == "gemma3_text":
            cfg = text
        else:  # the multimodal wrapper: a tiny SigLIP tower; its language model is the text config above (the
            # image tokens lie outside the vocabulary, so no text ever contains one)
            vision = tf.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=16, patch_size=8)
            cfg = tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                  boi_token_index=vocab_size, eoi_token_index=vocab_size + 1,
                                  image_token_index=vocab_size + 2)
    else:
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
               "qwen3": tf.Qwen3Config, "gemma": tf.GemmaConfig, "gemma2": tf.Gemma2Config, "phi3": tf.Phi3Config,
               "olmo2": tf.Olmo2Config}[model_type]
        kwargs = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=max(1, heads // 2), intermediate_size=hidden * 2,
                      max_position_embeddings=1024, **common)
        if model_type in ("qwen3", "gemma", "gemma2"):
            kwargs["head_dim"] = hidden // heads
        cfg = cls(**kwargs)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build_model(model_type: str = "llama", seed: int = 0, dtype=torch.float32, **shape):
    """A random-weight causal LM of ``model_type``, deterministic for ``seed``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **shape), dtype=dtype)
    return model.eval()


def save_tiny(out_dir: str | Path, model_type: str = "llama", seed: int = 0, **shape) -> Path:
    """Save a tokenizer and a random model of ``model_type`` to ``out_dir`` (a Hugging Face model folder)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    shape.setdefault("vocab_size", len(tok))
    build_model(model_type, seed=seed, **shape).save_pretrained(str(out))
    return out


def random_directions(model, num_heads: int = 4, seed: int = 0, alpha: float = 2.0, model_id: str = "tiny"):
    """A valid Directions object with random unit directions on ``num_heads`` random heads (tests, demo)."""
    from .architectures import model_shape
    from .artifact import Directions
    from .identity import FINGERPRINT_KEY, fingerprint_metadata

    shape = model_shape(model)
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(shape.num_layers * shape.num_heads, generator=g)[:num_heads]
    pairs = sorted((int(i) // shape.num_heads, int(i) % shape.num_heads) for i in flat)
    heads, dirs, sig = {}, {}, {}
    for layer in sorted({l for l, _ in pairs}):
        hs = [h for l, h in pairs if l == layer]
        d = torch.randn(len(hs), shape.head_dim, generator=g)
        heads[layer] = torch.tensor(hs, dtype=torch.int64)
        dirs[layer] = d / d.norm(dim=1, keepdim=True)
        sig[layer] = torch.rand(len(hs), generator=g) + 0.5
    rank = torch.tensor([[l, h] for l, h in flat_to_pairs(flat, shape.num_heads)], dtype=torch.int64)
    # fitted on no question: the leak guard has nothing to refuse
    meta = {"model": model_id, "model_revision": "", "architecture": shape.architecture,
            "method": "random", "train_question_ids": "[]", FINGERPRINT_KEY: fingerprint_metadata(model)}
    return Directions(shape.num_layers, shape.num_heads, shape.head_dim, heads, dirs, sig, meta, None, rank, alpha=float(alpha))


def flat_to_pairs(flat, num_heads: int) -> list[tuple[int, int]]:
    return [(int(i) // num_heads, int(i) % num_heads) for i in flat]
