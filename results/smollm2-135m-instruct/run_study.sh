#!/bin/bash
# The SmolLM2-135M-Instruct study (issue 11), from the repository root after `make smollm2` (about 3.5 hours).
# Both held-out folds run at once, one process and one thread each (on 2 cores this beats one 2-thread process);
# the last call resumes every saved fold x row and writes results.json, table.md and pareto.png.
# Interrupted? Run it again: finished rows, fits, selections and KL matches are read back.
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
study() {
  lm-eval-iti validate --model smollm2-135m-instruct --dtype float32 \
    --data-dir ../shared/data/truthfulqa/v0 --num-folds 2 \
    --tasks truthfulqa_iti_mc1,truthfulqa_iti_mc2,truthfulqa_iti_mc3 \
    --alpha select --select-alphas 2,4,6,8 --select-num-heads 8,16,32 --num-heads 32 --select-by MC2 \
    --kl-budget 0.2 --baselines random-matched,random-matched-kl,random-heads,probe-weights,no-instruction \
    --random-draws 5 --curve-scales 0.5,2 --engine on --corpus ../shared/data/webtext/wikitext-2-raw-v1.test.raw --num-docs 100 \
    --num-tokens 128 --out results/smollm2-135m-instruct/validate "$@"
}
study --folds 0 > results/smollm2-135m-instruct/fold0.log 2>&1 &
study --folds 1 > results/smollm2-135m-instruct/fold1.log 2>&1 &
wait
study
