"""TruthfulQA as a source of labelled samples for ``lm_eval_iti.train``: every MC2 choice of the training fold's
questions ("Q: ... A: ...", label 1 for a true answer), grouped by question, with the provenance the tasks' leak
guard and the results need (data sha256, folds)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .options import default_of
from .steer import Sample


@dataclass(frozen=True)
class TruthfulQASamples:
    samples: list[Sample]  # the training fold's MC2 choices, group = the question text
    sigma_samples: list[str] | None  # prompts sigma is measured on (None: the samples themselves, sigma_data="mc")
    add_special_tokens: bool = True
    provenance: dict[str, str] = field(default_factory=dict)

    def train_kwargs(self) -> dict:
        """The keyword arguments of ``lm_eval_iti.train`` these samples come with."""
        return {"sigma_samples": self.sigma_samples, "add_special_tokens": self.add_special_tokens,
                "provenance": self.provenance}


def samples(data_dir: str = default_of("dataset"), *, num_folds: int | None = default_of("num_folds"),
            fold: int | None = default_of("fold"), seed: int = default_of("fold_seed"),
            contiguous_folds: bool = default_of("contiguous_folds"), prompt_format: str = default_of("prompt_format"),
            tokenizer=None, sigma_data: str = "mc", num_questions: int | None = default_of("num_questions")
            ) -> TruthfulQASamples:
    """The training fold's samples (every question but fold ``fold`` of ``num_folds``; all questions without folds).

    ``iti.train(model, tok, s.samples, **s.train_kwargs())`` is the fit of ``fit_directions`` with the same options
    (its probe split, directions and sigma), without the activation cache and the alpha search."""
    from .fit import build_prompt_sets, data_sha256, load_and_split, make_config

    cfg = make_config(data_dir=data_dir, num_folds=num_folds, fold=fold, seed=seed, contiguous_folds=contiguous_folds,
                      prompt_format=prompt_format, sigma_data=sigma_data, num_questions=num_questions)
    data = load_and_split(cfg)
    prompts = build_prompt_sets(cfg, data, tokenizer)
    mc = prompts.mc_set
    items = [Sample(p, int(y), data.questions[q]) for p, y, q in zip(mc.prompts, mc.labels, mc.question_index)]
    sigma = None if prompts.sigma_set is mc else list(prompts.sigma_set.prompts)
    provenance = {"seed": str(seed), "dataset": cfg.source, "dataset_sha256": data_sha256(data.mc_docs),
                  "num_folds": "" if cfg.num_folds is None else str(cfg.num_folds), "fold": "" if fold is None else str(fold),
                  "contiguous_folds": str(bool(contiguous_folds)).lower(), "prompt_format": prompt_format,
                  "prompt_template": mc.info["template"], "sigma_data": sigma_data,
                  "num_questions": str(len(data.questions))}
    return TruthfulQASamples(items, sigma, mc.add_special_tokens, provenance)
