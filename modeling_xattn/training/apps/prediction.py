"""Predictions from the command line behind `scripts/predict.py` (its docstring has the commands): caption, classify,
answer, and rank images or captions, over files and folders in batches, unreadable images skipped and listed. In
Python, the pipelines (`pipeline_xattn`) do the same per image.
"""


from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_xattn.processing_xattn import to_rgb
from modeling_xattn.training.data.schema import load_image
from modeling_xattn.training.evaluation import generate_captions, rank_gallery
from modeling_xattn.training.hub import load_pretrained, load_processor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def parse_args(argv=None, description: str | None = None):
    p = argparse.ArgumentParser(description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["caption", "classify", "answer", "rank-images", "rank-captions"])
    p.add_argument("--model", required=True)
    p.add_argument("--revision")
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--text", help="statement (classify), question (answer) or query (rank-images)")
    p.add_argument("--captions", nargs="+", help="candidate captions (rank-captions)")
    p.add_argument("--num_beams", type=int, help="default: the model's generation_config.json")
    p.add_argument("--max_new_tokens", type=int, help="default: the model's generation_config.json")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--top_k", type=int, default=10, help="results shown when ranking")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def image_paths(items) -> list[Path]:
    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(path)
    return paths


def read_images(paths, skipped):
    for path in paths:
        try:
            yield path, to_rgb(load_image(str(path)))
        except Exception as error:  # unreadable: skip it, say so at the end
            skipped.append(f"{path}: {type(error).__name__}: {error}")


def batched(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.inference_mode()
def main(argv=None, description: str | None = None):
    """Run one prediction command (`scripts/predict.py` is this) and print its results."""
    args = parse_args(argv, description)
    if args.command in ("classify", "answer", "rank-images") and not args.text:
        raise SystemExit(f"{args.command} needs --text")
    if args.command == "rank-captions" and not args.captions:
        raise SystemExit("rank-captions needs --captions")
    model = load_pretrained(args.model, args.revision).eval()
    processor = load_processor(args.model, args.revision)
    paths, skipped, results = image_paths(args.images), [], []
    labels = model.config.id2label
    progress = tqdm(total=len(paths), desc=args.command, disable=len(paths) < 2, file=sys.stderr)
    gallery = []  # rank-images: (path, image embedding, image tokens)
    for batch in batched(read_images(paths, skipped), args.batch_size):
        names, images = [str(p) for p, _ in batch], [image for _, image in batch]
        if args.command == "caption":
            inputs = processor(images=images)
            texts = generate_captions(model, processor, inputs["pixel_values"], args.num_beams, args.max_new_tokens)
            for name, text in zip(names, texts):
                results.append({"image": name, "caption": text})
        elif args.command in ("classify", "answer"):
            inputs = processor(images=images, text=[args.text] * len(images))
            probabilities = model(**inputs).logits.softmax(-1)
            for name, row in zip(names, probabilities):
                ranked = sorted(((labels[i], float(p)) for i, p in enumerate(row)), key=lambda x: -x[1])
                key = "label" if args.command == "classify" else "answer"
                results.append({"image": name, key: ranked[0][0], "probabilities": dict(ranked[: args.top_k])})
        elif args.command == "rank-images":
            tokens, embeds = model.encode_gallery_images(processor(images=images)["pixel_values"])
            gallery += list(zip(names, embeds, tokens))
        else:  # rank-captions
            scores, _, _ = rank_gallery(model, processor, processor(images=images)["pixel_values"], args.captions,
                                        direction="i2t", top_k=args.top_k)
            for name, row in zip(names, scores):
                order = row.argsort(descending=True)[: args.top_k]
                results.append({"image": name, "captions": [{"caption": args.captions[j], "score": float(row[j])}
                                                             for j in order]})
        progress.update(len(batch))
    progress.close()
    if args.command == "rank-images" and gallery:
        query = processor(captions=[args.text])
        texts = model.encode_gallery_texts(query["caption_input_ids"], query["caption_attention_mask"])
        images_encoded = (torch.stack([g[2] for g in gallery]), torch.stack([g[1] for g in gallery]))
        scores, _ = model.rank(images_encoded, texts, direction="t2i", k=args.top_k)
        order = scores[:, 0].argsort(descending=True)[: args.top_k]
        results = [{"image": gallery[i][0], "score": float(scores[i, 0])} for i in order]
    if args.json:
        print(json.dumps({"command": args.command, "results": results, "skipped": skipped}, indent=2))
    else:
        for row in results:
            print(json.dumps(row, ensure_ascii=False))
        for line in skipped:
            print(f"skipped {line}", file=sys.stderr)
    return results


