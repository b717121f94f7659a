#!/bin/bash
# BLEU/ROUGE of greedy answers (truthfulqa_iti_gen, no judge) on the first 100 held-out questions of each fold, at
# the alpha and K that nested selection chose on both folds (4, 32), from the repository root after `make smollm2`.
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
gen() {
  lm-eval-iti validate --model smollm2-135m-instruct --dtype float32 \
    --data-dir ../shared/data/truthfulqa/v0 --num-folds 2 \
    --tasks truthfulqa_iti_gen --limit 100 --alpha 4 --num-heads 32 --no-side-effects \
    --out results/smollm2-135m-instruct/generation "$@"
}
gen --folds 0 && gen --folds 1 && gen   # one fold at a time reuses each fold's own activation cache
