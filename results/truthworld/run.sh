#!/bin/bash
# The truth-world bar with ITI's probe ranking and with --head-selection effect (issue 29): the shipped checkpoint,
# and seeds 0, 1 and 2 trained on this machine (training is not bit-identical across machines: see README.md here).
# About 7 minutes per training (1 thread, run in parallel) and 1-2 minutes per bar; from the repository root.
set -e
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
OUT=results/truthworld
WORK=${WORK:-/tmp/truthworld-seeds}
for s in 0 1 2; do
  [ -f $WORK/seed$s/model.safetensors ] || lm-eval-iti truthworld train --out $WORK/seed$s --train-seed $s --threads 1 &
done
wait
for sel in probe effect; do
  lm-eval-iti truthworld evaluate --head-selection $sel --out $OUT/shipped_$sel.json
  for s in 0 1 2; do
    lm-eval-iti truthworld evaluate --model $WORK/seed$s --head-selection $sel --out $OUT/seed${s}_$sel.json
  done
done
for s in 0 1 2; do
  lm-eval-iti truthworld diagnose --model $WORK/seed$s --out $OUT/seed${s}_diagnose.json
  cp $WORK/seed$s/PROVENANCE.json $OUT/seed${s}_PROVENANCE.json
done
