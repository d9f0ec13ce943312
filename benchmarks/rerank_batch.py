"""rerank_batch: pairs per second the matching head scores at each re-ranking batch size, on the retrieval model's
encoded gallery: the batch `evaluate.py` uses by default is the fastest measured where it was chosen."""

from __future__ import annotations

from benchmarks import common, retrieval
from modeling_xattn.training.data.synthetic import synthetic_dataset
from modeling_xattn.training.inference import (
    RERANK_BATCH_SIZE_ACCELERATOR,
    RERANK_BATCH_SIZE_CPU,
    encode_gallery,
    measure_pair_rate,
)

TARGET = "the fastest batch is the default (64 on a CPU, 512 on an accelerator)"


def bench(args, device) -> dict:
    """Pairs per second the matching head scores at each re-ranking batch size (`measure_pair_rate`, as
    `evaluate.py --top_k auto` times it), on the retrieval model's encoded gallery: the batch `evaluate.py` uses is
    the fastest one measured where it was chosen."""
    model, processor, source = retrieval.retrieval_model(args, device)
    data = synthetic_dataset(min(args.gallery_images, 200), seed=1, captions_per_image=5)
    captions = [c for cs in data["captions"] for c in cs]
    with common.autocast(device, args.precision):
        encoded = encode_gallery(model, processor, processor(images=list(data["image"]))["pixel_values"], captions)
        sizes = (8, 16) if args.smoke else (32, 64, 128, 256) if device.type == "cpu" else (64, 128, 256, 512, 1024, 2048)
        rates = {size: measure_pair_rate(model, encoded, size, timed_batches=3) for size in sizes}
    default = RERANK_BATCH_SIZE_CPU if device.type == "cpu" else RERANK_BATCH_SIZE_ACCELERATOR
    return {"config": f"pairs/s by batch, {len(data)} images x {len(captions)} captions, model: {source}",
            "pairs_per_s": rates, "fastest": max(rates, key=rates.get), "default": default}


def rows(b: dict) -> list[tuple]:
    return [("re-ranking pairs/s by batch", ", ".join(f"{size}: {rate:,.0f}" for size, rate in b["pairs_per_s"].items()),
             f"fastest {b['fastest']} (default {b['default']})", TARGET)]
