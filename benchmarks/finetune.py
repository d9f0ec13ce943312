"""finetune: the fine-tuning recipe's step through the training loop itself (`--recipe finetune`, 224 px, towers in
their published formats with random weights): samples/s, and the allocator's peak on CUDA."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from modeling_xattn import train_albert_tokenizer
from modeling_xattn.training.data.synthetic import synthetic_dataset


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


def bench(args, device) -> dict:
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


def rows(f: dict) -> list[tuple]:
    memory = f", allocator peak {f['peak_bytes'] / 2**30:.2f} GiB" if "peak_bytes" in f else ""
    return [(f"fine-tuning step ({f['config']})", f"{f['samples_per_s']:.2f} samples/s "
             f"({f['mixed_precision']}){memory}", "", "")]
