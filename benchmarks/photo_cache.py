"""photo_cache: making a batch of --batch_size image-caption pairs with and without the photo cache (every read
after the first), at 64 px and 224 px."""

from __future__ import annotations

from benchmarks import common
from modeling_xattn import XAttnProcessor, train_albert_tokenizer
from modeling_xattn.processing_xattn import make_image_processor
from modeling_xattn.training.data.synthetic import synthetic_dataset


def bench(args, device) -> dict:
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
            result[f"{size}px_{name}_s"] = common.measure(lambda: collate(take), device, args.repeats, 0)["median_s"]
    return result


def rows(c: dict) -> list[tuple]:
    rows = []
    for size in (64, 224):
        rows.append((f"making a batch of {c['photos']} photos at {size} px ({c['data']}): without / with the photo "
                     "cache", f"{1000 * c[f'{size}px_no_cache_s']:.1f} / {1000 * c[f'{size}px_cache_s']:.1f} ms",
                     f"{c[f'{size}px_no_cache_s'] / c[f'{size}px_cache_s']:.0f}x", ""))
    return rows
