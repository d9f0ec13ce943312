"""The benchmark's options: what to measure, where, and at which sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from benchmarks.sections import MODULES
from modeling_xattn.training.options import option, parse_options

SECTIONS = tuple(MODULES)  # `--sections`' default: every section, in this order


@dataclass
class BenchmarkArguments:
    """What to measure, where, and at which sizes (defaults: the paper's base preset and a 1,000-image gallery)."""

    _argument_group_name = "benchmark"

    sections: str = option(",".join(SECTIONS), "comma-separated subset of " + ", ".join(SECTIONS))
    output_dir: str = option("outputs/benchmark")
    repeats: int = option(5, "timed repetitions per figure (the median is reported)")
    warmup: int = option(2, "untimed runs before timing")
    device: str = option("auto", "auto, cpu or cuda")
    precision: Literal["bf16", "fp32"] = option("bf16", "on CUDA: autocast dtype (CPU: fp32)")
    compile: bool = option(
        False,
        "also measure both fusion layers, and the training step (with channels-last images and, on CUDA, fused "
        "Adam), under torch.compile")
    compile_backend: str = option("inductor", "torch.compile backend of --compile")
    max_batch_size: int = option(
        512, "CUDA: the training figures' largest batch is searched by doubling --batch_size up to this")
    model: str | None = option(
        None,
        "trained multi-task model folder for the retrieval figure (default: outputs/xattn if it exists, else an "
        "untrained tiny model)")
    smoke: bool = option(False, "tiny sizes everywhere (the tests use it; not a benchmark)")
    combine: list[str] | None = option(
        None,
        "merge these benchmark.json files (runs of this command, e.g. scripts/gpu_figures.sh's bf16 and fp32 runs) "
        "into one benchmark.json and benchmark.md in --output_dir, each run's table under its machine line",
        nargs="+")
    batch_size: int = option(32)
    fusion_hidden: int = option(768)
    gallery_images: int = option(1000)
    top_k: int = option(128)
    retrieval_repeats: int = option(
        1, "timed runs of each ranking (exhaustive scoring at full size: over 45 minutes on 2 CPU cores)")
    new_tokens: int = option(30)
    generation_batch: int = option(8)
    model_size: str = option("base", "preset of the generation, training and inference figures")
    finetune_steps: int = option(
        40, "optimiser steps of the finetune section (`train()` with --recipe finetune; every 5th step logged)")
    profile_preset: str = option("small", "the step_profile section's preset (at its image size, --batch_size)")
    profile_data: str | None = option(
        None, "the step_profile and photo_cache sections' photos: an imagefolder with metadata.jsonl (default: the "
        "embedded dataset)")
    precision_presets: str = option(
        "small:32,base:8",
        "the precision section's presets and batch sizes (preset:batch, comma-separated): each one's training step "
        "in fp32 and under bf16 autocast, contiguous and channels-last")

    def __post_init__(self):
        if self.smoke:
            self.batch_size, self.fusion_hidden, self.gallery_images, self.top_k = 4, 64, 12, 4
            self.new_tokens, self.generation_batch, self.model_size = 6, 2, "tiny"
            self.precision_presets, self.finetune_steps, self.profile_preset = "tiny:2", 4, "tiny"
            self.repeats, self.warmup = 1, 0


def parse_args(argv=None, description: str | None = None) -> BenchmarkArguments:
    (args,) = parse_options((BenchmarkArguments,), argv, description)
    return args
