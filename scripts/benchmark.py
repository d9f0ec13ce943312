"""Performance benchmark: every figure is a ratio measured in one run on one machine, side by side.

    python scripts/benchmark.py                              # all sections, written to outputs/benchmark
    python scripts/benchmark.py --sections fusion,generation --compile
    python scripts/benchmark.py --model outputs/xattn        # retrieval with the main job's trained model

Sections (each figure is the median of `--repeats` timed runs after `--warmup` untimed ones; the retrieval rankings
run `--retrieval_repeats` times, once by default, as exhaustive scoring is the slowest figure by far):
  fusion      our fusion layer vs transformers' `LxmertXLayer`, forward+backward, hidden 768, 12 heads, 32 text +
              49 image tokens, batch 32. Matched sub-layers: text->image and image->text cross-attention,
              per-stream self-attention, per-stream feed-forward (GELU), post-LayerNorm residuals, dropout 0.1 on
              sub-layer outputs, none on attention probabilities. (LXMERT shares one cross-attention module between
              the two directions, we keep two: same FLOPs, more parameters.)
  generation  `generate()` with the KV cache vs without, greedy and beam 3, exactly 30 new tokens, outputs compared;
              also the decoder's own speed-up (the image encoding, the same in both, timed alone and subtracted).
  retrieval   two-stage ranking (embedding shortlist k=128, cross-attention re-rank) vs exhaustive cross-attention
              scoring of every pair, on 1,000 embedded-dataset images x 5,000 captions: time, pair evaluations, R@1.
  training    one full-size training step (base preset: DenseNet121 + albert-base shape, 224 px, batch 32, the
              multi-task loss, Adam): samples/s, model FLOPs per sample (torch's FLOP counter), MFU against this
              machine's measured fp32 matmul rate, and peak memory with and without `set_memory_saving` (measured in
              a fresh process each).
  inference   classification latency per image-text pair at batch 1 and 32 (base preset): `torch.inference_mode`
              (default) against `torch.no_grad`, and with `channels_last` images and DenseNet weights.
  precision   the training step of each `--precision_presets` entry (small:32, base:8) in fp32 and under bf16
              autocast, contiguous and channels-last, on the CPU too.
  finetune    the fine-tuning recipe's step through the training loop (`--recipe finetune`, 224 px, towers in their
              published formats with random weights): samples/s, and the allocator's peak on CUDA.
  rerank_batch  pairs/s of the matching head at each re-ranking batch size.
`--combine A/benchmark.json B/benchmark.json` merges runs into one report (scripts/gpu_figures.sh does).
`--compile` adds `torch.compile` variants of the fusion figure (both layers compiled). On CUDA everything runs under bf16
autocast (`--precision fp32` to compare) and the figures are labelled with the device; on a CPU it runs in fp32.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives in the clone, not in the package

from benchmarks.run import main as run  # noqa: E402


def main(argv=None) -> dict:
    return run(argv, description=__doc__)


if __name__ == "__main__":
    main()
