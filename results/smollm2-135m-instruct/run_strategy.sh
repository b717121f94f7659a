#!/bin/bash
# Issue 29 on SmolLM2-135M-Instruct: ITI's nested selection (alpha, K; mass-mean directions on the probe's heads)
# against the nested strategy row (alpha, K, direction type mass-mean/probe and head selection probe/effect, all
# chosen on inner folds of the training questions under the same KL budget), with size-matched random controls,
# CE/KL and the paired comparison of the two rows. A reduced configuration (the first 400 questions, alpha 4 or 8,
# K 32; the effect ranking on 64 training questions, checked on 4 heads) so that it runs in about an hour on 2
# cores; run it from the repository root after `make smollm2`. Interrupted? Run it again: it resumes.
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=results/smollm2-135m-instruct/strategy
study() {
  lm-eval-iti validate --model smollm2-135m-instruct --dtype float32 \
    --data-dir ../shared/data/truthfulqa/v0 --num-questions 400 --num-folds 2 \
    --tasks truthfulqa_iti_mc1,truthfulqa_iti_mc2,truthfulqa_iti_mc3 \
    --alpha select --select-alphas 4,8 --select-num-heads 32 --num-heads 32 --select-by MC2 --kl-budget 0.2 \
    --baselines nested-strategy,random-matched --random-draws 5 \
    --effect-questions 64 --effect-check-heads 4 --engine on \
    --corpus ../shared/data/webtext/wikitext-2-raw-v1.test.raw --num-docs 100 --num-tokens 128 --out $OUT "$@"
}
mkdir -p $OUT
study --folds 0 > $OUT/fold0.log 2>&1 &
study --folds 1 > $OUT/fold1.log 2>&1 &
wait
study --quiet > $OUT/merge.log 2>&1
