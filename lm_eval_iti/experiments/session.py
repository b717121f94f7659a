"""The model a run's jobs share, and what is computed once from it: loaded lazily, so a fully resumed run loads
nothing. Two plans of the same settings can share one session (a sweep's confirming pass reuses its fits)."""

from __future__ import annotations

from .plan import ExperimentConfig


class ModelSession:
    """The loaded model and tokenizer, the fits made with it (by fold and fit spec), the CE/KL documents and their
    unedited logits, and the KL meter on held-out text; with counters of the work done in this process."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self._model = None
        self._tokenizer = None
        self._docs = None
        self._kl_meter = None
        self.corpus_info = None
        self.fits: dict = {}  # (fold, fit spec) -> {"record", "directions", "train_ids"}
        self.fits_run: list[dict] = []  # the fit records made in this process
        self.base_logits: dict = {}  # CE/KL: the unedited logits of each document batch, computed once per run
        self.base_side_effects = None  # CE/KL of the unedited model (steered == base), measured once
        self.evaluations = 0  # rows evaluated in this process (resumed ones do not count)

    def model(self):
        if self._model is None:
            from ..fit import load_model

            c = self.config
            self._model, self._tokenizer = load_model(c.model, c.revision, c.dtype, c.device, c.progress,
                                                      gguf_file=c.gguf_file, device_map=c.device_map,
                                                      max_memory=c.max_memory, offload_folder=c.offload_folder)
        return self._model, self._tokenizer

    def corpus(self):
        """The tokenised CE/KL documents (``corpus``, ``num_docs``, ``num_tokens``, ``corpus_seed``)."""
        if self._docs is None:
            from ..side_effects import corpus_docs

            c = self.config
            _, tokenizer = self.model()
            self._docs, self.corpus_info = corpus_docs(tokenizer, c.corpus, c.num_docs, c.num_tokens,
                                                       c.corpus_seed, c.detokenize)
        return self._docs

    def kl_meter(self):
        """One held-out text sample (not the reported CE/KL sample) for every KL the run chooses by."""
        if self._kl_meter is None:
            from ..side_effects import AUTO_NUM_DOCS, KLMeter

            c = self.config
            model, tokenizer = self.model()
            self._kl_meter = KLMeter(model, tokenizer, c.corpus, AUTO_NUM_DOCS, c.num_tokens,
                                     batch_size=c.batch_size, held_out_from=(c.num_docs, c.corpus_seed),
                                     what="KL budget")
        return self._kl_meter
