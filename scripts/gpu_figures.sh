#!/usr/bin/env bash
# The GPU figures of docs/performance.md, measured in one run on one GPU, each beside its baseline:
#   training samples/s and MFU of the base preset at batch 32 and at the largest batch that fits, eager vs
#   torch.compile, bf16 vs fp32, and peak memory; the fine-tuning recipe's step (224 px, towers in their published
#   formats); generate() greedy and beam 3 with the static cache + compiled decoding vs the dynamic cache vs none
#   (tokens compared, identical in fp32); two-stage retrieval, 1,000 images x 5,000 captions, both directions vs
#   exhaustive, with R@1; the re-ranking batch size.
# Writes OUT/benchmark.json and OUT/benchmark.md (the tables, each under the card's name and the versions).
#
#   bash scripts/gpu_figures.sh                     # on a GPU: about ten minutes on one H100/H200
#   bash scripts/gpu_figures.sh --smoke             # tiny sizes on any machine (the tests run this on the CPU)
# Environment: OUT (default outputs/gpu_figures), PYTHON (default python), DEVICE (default cuda; --smoke: auto),
# COMPILE_BACKEND (default inductor; --smoke: aot_eager, as inductor's C++ build takes minutes on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-outputs/gpu_figures}
SMOKE=()
DEVICE=${DEVICE:-cuda}
BACKEND=${COMPILE_BACKEND:-inductor}
if [ "${1:-}" = "--smoke" ]; then
    SMOKE=(--smoke)
    DEVICE=${DEVICE_SMOKE:-auto}
    BACKEND=${COMPILE_BACKEND:-aot_eager}
fi
mkdir -p "$OUT"
# a trained model for the retrieval figures: the main job (the smoke run ranks with an untrained tiny model)
MODEL=()
if [ ${#SMOKE[@]} -eq 0 ]; then
    "$PYTHON" scripts/train.py --output_dir "$OUT/model" --overwrite_output_dir --report_to none --no_progress
    MODEL=(--model "$OUT/model")
fi
"$PYTHON" scripts/benchmark.py "${SMOKE[@]}" --device "$DEVICE" --precision bf16 --compile --compile_backend "$BACKEND" "${MODEL[@]}" \
    --sections training,precision,finetune,generation,retrieval,rerank_batch --precision_presets base:32 \
    --repeats 5 --warmup 3 --output_dir "$OUT/bf16"
"$PYTHON" scripts/benchmark.py "${SMOKE[@]}" --device "$DEVICE" --precision fp32 "${MODEL[@]}" \
    --sections training,generation --repeats 5 --warmup 3 --output_dir "$OUT/fp32"
"$PYTHON" scripts/benchmark.py --combine "$OUT/bf16/benchmark.json" "$OUT/fp32/benchmark.json" --output_dir "$OUT"
