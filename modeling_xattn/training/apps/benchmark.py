"""The performance benchmark behind `scripts/benchmark.py` (its docstring lists the sections): every figure is a
ratio measured in one run on one machine, side by side, written as JSON and a markdown table.
"""


from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from modeling_xattn import XAttnProcessor, train_albert_tokenizer
from modeling_xattn.configuration_xattn import XAttnConfig
from modeling_xattn.modeling_xattn import (
    XAttnForConditionalGeneration,
    XAttnForMultiTask,
    XAttnForSequenceClassification,
    XAttnFusionLayer,
)
from modeling_xattn.processing_xattn import make_image_processor
from modeling_xattn.training.data.synthetic import synthetic_dataset
from modeling_xattn.training.gallery import rank
from modeling_xattn.training.inference import (
    RERANK_BATCH_SIZE_ACCELERATOR,
    RERANK_BATCH_SIZE_CPU,
    encode_gallery,
    load_model,
    measure_pair_rate,
    synchronize,
)
from modeling_xattn.training.metrics import markdown_table, recall_at_1_by_k, retrieval_metrics
from modeling_xattn.training.options import option, parse_options

SECTIONS = ("fusion", "generation", "retrieval", "training", "inference", "precision", "finetune", "rerank_batch",
            "step_profile", "photo_cache")
TARGETS = {
    "fusion": "<= 0.6x LXMERT's time",
    "generation": ">= 3x tokens/s with the cache",
    "generation_static": ">= 3x vs none, >= 2x vs dynamic",
    "training": ">= 25% MFU (GPU, bf16)",
    "retrieval": ">= 20x less time, R@1 within 1 point",
    "mfu": ">= 30% MFU on CPU",
    "memory": ">= 40% less peak memory when saving",
    "rerank_batch": "the fastest batch is the default (64 on a CPU, 512 on an accelerator)",
}


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
    _memory_probe: Literal["default", "saving"] | None = option(None, argparse.SUPPRESS)

    def __post_init__(self):
        if self.smoke:
            self.batch_size, self.fusion_hidden, self.gallery_images, self.top_k = 4, 64, 12, 4
            self.new_tokens, self.generation_batch, self.model_size = 6, 2, "tiny"
            self.precision_presets, self.finetune_steps, self.profile_preset = "tiny:2", 4, "tiny"
            self.repeats, self.warmup = 1, 0


def parse_args(argv=None, description: str | None = None) -> BenchmarkArguments:
    (args,) = parse_options((BenchmarkArguments,), argv, description or __doc__)
    return args


# ======================================================================================================= timing


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str, on_cpu: bool = False):
    """bf16 autocast on CUDA (unless `--precision fp32`); fp32 on the CPU, where bf16 autocast measured slower (the
    precision section), unless `on_cpu` asks for it."""
    if precision == "bf16" and (device.type == "cuda" or on_cpu):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure(fn, device, repeats: int, warmup: int) -> dict:
    """Median (and all) wall times of `fn()` in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times_s": [round(t, 6) for t in times]}


def count_flops(fn) -> int:
    """Model FLOPs of one call of `fn` (matmuls, convolutions, attention) by torch's FLOP counter. Attention runs
    through SDPA's math backend while counting, so its two matmuls are counted on every device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return int(counter.get_total_flops())


def matmul_rate(device, precision: str, repeats: int = 10) -> float:
    """This machine's peak matmul rate in FLOP/s in the precision the figures ran in, which MFU is measured against:
    the fastest of `repeats` products (the peak, so a slow moment of a shared machine cannot inflate MFU). The product
    is 2048^3 on a CPU and 8192^3 on a GPU, large enough to reach each one's peak."""
    size = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if device.type == "cuda" and precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = measure(lambda: a @ b, device, repeats, warmup=2)
    return 2 * size**3 / min(timing["times_s"])


# ======================================================================================================= sections


def bench_fusion(args, device) -> dict:
    from transformers import LxmertConfig
    from transformers.models.lxmert.modeling_lxmert import LxmertXLayer

    hidden, heads, batch = args.fusion_hidden, max(args.fusion_hidden // 64, 1), args.batch_size
    ours_config = XAttnConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
                              hidden_dropout_prob=0.1, attention_dropout_prob=0.0)
    lxmert_config = LxmertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
                                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, hidden_act="gelu")
    torch.manual_seed(0)
    layers = {"ours": XAttnFusionLayer(ours_config), "lxmert": LxmertXLayer(lxmert_config)}
    text = torch.randn(batch, 32, hidden, device=device, requires_grad=True)
    image = torch.randn(batch, 49, hidden, device=device, requires_grad=True)
    text_mask = torch.ones(batch, 32, dtype=torch.long, device=device)
    text_mask[: batch // 2, 24:] = 0  # half the statements are padded, as in real batches
    additive_mask = (1.0 - text_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min  # LXMERT's format

    def step(name, layer):
        def run():
            with autocast(device, args.precision):
                if name.startswith("ours"):
                    new_text, new_image, *_ = layer(text, text_mask, image)
                else:
                    new_text, new_image = layer(text, additive_mask, image, None)
                loss = new_text.float().sum() + new_image.float().sum()
            loss.backward()
            layer.zero_grad(set_to_none=True)
            text.grad = image.grad = None

        return run

    variants = {name: layer.to(device).train() for name, layer in layers.items()}
    if args.compile:
        variants.update({f"{name}+compile": torch.compile(layer) for name, layer in layers.items()})
    result = {"config": f"hidden {hidden}, {heads} heads, 32 text + 49 image tokens, batch {batch}, fwd+bwd",
              "parameters": {name: sum(p.numel() for p in layer.parameters()) for name, layer in layers.items()},
              "flops": {name: count_flops(step(name, layer)) for name, layer in layers.items()}}
    for name, layer in variants.items():
        result[name] = measure(step(name, layer), device, args.repeats, args.warmup)
    result["ratio"] = result["ours"]["median_s"] / result["lxmert"]["median_s"]
    if args.compile:
        result["ratio_compiled"] = result["ours+compile"]["median_s"] / result["lxmert+compile"]["median_s"]
        result["ratio_ours_compiled_vs_lxmert_eager"] = result["ours+compile"]["median_s"] / result["lxmert"]["median_s"]
    return result


def bench_generation(args, device) -> dict:
    config = XAttnConfig.from_preset(args.model_size)
    torch.manual_seed(0)
    model = XAttnForConditionalGeneration(config).to(device).eval()
    pixels = torch.randn(args.generation_batch, 3, config.image_size, config.image_size, device=device)
    new = args.new_tokens
    result = {"config": f"{args.model_size} preset, {args.generation_batch} images, {new} new tokens "
                        f"(min_new_tokens = max_new_tokens), whole generate() call incl. image encoding"}

    def encode():
        with torch.inference_mode(), autocast(device, args.precision):
            model._caption_memory(model.xattn.encode_image(pixels)[0])

    # encoding the images (DenseNet, ALBERT on the prompt, fusion) is the same with and without the cache; timed
    # alone so that the decoder's own speed-up can be given beside the whole call's
    encode_s = measure(encode, device, args.repeats, args.warmup)["median_s"]
    result["encode_s"] = encode_s
    for beams in (1, 3):
        outputs, timings = {}, {}
        for use_cache in (True, False):
            def run():
                with torch.inference_mode(), autocast(device, args.precision):
                    outputs[use_cache] = model.generate(pixels, num_beams=beams, max_new_tokens=new,
                                                        min_new_tokens=new, use_cache=use_cache)

            timings[use_cache] = measure(run, device, args.repeats, args.warmup)
        tokens = args.generation_batch * new
        name = "greedy" if beams == 1 else f"beam{beams}"
        result[name] = {
            "tokens_per_s_cache": tokens / timings[True]["median_s"],
            "tokens_per_s_no_cache": tokens / timings[False]["median_s"],
            "speedup": timings[False]["median_s"] / timings[True]["median_s"],
            "decoder_speedup": (timings[False]["median_s"] - encode_s) / (timings[True]["median_s"] - encode_s),
            "identical_outputs": bool(torch.equal(outputs[True], outputs[False])),
            "new_tokens": int(outputs[True].shape[1] - 1),
            "times_cache_s": timings[True]["times_s"],
            "times_no_cache_s": timings[False]["times_s"],
        }

        # transformers' StaticCache; on a GPU transformers compiles the decoding step (CUDA graphs), and the
        # warm-up calls absorb the compilation and the graph capture
        def run_static():
            with torch.inference_mode(), autocast(device, args.precision):
                outputs["static"] = model.generate(pixels, num_beams=beams, max_new_tokens=new, min_new_tokens=new,
                                                   cache_implementation="static")

        static = measure(run_static, device, args.repeats, max(args.warmup, 3))
        result[name].update({
            "tokens_per_s_static": tokens / static["median_s"],
            # observed, not assumed: transformers keeps the compiled step on the decoder once it has compiled it
            "static_compiled": hasattr(model.captioner.text_decoder, "_compiled_call"),
            "static_vs_dynamic": timings[True]["median_s"] / static["median_s"],
            "static_vs_none": timings[False]["median_s"] / static["median_s"],
            "identical_static": bool(torch.equal(outputs["static"], outputs[True])),
            "times_static_s": static["times_s"],
        })
    return result


def retrieval_model(args, device):
    """The trained multi-task model (`--model`, else outputs/xattn) and its processor, or an untrained tiny one."""
    folder = args.model or ("outputs/xattn" if Path("outputs/xattn/config.json").exists() else None)
    if folder and not args.smoke:
        return (*load_model(folder, device=device), folder)

    data = synthetic_dataset(50, seed=0)
    tokenizer = train_albert_tokenizer([c for cs in data["captions"] for c in cs] + list(data["text"]), 150)
    config = XAttnConfig.from_preset("tiny", text_config={"vocab_size": len(tokenizer)},
                                     decoder_config={"vocab_size": len(tokenizer)})
    torch.manual_seed(0)
    return (XAttnForMultiTask(config).to(device).eval(),
            XAttnProcessor(make_image_processor(config.image_size), tokenizer), "untrained tiny model")


def bench_retrieval(args, device) -> dict:
    model, processor, source = retrieval_model(args, device)
    data = synthetic_dataset(args.gallery_images, seed=1, captions_per_image=5)  # the embedded test split's seed
    captions = [c for cs in data["captions"] for c in cs]
    owner = torch.tensor([i for i, cs in enumerate(data["captions"]) for _ in cs])
    pixel_values = processor(images=list(data["image"]))["pixel_values"]

    start = time.perf_counter()
    with autocast(device, args.precision):
        images, texts = encode_gallery(model, processor, pixel_values, captions)
    synchronize(device)
    encode_s = time.perf_counter() - start
    result = {"config": f"{len(data)} images x {len(captions)} captions, k={args.top_k}, model: {source}",
              "gallery_encoding_s": encode_s}

    scores = {}

    def ranker(key, **kwargs):
        def run():
            with autocast(device, args.precision):
                scores[key] = rank(model, images, texts, batch_size=1024, **kwargs)

        return run

    exhaustive = measure(ranker("exhaustive", exhaustive=True), device, args.retrieval_repeats, warmup=0)
    exhaustive_scores, exhaustive_pairs = scores["exhaustive"]
    exhaustive_metrics = retrieval_metrics(exhaustive_scores.cpu(), owner)
    result["exhaustive"] = {**exhaustive, "pair_evaluations": exhaustive_pairs,
                            "i2t_R@1": exhaustive_metrics["i2t_R@1"], "t2i_R@1": exhaustive_metrics["t2i_R@1"]}
    similarity = model.retrieval.similarity(images[1], texts[2]).float()
    for direction in ("i2t", "t2i"):
        timing = measure(ranker(direction, direction=direction, k=args.top_k), device, args.retrieval_repeats, warmup=0)
        two_stage_scores, pairs = scores[direction]
        metrics = retrieval_metrics(two_stage_scores.cpu(), owner)
        reference = exhaustive_metrics[f"{direction}_R@1"]
        result[f"two_stage_{direction}"] = {
            **timing, "pair_evaluations": pairs, f"{direction}_R@1": metrics[f"{direction}_R@1"],
            "time_ratio": exhaustive["median_s"] / timing["median_s"],
            "R@1_difference": metrics[f"{direction}_R@1"] - reference,
        }
        # R@1 against k, read off this ranking; the smallest k within 1 point of exhaustive R@1 is timed, with the
        # first fusion layer's projections recomputed per pair (the default) and reused
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= args.top_k]
        curve = recall_at_1_by_k(two_stage_scores, similarity, owner.to(similarity.device), direction, ks)
        chosen = min((k for k, value in curve.items() if value >= reference - 1.0), default=args.top_k)
        chosen_timing = {reuse: measure(ranker(f"{direction}@{chosen}{reuse}", direction=direction, k=chosen,
                                               reuse=reuse), device, args.retrieval_repeats, warmup=0)
                         for reuse in (True, False)}
        chosen_scores, chosen_pairs = scores[f"{direction}@{chosen}False"]
        chosen_r1 = retrieval_metrics(chosen_scores.cpu(), owner)[f"{direction}_R@1"]
        result[f"chosen_k_{direction}"] = {
            "k": chosen, "R@1_by_k": curve, "pair_evaluations": chosen_pairs, f"{direction}_R@1": chosen_r1,
            "median_s": chosen_timing[False]["median_s"], "median_s_with_reuse": chosen_timing[True]["median_s"],
            "time_ratio": exhaustive["median_s"] / chosen_timing[False]["median_s"],
            "time_ratio_with_reuse": exhaustive["median_s"] / chosen_timing[True]["median_s"],
            "reuse_speedup": chosen_timing[False]["median_s"] / chosen_timing[True]["median_s"],
            "R@1_difference": chosen_r1 - reference,
        }
    return result


def training_batch(config, batch_size, device, caption_length: int = 20, text_length: int = 32):
    generator = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size

    def ids(length):
        tokens = torch.randint(5, vocab, (batch_size, length), generator=generator)
        tokens[:, 0], tokens[:, -1] = config.bos_token_id, config.eos_token_id
        return tokens.to(device)

    return {
        "pixel_values": torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator).to(device),
        "input_ids": ids(text_length),
        "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long, device=device),
        "labels": torch.randint(0, 3, (batch_size,), generator=generator).to(device),
        "caption_input_ids": ids(caption_length),
        "caption_attention_mask": torch.ones(batch_size, caption_length, dtype=torch.long, device=device),
    }


def training_setup(args, device, memory_saving: bool, batch_size: int | None = None, compiled: bool = False,
                   model_size: str | None = None, precision: str | None = None, channels_last: bool = False):
    """A model, its optimiser and one batch; `compiled`: what `train.py --torch_compile --channels_last` does (and
    the fused Adam it takes on CUDA); `precision` ("fp32", "bf16"), given, applies on the CPU too; `channels_last`
    alone: what `--channels_last` does without compiling."""
    config = XAttnConfig.from_preset(model_size or args.model_size)
    forced = precision is not None
    precision = precision or args.precision
    torch.manual_seed(0)
    model = XAttnForMultiTask(config).to(device).train()
    model.set_memory_saving(memory_saving)
    fused = {"fused": True} if compiled and device.type == "cuda" else {}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4, **fused)
    batch = training_batch(config, batch_size or args.batch_size, device)
    run = model
    if compiled or channels_last:
        model = model.to(memory_format=torch.channels_last)
        batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
    if compiled:
        run = torch.compile(model, backend=args.compile_backend)

    def forward_backward():
        with autocast(device, precision, on_cpu=forced):
            loss = run(**batch).loss
        loss.backward()
        return loss

    def step():
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step, forward_backward


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM). Not `ru_maxrss`: Linux carries that over from the parent at fork
    and exec, so a probe started by a large benchmark process would report the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def memory_probe(args) -> dict:
    """Run in a fresh process: peak memory of two training steps in one mode (CUDA: allocator peak; CPU: peak RSS)."""
    device = pick_device(args.device)
    _, step, _ = training_setup(args, device, args._memory_probe == "saving")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        ready = torch.cuda.memory_allocated(device)
    else:
        ready = current_rss_bytes()
    for _ in range(2):
        step()
    synchronize(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss_bytes()
    return {"peak_bytes": peak, "model_ready_bytes": ready, "training_bytes": peak - ready}


def run_memory_probe(args, mode: str) -> dict:
    # a fresh interpreter, so that its peak memory is the probe's own
    command = [sys.executable, "-c", "import sys; from modeling_xattn.training.apps.benchmark import main; main(sys.argv[1:])",
               "--_memory_probe", mode, "--model_size", args.model_size,
               "--batch_size", str(args.batch_size), "--device", args.device, "--precision", args.precision]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"memory probe ({mode}) failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def bench_training(args, device) -> dict:
    # the probes first, while this process is small: a full-size default-mode probe next to a trained-up benchmark
    # process would not fit in a 24 GiB machine
    memory = {mode: run_memory_probe(args, mode) for mode in ("default", "saving")}
    model, step, forward_backward = training_setup(args, device, memory_saving=False)
    flops = count_flops(forward_backward)
    model.zero_grad(set_to_none=True)
    rate_before = matmul_rate(device, args.precision)
    timing = measure(step, device, args.repeats, args.warmup)
    model = step = forward_backward = None
    _free(device)
    rate = max(rate_before, matmul_rate(device, args.precision))  # the peak, measured on both sides of the steps
    achieved = flops / timing["median_s"]
    per_sample = flops / args.batch_size
    variants = {}
    if args.compile:
        # compiled at --batch_size, then eager and compiled at the largest batch that fits (CUDA); the FLOPs per
        # sample are the eager count (compilation changes the kernels, not the arithmetic)
        sizes = [args.batch_size] + ([largest_batch(args, device)] if device.type == "cuda" else [])
        for size in dict.fromkeys(sizes):
            for compiled in ((True,) if size == args.batch_size else (False, True)):
                name = f"{'compiled' if compiled else 'eager'}_batch{size}"
                run = time_training_variant(args, device, size, compiled)
                if "error" not in run:
                    run.update({"batch_size": size, "samples_per_s": size / run["median_s"],
                                "mfu": per_sample * size / run["median_s"] / rate,
                                "speedup_vs_eager_batch": timing["median_s"] / run["median_s"] * size / args.batch_size})
                variants[name] = run
    return {
        "config": f"{args.model_size} preset, multi-task loss (Formula 4), batch {args.batch_size}, Adam",
        "step": timing,
        "samples_per_s": args.batch_size / timing["median_s"],
        "model_flops_per_sample": per_sample,
        "variants": variants,
        "achieved_flops_per_s": achieved,
        "matmul_flops_per_s": rate,
        "mfu": achieved / rate,
        "memory": memory,
        "peak_memory_reduction": 1 - memory["saving"]["peak_bytes"] / memory["default"]["peak_bytes"],
        "training_memory_reduction": 1 - memory["saving"]["training_bytes"] / memory["default"]["training_bytes"],
    }


def _free(device):
    """Release what the last figure held: its model, batch and closures must be unreferenced already."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _out_of_memory(error: BaseException) -> bool:
    """An allocation failure, however it surfaces: torch's OutOfMemoryError, or a RuntimeError from cuBLAS/cuDNN or
    from a compiler backend that ran out while compiling."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text.lower() or "ALLOC_FAILED" in text


def time_training_variant(args, device, size: int, compiled: bool) -> dict:
    """Timed training steps at batch `size`, eager or compiled; `{"error": ...}` when it does not fit. Compiled
    variants start from an empty compile cache, so each is compiled for its own static shapes."""
    if compiled:
        torch._dynamo.reset()
    try:
        setup = training_setup(args, device, False, batch_size=size, compiled=compiled)  # (model, step, fwd+bwd)
        model, step = setup[0], setup[1]
        result = measure(step, device, args.repeats, max(args.warmup, 3))  # the warm-up absorbs compiling
        if compiled:
            # graph breaks of the compiled forward: each one splits the step and waits for the host
            batch = training_batch(model.config, size, device)
            with autocast(device, args.precision):
                result["graph_breaks"] = torch._dynamo.explain(model)(**batch).graph_break_count
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        result = {"error": "out of memory"}
    setup = model = step = None  # nothing of this variant stays referenced
    _free(device)
    return result


def largest_batch(args, device) -> int:
    """The largest batch (doubling from --batch_size, at most --max_batch_size) whose eager training step fits in
    the GPU's memory."""
    fits, size = args.batch_size, args.batch_size * 2
    while size <= args.max_batch_size:
        if "error" in time_training_variant(_with(args, repeats=1, warmup=1), device, size, compiled=False):
            break
        fits, size = size, size * 2
    return fits


def _with(args, **values):
    """A copy of `args` with `values` set (its smoke sizes kept: no re-initialisation)."""
    changed = copy.copy(args)
    for name, value in values.items():
        setattr(changed, name, value)
    return changed


def bench_inference(args, device) -> dict:
    config = XAttnConfig.from_preset(args.model_size)
    torch.manual_seed(0)
    model = XAttnForSequenceClassification(config).to(device).eval()
    batches = {size: training_batch(config, size, device) for size in (1, args.batch_size)}
    result = {"config": f"{args.model_size} preset classification, torch.inference_mode, 32-token statements"}
    for size, batch in batches.items():
        inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
        for name in ("default", "no_grad", "channels_last"):
            grad_mode = torch.no_grad if name == "no_grad" else torch.inference_mode
            if name == "channels_last":
                run_model = model.to(memory_format=torch.channels_last)
                run_inputs = {**inputs, "pixel_values": inputs["pixel_values"].contiguous(memory_format=torch.channels_last)}
            else:
                run_model = model.to(memory_format=torch.contiguous_format)
                run_inputs = inputs

            def run():
                with grad_mode(), autocast(device, args.precision):
                    run_model(**run_inputs)

            timing = measure(run, device, args.repeats, args.warmup)
            result[f"batch{size}_{name}"] = {**timing, "ms_per_pair": 1000 * timing["median_s"] / size}
    return result


def bench_precision(args, device) -> dict:
    """The training step (multi-task, Adam) of each `--precision_presets` entry in fp32 and under bf16 autocast,
    with contiguous and channels-last images and convolution weights: the median step and its ratios."""
    result = {"config": "training step, multi-task loss (Formula 4), Adam; bf16 = torch.autocast(bfloat16)"}
    for entry in args.precision_presets.split(","):
        preset, _, size = entry.strip().partition(":")
        size = int(size or args.batch_size)
        timings = {}
        for precision in ("fp32", "bf16"):
            for layout in ("contiguous", "channels_last"):
                _, step, _ = training_setup(args, device, False, batch_size=size, model_size=preset,
                                            precision=precision, channels_last=layout == "channels_last")
                timing = measure(step, device, args.repeats, max(args.warmup, 1))
                timings[f"{precision}_{layout}"] = {**timing, "samples_per_s": size / timing["median_s"]}
                step = None
                _free(device)
        fp32 = timings["fp32_contiguous"]["median_s"]
        result[f"{preset}_batch{size}"] = {
            "preset": preset, "batch_size": size, "image_size": XAttnConfig.from_preset(preset).image_size,
            **timings,
            "bf16_vs_fp32": timings["bf16_contiguous"]["median_s"] / fp32,
            "bf16_channels_last_vs_fp32": timings["bf16_channels_last"]["median_s"] / fp32,
            "fp32_channels_last_vs_fp32": timings["fp32_channels_last"]["median_s"] / fp32,
        }
    return result


def published_towers(folder: Path) -> tuple[str, str]:
    """Towers in their published formats with random weights, written to `folder`: an ALBERT folder with
    albert-base-v2's shape (AlbertForMaskedLM's weights, a tokenizer in ALBERT's format) and a DenseNet121 state dict
    as scripts/export_densenet.py writes it. What `--recipe finetune` loads, without a download."""
    from transformers import AlbertConfig, AlbertForMaskedLM

    from modeling_xattn.configuration_xattn import ALBERT_BASE
    from modeling_xattn.training.apps.export_densenet import export_densenet121

    albert = folder / "albert-base-v2"
    torch.manual_seed(0)
    AlbertForMaskedLM(AlbertConfig(**ALBERT_BASE, architectures=["AlbertForMaskedLM"])).save_pretrained(albert)
    rows = synthetic_dataset(100, seed=0)
    train_albert_tokenizer([c for cs in rows["captions"] for c in cs] + list(rows["text"]), 1000).save_pretrained(albert)
    densenet = folder / "densenet121.safetensors"
    export_densenet121(str(densenet), weights="random")
    return str(albert), str(densenet)


def bench_finetune(args, device) -> dict:
    """The fine-tuning recipe's step as `train.py --recipe finetune` runs it, through the training loop itself: the
    base preset at 224 px from towers in their published formats (`published_towers`), batch --batch_size, bf16
    autocast on CUDA unless --precision fp32 (a CPU takes the loop's own choice), for --finetune_steps steps. The
    figure is the median of the loop's logged training throughput after its first interval (which holds the
    warm-up), and the allocator's peak on CUDA."""
    import tempfile

    from modeling_xattn.training.main import train
    from modeling_xattn.training.options import TrainingOptions

    steps, size = args.finetune_steps, args.batch_size
    with tempfile.TemporaryDirectory() as folder:
        text, vision = published_towers(Path(folder))
        options = TrainingOptions(
            recipe="finetune", text_backbone=text, vision_backbone=vision, output_dir=str(Path(folder) / "run"),
            batch_size=size, max_steps=steps, logging_steps=max(steps // 8, 1), eval_steps=10 * steps,
            save_steps=10 * steps, synthetic_samples=max(size * steps // 4, 4 * size), report_to="none",
            no_progress=True, cpu=device.type == "cpu", image_size=64 if args.smoke else None,
            mixed_precision=("bf16" if args.precision == "bf16" else "no") if device.type == "cuda" else None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        train(options)
        wall = time.perf_counter() - started
        results = json.loads((Path(folder) / "run" / "train_results.json").read_text())
    result = {"config": f"--recipe finetune, base preset at {options.image_size or 224} px, batch {size}, "
                        f"{steps} steps, towers in published formats (random weights)",
              "samples_per_s": results.get("train_samples_per_s"), "mixed_precision": results["launch"]["mixed_precision"],
              "wall_s": wall}
    if device.type == "cuda":
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def bench_rerank_batch(args, device) -> dict:
    """Pairs per second the matching head scores at each re-ranking batch size (`measure_pair_rate`, as
    `evaluate.py --top_k auto` times it), on the retrieval model's encoded gallery: the batch `evaluate.py` uses is
    the fastest one measured where it was chosen."""
    model, processor, source = retrieval_model(args, device)
    data = synthetic_dataset(min(args.gallery_images, 200), seed=1, captions_per_image=5)
    captions = [c for cs in data["captions"] for c in cs]
    with autocast(device, args.precision):
        encoded = encode_gallery(model, processor, processor(images=list(data["image"]))["pixel_values"], captions)
        sizes = (8, 16) if args.smoke else (32, 64, 128, 256) if device.type == "cpu" else (64, 128, 256, 512, 1024, 2048)
        rates = {size: measure_pair_rate(model, encoded, size, timed_batches=3) for size in sizes}
    default = RERANK_BATCH_SIZE_CPU if device.type == "cpu" else RERANK_BATCH_SIZE_ACCELERATOR
    return {"config": f"pairs/s by batch, {len(data)} images x {len(captions)} captions, model: {source}",
            "pairs_per_s": rates, "fastest": max(rates, key=rates.get), "default": default}


def bench_step_profile(args, device) -> dict:
    """Where a multi-task training step's time goes (the default recipe's model, --profile_preset at its image size,
    --batch_size image-caption pairs): making the batch from the rows (reading and decoding the photos, resizing and
    normalising, tokenising), then each part's forward and backward timed alone on that batch (the image tower, the
    caption encoder, the 3B matching pairs through the fusion layers, the captioning memory's fusion and the decoder)
    and the optimiser's step, beside the whole step. Shares are of the whole step plus the batch making."""
    from modeling_xattn.modeling_xattn import caption_labels, default_prompt
    from modeling_xattn.training.collate import XAttnCollator
    from modeling_xattn.training.data.views import CaptionPairs
    from modeling_xattn.training.data.schema import undecoded
    from modeling_xattn.training.data.sources import load_imagefolder
    from modeling_xattn.training.options import RECIPES

    rows = (undecoded(load_imagefolder(args.profile_data, "train")) if args.profile_data
            else synthetic_dataset(4 * args.batch_size, seed=0))
    corpus = [c for cs in rows["captions"] for c in cs]
    tokenizer = train_albert_tokenizer(corpus, vocab_size=None, min_word_count=5)  # train.py's default
    recipe = RECIPES["default"]
    config = XAttnConfig.from_preset(
        args.profile_preset, text_config={"vocab_size": len(tokenizer)}, fusion_gate=True,
        contrastive_loss=recipe["contrastive_loss"], learnable_temperature=True,
        retrieval_pooling=recipe["retrieval_pooling"], lambda_ce=0.0)
    processor = XAttnProcessor(make_image_processor(config.image_size), tokenizer)
    collate = XAttnCollator(processor, targets="caption")
    examples = CaptionPairs(rows)
    take = [examples[i] for i in range(args.batch_size)]
    make_batch = measure(lambda: collate(take), device, args.repeats, args.warmup)
    batch = {k: v.to(device) for k, v in collate(take).items()}
    torch.manual_seed(0)
    model = XAttnForMultiTask(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels, ids, mask = batch["pixel_values"], batch["caption_input_ids"], batch["caption_attention_mask"]

    def backward(output):
        output.float().sum().backward()
        model.zero_grad(set_to_none=True)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with torch.no_grad():
        image_tokens = model.xattn.encode_image(pixels)[0]
        text_tokens = model.xattn.encode_text(ids, mask)
    size = len(pixels)
    pairs = torch.arange(size, device=device).repeat(3)  # the 3B matching pairs' shapes
    prompt, prompt_mask = default_prompt(config, size, device)

    def decoder():
        memory, memory_mask = model._caption_memory(image_tokens.detach())
        return model.captioner(memory, memory_mask, ids, mask, caption_labels(ids, mask, config.pad_token_id)).loss

    parts = {
        "image tower (DenseNet + CBAM + projection)": lambda: backward(model.xattn.encode_image(pixels)[0]),
        "caption encoder (ALBERT)": lambda: backward(model.xattn.encode_text(ids, mask)),
        "matching pairs: 3B pairs through the fusion + ITM head": lambda: backward(model.retrieval.itm(model.xattn.fuse(
            text_tokens[pairs].detach(), mask[pairs], image_tokens[pairs].detach()).pooler_output)),
        "captioning memory (fusion with the empty prompt) + decoder": lambda: backward(decoder()),
        "prompt encoder for the captioning memory": lambda: backward(model.xattn.encode_text(prompt, prompt_mask)),
    }
    timings = {name: measure(fn, device, args.repeats, args.warmup)["median_s"] for name, fn in parts.items()}
    whole = measure(step, device, args.repeats, args.warmup)["median_s"]
    model(**batch).loss.backward()  # the gradients the optimiser steps with (a parameter without one is skipped)
    optimizer_step = measure(lambda: optimizer.step(), device, args.repeats, args.warmup)["median_s"]
    timings["optimizer step (AdamW)"] = optimizer_step
    total = whole + make_batch["median_s"]
    return {"config": f"{args.profile_preset} preset, {config.image_size} px, batch {size}, captions only (retrieval + "
                      f"matching + captioning), data: {args.profile_data or 'embedded'}",
            "making the batch": make_batch["median_s"], "whole step": whole, "parts": timings,
            "shares": {"making the batch": make_batch["median_s"] / total,
                       **{name: value / total for name, value in timings.items()}},
            "steps_per_minute": 60.0 / total}


def bench_photo_cache(args, device) -> dict:
    """Making a batch of --batch_size image-caption pairs (one caption per photo) from --profile_data's photos
    (default: the embedded dataset), with and without the photo cache (`PhotoCache`: every read after the first),
    at 64 px and 224 px; the median of --repeats collations after one that fills the cache."""
    from modeling_xattn.training.collate import PhotoCache, XAttnCollator
    from modeling_xattn.training.data.views import CaptionPairs
    from modeling_xattn.training.data.schema import undecoded
    from modeling_xattn.training.data.sources import load_imagefolder

    rows = undecoded(load_imagefolder(args.profile_data, "train") if args.profile_data
                     else synthetic_dataset(args.batch_size, seed=0))  # photos as stored, which the cache keys
    tokenizer = train_albert_tokenizer([c for cs in rows["captions"] for c in cs], 1000)
    examples = CaptionPairs(rows)
    first = {}
    for index, (row, _) in enumerate(examples.pairs):
        first.setdefault(row, index)
    take = [examples[i] for i in list(first.values())[: args.batch_size]]
    result = {"photos": len(take), "data": args.profile_data or "embedded"}
    for size in (64, 224):
        processor = XAttnProcessor(make_image_processor(size), tokenizer)
        for name, cache in (("no_cache", None), ("cache", PhotoCache(2**31))):
            collate = XAttnCollator(processor, targets="caption", photo_cache=cache)
            collate(take)  # the first read, which fills the cache
            result[f"{size}px_{name}_s"] = measure(lambda: collate(take), device, args.repeats, 0)["median_s"]
    return result


BENCHMARKS = {"fusion": bench_fusion, "generation": bench_generation, "retrieval": bench_retrieval,
              "training": bench_training, "inference": bench_inference, "precision": bench_precision,
              "finetune": bench_finetune, "rerank_batch": bench_rerank_batch, "step_profile": bench_step_profile,
              "photo_cache": bench_photo_cache}


# ======================================================================================================= report


def versions() -> str:
    """The versions the figures depend on."""
    import accelerate
    import transformers

    cuda = f", CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""
    return (f"torch {torch.__version__}{cuda}, transformers {transformers.__version__}, accelerate "
            f"{accelerate.__version__}")


def machine_description(device, precision: str) -> str:
    if device.type == "cuda":
        mode = "bf16 autocast" if precision == "bf16" else "fp32"
        return f"{torch.cuda.get_device_name(device)} ({mode}), {versions()}"
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, fp32, {versions()}"


def _precision_and_finetune_rows(r: dict) -> list[tuple]:
    """The table rows of the precision, finetune and rerank_batch sections."""
    rows = []
    if "precision" in r:
        for key, value in r["precision"].items():
            if not isinstance(value, dict) or "preset" not in value:
                continue
            steps = ", ".join(f"{name.replace('_', ' ')} {1000 * value[name]['median_s']:.0f} ms"
                              for name in ("fp32_contiguous", "fp32_channels_last", "bf16_contiguous",
                                           "bf16_channels_last"))
            rows.append((f"training step, {value['preset']} preset ({value['image_size']} px), batch "
                         f"{value['batch_size']}: fp32 vs bf16 autocast", steps,
                         f"bf16 {value['bf16_vs_fp32']:.2f}x, bf16+channels-last "
                         f"{value['bf16_channels_last_vs_fp32']:.2f}x, fp32+channels-last "
                         f"{value['fp32_channels_last_vs_fp32']:.2f}x of fp32's time", "use bf16 where < 1x"))
    if "finetune" in r:
        f = r["finetune"]
        memory = f", allocator peak {f['peak_bytes'] / 2**30:.2f} GiB" if "peak_bytes" in f else ""
        rows.append((f"fine-tuning step ({f['config']})", f"{f['samples_per_s']:.2f} samples/s "
                     f"({f['mixed_precision']}){memory}", "", ""))
    if "step_profile" in r:
        profile = r["step_profile"]
        rows.append((f"training step ({profile['config']})", f"whole step {1000 * profile['whole step']:.0f} ms, "
                     f"making the batch {1000 * profile['making the batch']:.0f} ms "
                     f"({100 * profile['shares']['making the batch']:.0f}%): {profile['steps_per_minute']:.0f} "
                     "steps/min", "", ""))
        for name, value in profile["parts"].items():
            rows.append((f"  {name}", f"{1000 * value:.0f} ms", f"{100 * profile['shares'][name]:.0f}%", ""))
    if "photo_cache" in r:
        c = r["photo_cache"]
        for size in (64, 224):
            rows.append((f"making a batch of {c['photos']} photos at {size} px ({c['data']}): without / with the photo "
                         "cache", f"{1000 * c[f'{size}px_no_cache_s']:.1f} / {1000 * c[f'{size}px_cache_s']:.1f} ms",
                         f"{c[f'{size}px_no_cache_s'] / c[f'{size}px_cache_s']:.0f}x", ""))
    if "rerank_batch" in r:
        b = r["rerank_batch"]
        rows.append(("re-ranking pairs/s by batch", ", ".join(f"{size}: {rate:,.0f}" for size, rate in
                                                           b["pairs_per_s"].items()),
                     f"fastest {b['fastest']} (default {b['default']})", TARGETS["rerank_batch"]))
    return rows


def markdown(report: dict) -> str:
    r = report["results"]
    rows = []
    if "fusion" in r:
        f = r["fusion"]
        rows.append(("fusion fwd+bwd vs LxmertXLayer", f"{1000 * f['ours']['median_s']:.0f} ms vs "
                     f"{1000 * f['lxmert']['median_s']:.0f} ms", f"{f['ratio']:.2f}x", TARGETS["fusion"]))
        if "ratio_compiled" in f:
            rows.append(("fusion, both torch.compile'd", f"{1000 * f['ours+compile']['median_s']:.0f} ms vs "
                         f"{1000 * f['lxmert+compile']['median_s']:.0f} ms", f"{f['ratio_compiled']:.2f}x", ""))
    if "generation" in r:
        for name in ("greedy", "beam3"):
            g = r["generation"][name]
            rows.append((f"generate {name}, cache vs none", f"{g['tokens_per_s_cache']:.1f} vs "
                         f"{g['tokens_per_s_no_cache']:.1f} tok/s, identical: {g['identical_outputs']}; decoding "
                         f"alone (minus {r['generation']['encode_s']:.2f} s of image encoding): "
                         f"{g['decoder_speedup']:.1f}x", f"{g['speedup']:.1f}x", TARGETS["generation"]))
            if "tokens_per_s_static" in g:
                compiled = "static cache, compiled decoding" if g["static_compiled"] else "static cache (not compiled: CPU)"
                rows.append((f"generate {name}, {compiled}", f"{g['tokens_per_s_static']:.1f} tok/s, identical: "
                             f"{g['identical_static']}; vs dynamic cache {g['static_vs_dynamic']:.2f}x",
                             f"{g['static_vs_none']:.1f}x", TARGETS["generation_static"]))
    if "retrieval" in r:
        q = r["retrieval"]
        for direction in ("i2t", "t2i"):
            t = q[f"two_stage_{direction}"]
            rows.append((f"retrieval {direction}, two-stage vs exhaustive",
                         f"{t['median_s']:.1f} s vs {q['exhaustive']['median_s']:.1f} s; pairs {t['pair_evaluations']:,} "
                         f"vs {q['exhaustive']['pair_evaluations']:,}; R@1 {t[f'{direction}_R@1']:.1f} vs "
                         f"{q['exhaustive'][f'{direction}_R@1']:.1f}", f"{t['time_ratio']:.1f}x", TARGETS["retrieval"]))
            c = q.get(f"chosen_k_{direction}")
            if c:
                rows.append((f"retrieval {direction}, smallest k within 1 point of exhaustive R@1 (k={c['k']})",
                             f"{c['median_s']:.3g} s ({c['median_s_with_reuse']:.3g} s reusing the first layer's "
                             f"projections); pairs {c['pair_evaluations']:,}; R@1 {c[f'{direction}_R@1']:.1f}",
                             f"{c['time_ratio']:.1f}x ({c['time_ratio_with_reuse']:.1f}x)",
                             TARGETS["retrieval"]))
    if "training" in r:
        t = r["training"]
        gib = 2**30
        rows.append(("training step (samples/s, FLOPs/sample)", f"{t['samples_per_s']:.2f} samples/s, "
                     f"{t['model_flops_per_sample'] / 1e9:.1f} GFLOP/sample", "", ""))
        rows.append(("MFU vs measured matmul rate", f"{t['achieved_flops_per_s'] / 1e9:.1f} of "
                     f"{t['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s", f"{100 * t['mfu']:.1f}%", TARGETS["mfu"]))
        for name, v in t.get("variants", {}).items():
            kind, size = name.split("_batch")
            measured = v.get("error") or (f"{v['samples_per_s']:.2f} samples/s, MFU {100 * v['mfu']:.1f}%"
                                          + (f", {v['graph_breaks']} graph breaks" if "graph_breaks" in v else ""))
            ratio = "" if "error" in v else f"{v['speedup_vs_eager_batch']:.2f}x"
            rows.append((f"training step, {kind}, batch {size}", measured, ratio, TARGETS["training"]))
        m = t["memory"]
        rows.append(("peak memory, default vs memory saving", f"{m['default']['peak_bytes'] / gib:.2f} vs "
                     f"{m['saving']['peak_bytes'] / gib:.2f} GiB (training part {m['default']['training_bytes'] / gib:.2f}"
                     f" vs {m['saving']['training_bytes'] / gib:.2f} GiB)", f"-{100 * t['peak_memory_reduction']:.0f}% "
                     f"(-{100 * t['training_memory_reduction']:.0f}%)", TARGETS["memory"]))
    rows += _precision_and_finetune_rows(r)
    if "inference" in r:
        i = r["inference"]
        for key, value in i.items():
            if key.startswith("batch"):
                size, variant = key.split("_", 1)
                rows.append((f"classification latency, {size.replace('batch', 'batch ')}, {variant}",
                             f"{value['ms_per_pair']:.1f} ms/pair",
                             "", ""))
    columns = ["figure", "measured", "ratio", "target"]
    table = markdown_table([dict(zip(columns, row)) for row in rows], columns)
    return f"Machine: {report['machine']}. Command: `{report['command']}`.\n\n{table}\n"


def combine(paths: list[str], output_dir: str) -> dict:
    """One report from several runs' benchmark.json: their results side by side, one table per run."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = {"machine": runs[0]["machine"], "runs": runs}
    (output / "benchmark.json").write_text(json.dumps(report, indent=2))
    (output / "benchmark.md").write_text("\n".join(markdown(run) for run in runs))
    return report


def main(argv=None, description: str | None = None) -> dict:
    """Parse `argv` and run the sections it names (`scripts/benchmark.py` is this)."""
    args = parse_args(argv, description)
    if args.combine:
        report = combine(args.combine, args.output_dir)
        print((Path(args.output_dir) / "benchmark.md").read_text())
        return report
    if args._memory_probe:
        print(json.dumps(memory_probe(args)))
        return {}
    device = pick_device(args.device)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    report = {"machine": machine_description(device, args.precision), "device": device.type,
              "command": "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "targets": TARGETS, "results": {}}
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    for section in sections:
        start = time.perf_counter()
        print(f"[benchmark] {section} ...", flush=True)
        report["results"][section] = BENCHMARKS[section](args, device)
        report["results"][section]["section_wall_s"] = time.perf_counter() - start
        # written after every section, so a long run that dies keeps what it measured
        (output / "benchmark.json").write_text(json.dumps(report, indent=2))
        (output / "benchmark.md").write_text(markdown(report))
    print(markdown(report))
    return report


