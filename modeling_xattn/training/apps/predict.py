"""Predictions from the command line behind `scripts/predict.py` (its docstring has the commands): caption, classify,
answer, and rank images or captions, over files and folders in batches, unreadable images skipped and listed. In
Python, the pipelines (`pipeline_xattn`) do the same per image.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from modeling_xattn.processing_xattn import to_rgb
from modeling_xattn.training.data.schema import load_image
from modeling_xattn.training.gallery import encode_gallery_images, encode_gallery_texts, rank
from modeling_xattn.training.inference import generate_captions, load_model, rank_gallery
from modeling_xattn.training.options import option, parser_for

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


COMMANDS = ("caption", "classify", "answer", "rank-images", "rank-captions")


@dataclass(kw_only=True)
class PredictArguments:
    """The model, the images and what to ask of them (the command itself is the first word: `COMMANDS`)."""

    _argument_group_name = "prediction"

    model: str = field(metadata={"help": "a saved folder or a Hub id"})
    revision: str | None = option(None, "Hub revision (pin a commit)")
    images: list[str] = field(metadata={"help": "image files and/or folders"})
    text: str | None = option(None, "statement (classify), question (answer) or query (rank-images)")
    captions: list[str] | None = option(None, "candidate captions (rank-captions)", nargs="+")
    num_beams: int | None = option(None, "default: the model's generation_config.json")
    max_new_tokens: int | None = option(None, "default: the model's generation_config.json")
    batch_size: int = option(16)
    top_k: int = option(10, "results shown when ranking")
    json: bool = option(False)
    device: str | None = option(None, "cuda, cuda:N, mps or cpu (default: CUDA where available, else MPS, else CPU)")


@dataclass(kw_only=True)
class PredictOptions(PredictArguments):
    """The command and its options."""

    command: Literal["caption", "classify", "answer", "rank-images", "rank-captions"]


def parse_args(argv=None, description: str | None = None) -> PredictOptions:
    parser = parser_for((PredictArguments,), description or __doc__)
    parser.add_argument("command", choices=COMMANDS)
    return PredictOptions(**vars(parser.parse_args(argv)))


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
    model, processor = load_model(args.model, args.revision, args.device)
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
            probabilities = model(**inputs.to(model.device)).logits.softmax(-1)
            for name, row in zip(names, probabilities):
                ranked = sorted(((labels[i], float(p)) for i, p in enumerate(row)), key=lambda x: -x[1])
                key = "label" if args.command == "classify" else "answer"
                results.append({"image": name, key: ranked[0][0], "probabilities": dict(ranked[: args.top_k])})
        elif args.command == "rank-images":
            tokens, embeds = encode_gallery_images(model, processor(images=images)["pixel_values"])
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
        texts = encode_gallery_texts(model, query["caption_input_ids"], query["caption_attention_mask"])
        images_encoded = (torch.stack([g[2] for g in gallery]), torch.stack([g[1] for g in gallery]))
        scores, _ = rank(model, images_encoded, texts, direction="t2i", k=args.top_k)
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


