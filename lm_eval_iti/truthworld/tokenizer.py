"""A word-level tokenizer for the truth world (``tokenizers`` library): one token per word, ``Q:``/``A:`` and each
punctuation mark; decoding joins words with spaces and re-attaches punctuation, so decoded text equals the source."""

from __future__ import annotations

from pathlib import Path

from .generator import VERDICT_FALSE, VERDICT_TRUE, World

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # <pad> is id 0 (hf-iti treats id 0 as padding)
PATTERN = r"Q:|A:|\w+|[^\w\s]"
FIXED_WORDS = ["Q:", "A:", "What", "colour", "is", "the", "The", "?", ".", ",", ":"]


def vocabulary(world: World) -> list[str]:
    words = list(SPECIALS) + FIXED_WORDS
    for sentence in (VERDICT_TRUE, VERDICT_FALSE):
        words += [w for w in sentence.replace(".", " .").split() if w not in words]
    words += [c for c in world.colours if c not in words]
    for entity in world.entities + world.unknowns:
        words += [w for w in entity.split() if w not in words]
    return words


def build_tokenizer(world: World, out_dir: str | Path | None = None):
    """A PreTrainedTokenizerFast that prepends ``<s>``; saved to ``out_dir`` when given."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(world))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Split(Regex(PATTERN), behavior="isolated")])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces; " ." -> "."
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=512)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
