"""The offline truth world: a deterministic toy world of entities, true colours and popular myths, documents written
by reliable or unreliable speakers, a word-level tokenizer, a small Llama trained on those documents, and its export
in TruthfulQA's own schemas so fit-directions and the truthfulqa_iti tasks run on it unchanged."""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"
