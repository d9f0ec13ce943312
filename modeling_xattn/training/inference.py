"""Inference with a trained model, as the apps (demo, prediction) and evaluation call it: loading a saved model and
its processor, batching rows through the collator, generating captions, and two-stage gallery ranking (encoding a
gallery once, the embeddings' shortlist, the matching head's re-ranking, and the shortlist size a time budget
allows).

    model, processor = load_model("outputs/xattn")
    captions = generate_captions(model, processor, processor(images=photos)["pixel_values"])
    scores, pairs, encoded = rank_gallery(model, processor, pixel_values, captions, top_k=16)
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from modeling_xattn.training.gallery import encode_gallery_images, encode_gallery_texts, pair_scores, rank
from modeling_xattn.training.hub import inference_device, load_pretrained, load_processor


# Two-stage retrieval's defaults. `--top_k auto` takes the largest shortlist of SHORTLIST_SIZES whose re-ranking fits
# RERANK_BUDGET_SECONDS at the pairs/s measured on the device at hand (docs/performance.md has the shortlists it
# chooses and their recall against the largest).
SHORTLIST_SIZES = (128, 64, 32, 16, 8, 4, 2, 1)


RERANK_BUDGET_SECONDS = 90.0


# Pairs per fusion call while re-ranking: on CPUs the batch that scored the most pairs/s (docs/performance.md); an
# accelerator wants larger batches.
RERANK_BATCH_SIZE_CPU = 64


RERANK_BATCH_SIZE_ACCELERATOR = 512


def rerank_batch_size_for(model) -> int:
    """Pairs per fusion call for re-ranking on the model's device."""
    return RERANK_BATCH_SIZE_CPU if model.device.type == "cpu" else RERANK_BATCH_SIZE_ACCELERATOR


def load_model(name: str, revision: str | None = None, device=None, auto_class=None):
    """A saved model and its processor, from a folder or the Hub (custom code after `hub.check_safe`, safetensors
    only), the model in eval mode on `device` (default: CUDA where available, `hub.inference_device`). `auto_class`:
    the Auto class that loads it (default `AutoModelForPreTraining`, the multi-task model); the one loader of every
    command."""
    device = inference_device(device)  # a device this machine lacks stops before the model is read
    model = load_pretrained(name, revision, auto_class=auto_class).eval().to(device)
    return model, load_processor(name, revision)


def batches(dataset, collate, batch_size, progress=False, desc=None):
    """Yield `(rows that made it into the batch, batch)` (the collator needs `with_row_index=True`); rows the
    collator skips are counted by it. `progress`: a bar in rows with the time left."""
    bar = tqdm(total=len(dataset), desc=desc, unit="row", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate(rows)
        if batch:
            yield [rows[i] for i in batch.pop("row_index").tolist()], batch
        bar.update(len(rows))
    bar.close()


def generation_overrides(num_beams: int | None = None, max_new_tokens: int | None = None) -> dict:
    """The generation arguments a command line set; the others come from the model's `generation_config`."""
    return {k: v for k, v in dict(num_beams=num_beams, max_new_tokens=max_new_tokens).items() if v is not None}


@torch.inference_mode()
def generate_captions(model, processor, pixel_values, num_beams=None, max_new_tokens=None) -> list[str]:
    """Decoded captions of a batch of images, from the model's generation config and any override given."""
    ids = model.generate(pixel_values.to(model.device), **generation_overrides(num_beams, max_new_tokens))
    return processor.batch_decode(ids, skip_special_tokens=True)


@torch.inference_mode()
def encode_gallery(model, processor, pixel_values, captions: list[str], batch_size=64, text_batch_size=256,
                   progress=False):
    """Images and captions of a gallery, each encoded once in batches: `(images, texts)` as `model.rank` takes them."""
    images = encode_gallery_images(model, pixel_values, batch_size, progress=progress)
    tokens = processor(captions=captions)
    texts = encode_gallery_texts(model, tokens["caption_input_ids"], tokens["caption_attention_mask"], text_batch_size,
                                       progress=progress)
    return images, texts


@torch.inference_mode()
def rank_gallery(model, processor, pixel_values, captions: list[str], direction="i2t", top_k=128, exhaustive=False,
                 batch_size=64, encoded=None, progress=False, rerank_batch_size=None,
                 rerank_score="itm+similarity"):
    """Two-stage ranking of a gallery: images and captions are encoded once (pass `encoded` from an earlier call
    to reuse them), the embeddings shortlist `top_k` per query, the matching head re-ranks the shortlist.
    Returns `(scores (num_images, num_captions), pairs scored by cross-attention, encoded)`."""
    if encoded is None:
        encoded = encode_gallery(model, processor, pixel_values, captions, batch_size, progress=progress)
    scores, pairs = rank(model, *encoded, direction=direction, k=top_k, exhaustive=exhaustive,
                               batch_size=rerank_batch_size or rerank_batch_size_for(model), progress=progress,
                               score=rerank_score)
    return scores, pairs, encoded


def shortlist_sizes(value: str):
    """`--top_k` as given: "auto" (chosen from a time budget, `choose_shortlist`), one size for both directions
    ("128"), or one per direction ("i2t=64,t2i=16")."""
    import argparse

    if value.strip() == "auto":
        return "auto"
    try:
        return _shortlist_sizes(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _shortlist_sizes(value: str):
    if "=" not in value:
        if not value.strip().isdigit():
            raise ValueError(f"--top_k {value!r}: give a number, or i2t=K,t2i=K")
        return int(value)
    sizes = {}
    for part in value.split(","):
        direction, _, size = part.partition("=")
        if direction.strip() not in ("i2t", "t2i") or not size.strip().isdigit():
            raise ValueError(f"--top_k {value!r}: give a number, or i2t=K,t2i=K")
        sizes[direction.strip()] = int(size)
    if set(sizes) != {"i2t", "t2i"}:
        raise ValueError(f"--top_k {value!r}: give both directions, i2t=K,t2i=K")
    return sizes


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_pair_rate(model, encoded, batch_size: int | None = None, timed_batches: int = 2) -> float:
    """Pairs per second the matching head scores on this device, as re-ranking runs them: one batch of gallery
    pairs to warm up, then `timed_batches` batches timed."""
    batch_size = batch_size or rerank_batch_size_for(model)
    (image_tokens, _), (text_tokens, text_mask, _) = encoded
    count = batch_size * (timed_batches + 1)
    images = torch.arange(count, device=image_tokens.device) % len(image_tokens)
    texts = (torch.arange(count, device=image_tokens.device) * 7) % len(text_tokens)
    pair_scores(model, image_tokens, text_tokens, text_mask, images[:batch_size], texts[:batch_size], batch_size)
    synchronize(image_tokens.device)
    started = time.perf_counter()
    pair_scores(model, image_tokens, text_tokens, text_mask, images[batch_size:], texts[batch_size:], batch_size)
    synchronize(image_tokens.device)
    return (count - batch_size) / max(time.perf_counter() - started, 1e-9)


def rerank_pairs(num_images: int, num_texts: int, k) -> int:
    """Pairs two-stage retrieval scores in both directions with shortlist `k` (one size, or one per direction)."""
    i2t, t2i = (k["i2t"], k["t2i"]) if isinstance(k, dict) else (k, k)
    return num_images * min(i2t, num_texts) + num_texts * min(t2i, num_images)


def choose_shortlist(num_images: int, num_texts: int, pairs_per_second: float,
                     budget_seconds: float = RERANK_BUDGET_SECONDS) -> int:
    """`--top_k auto`: the largest of SHORTLIST_SIZES whose re-ranking in both directions is estimated to fit
    `budget_seconds` at `pairs_per_second`; 0 (the embeddings alone) when not even k = 1 fits."""
    for k in SHORTLIST_SIZES:
        if rerank_pairs(num_images, num_texts, k) / pairs_per_second <= budget_seconds:
            return k
    return 0


def plan_reranking(model, encoded, top_k, budget_seconds, batch_size, progress, exhaustive=False) -> tuple:
    """The shortlist size to use and what is known of its cost: `(top_k, {"top_k", "top_k_rule",
    "estimated_pairs_per_second", "estimated_seconds"})`; prints the estimate before re-ranking starts."""
    (_, image_embeds), (_, _, text_embeds) = encoded
    num_images, num_texts = len(image_embeds), len(text_embeds)
    rate = measure_pair_rate(model, encoded, batch_size)
    rule = "given"
    if exhaustive:
        top_k, rule = max(num_images, num_texts), "exhaustive"
    elif top_k == "auto":
        top_k, rule = choose_shortlist(num_images, num_texts, rate, budget_seconds), f"auto ({budget_seconds:g} s)"
    pairs = rerank_pairs(num_images, num_texts, top_k)
    plan = {"top_k": top_k, "top_k_rule": rule, "estimated_pairs_per_second": round(rate, 1),
            "estimated_seconds": round(pairs / rate, 1)}
    if progress:
        largest = rerank_pairs(num_images, num_texts, SHORTLIST_SIZES[0])
        tqdm.write(f"two-stage retrieval: k={top_k} per query ({rule}): {pairs:,} pairs at {rate:,.0f} pairs/s "
                   f"measured, about {pairs / rate:.0f} s"
                   + (f"; k={SHORTLIST_SIZES[0]} would take about {largest / rate:.0f} s" if largest > pairs else ""))
    return top_k, plan
