"""Evaluate a saved model on any dataset of the data layer, for every task its head supports.

    python scripts/evaluate.py --model outputs/xattn                         # embedded dataset, validation split
    python scripts/evaluate.py --model user/repo --revision <commit> --dataset karpathy \
        --data_file dataset_coco.json --data_dir coco/ --split test

Prints a table and writes `eval_results.json` and `eval_results.md` (which the model card and the Hub push use).
Tasks: classification (accuracy, macro-F1), captioning (BLEU-1..4, METEOR, ROUGE-L, CIDEr with the COCO toolkit),
retrieval (R@1/5/10 both directions, two-stage: embedding shortlist of `--top_k` re-ranked by the matching score).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_xattn.hub_xattn import load_pretrained, load_processor
from modeling_xattn.data_xattn import (
    BadRowCounter,
    XAttnCollator,
    add_data_arguments,
    load_split,
    undecoded,
)
from modeling_xattn.metrics_xattn import caption_metrics, classification_metrics, retrieval_metrics
from modeling_xattn.training_xattn import generation_overrides, usable_rows

TASKS = ("classification", "retrieval", "captioning")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a saved folder or a Hub id")
    p.add_argument("--revision", help="Hub revision (pin a commit)")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_beams", type=int, help="default: the model's generation_config.json")
    p.add_argument("--max_new_tokens", type=int, help="default: the model's generation_config.json")
    p.add_argument("--top_k", type=int, default=128,
                   help="retrieval shortlist size re-ranked by the matching score (0: rank by the embeddings alone)")
    p.add_argument("--caption_samples", type=int, default=0,
                   help="write caption_samples.png with this many photos and their generated and reference captions")
    p.add_argument("--exhaustive", action="store_true", help="score every image-text pair by cross-attention")
    p.add_argument("--no_java", action="store_true", help="caption metrics without Java (no METEOR)")
    p.add_argument("--output_dir", help="where to write eval_results.{json,md} (default: the model folder if local)")
    p.add_argument("--no_progress", action="store_true")
    add_data_arguments(p)
    return p.parse_args(argv)


def load_model(name: str, revision: str | None = None):
    """A saved multi-task model and its processor, from a folder or the Hub (custom code, safetensors only)."""
    return load_pretrained(name, revision).eval(), load_processor(name, revision)


def batches(dataset, collate, batch_size, progress, desc):
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, disable=not progress):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate(rows)
        if batch:
            yield [rows[i] for i in batch.pop("row_index").tolist()], batch  # the rows that made it in


@torch.inference_mode()
def evaluate_classification(model, processor, dataset, batch_size=32, progress=True, counter=None) -> dict:
    collate = XAttnCollator(processor, task="classification", counter=counter)
    predictions, labels = [], []
    for _, batch in batches(dataset, collate, batch_size, progress, "classification"):
        logits = model(pixel_values=batch["pixel_values"].to(model.device),
                       input_ids=batch["input_ids"].to(model.device),
                       attention_mask=batch["attention_mask"].to(model.device)).logits
        predictions.append(logits.argmax(-1).cpu())
        labels.append(batch["labels"])
    if not predictions:
        return {}
    return classification_metrics(torch.cat(predictions), torch.cat(labels), model.config.num_labels)


@torch.inference_mode()
def evaluate_captioning(model, processor, dataset, batch_size=32, num_beams=None, max_new_tokens=None, progress=True,
                        java=True, counter=None) -> tuple[dict, list[str]]:
    collate = XAttnCollator(processor, task="captioning", counter=counter)
    predictions, references = [], []
    for rows, batch in batches(dataset, collate, batch_size, progress, "captioning"):
        ids = model.generate(batch["pixel_values"].to(model.device), **generation_overrides(num_beams, max_new_tokens))
        predictions += processor.batch_decode(ids, skip_special_tokens=True)
        references += [list(row["captions"]) for row in rows]
    if not predictions:
        return {}, []
    return caption_metrics(predictions, references, tokenize=java), predictions


@torch.inference_mode()
def evaluate_retrieval(model, processor, dataset, batch_size=32, top_k=128, exhaustive=False, progress=True,
                       counter=None) -> dict:
    """Gallery = the split's images and all their captions; any of an image's captions is a hit."""
    if getattr(model, "retrieval", None) is None:
        return {}
    collate = XAttnCollator(processor, task="captioning", counter=counter)
    pixels, captions, owner, count = [], [], [], 0
    for rows, batch in batches(dataset, collate, batch_size, progress, "retrieval: images"):
        for row in rows:
            row_captions = [c for c in row["captions"] if c.strip()]
            captions += row_captions
            owner += [count] * len(row_captions)
            count += 1
        pixels.append(batch["pixel_values"])
    if not pixels:
        return {}
    pixels = torch.cat(pixels)
    started = time.perf_counter()
    images = model.encode_gallery_images(pixels, batch_size)
    tokens = processor(captions=captions)
    texts = model.encode_gallery_texts(tokens["caption_input_ids"], tokens["caption_attention_mask"], 256)
    owner = torch.tensor(owner, device=model.device)
    results = {}
    for direction in ("i2t", "t2i"):
        scores, pairs = model.rank(images, texts, direction=direction, k=top_k, exhaustive=exhaustive)
        metrics = retrieval_metrics(scores, owner)
        results.update({k: v for k, v in metrics.items() if k.startswith(direction)})
        results[f"{direction}_pair_evaluations"] = pairs
    results["seconds"] = time.perf_counter() - started
    results["gallery"] = f"{len(pixels)} images x {len(captions)} captions"
    # How spread out the embeddings are: a mean cosine near 1 between different images (or captions) means the
    # tower maps everything to nearly one point, which no loss on top of it can rank.
    # Matching pairs should be closer than the rest: the mean cosine of an image with its own captions and with others.
    results["image_embeds_mean_cosine"] = _mean_off_diagonal(images[1] @ images[1].T)
    results["text_embeds_mean_cosine"] = _mean_off_diagonal(texts[2] @ texts[2].T)
    cosine = (images[1] @ texts[2].T).float()
    own = owner[None, :] == torch.arange(len(images[1]), device=owner.device)[:, None]
    results["matching_mean_cosine"] = float(cosine[own].mean())
    results["non_matching_mean_cosine"] = float(cosine[~own].mean())
    return results


def _mean_off_diagonal(matrix: torch.Tensor) -> float:
    n = matrix.shape[0]
    return float((matrix.float().sum() - matrix.float().diagonal().sum()) / max(n * n - n, 1))


def markdown_table(results: dict) -> str:
    lines = ["| task | metric | value |", "|---|---|---|"]
    for task, metrics in results.items():
        for key, value in metrics.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {task} | {key} | {shown} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    model, processor = load_model(args.model, args.revision)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    counter = BadRowCounter()
    try:
        dataset = undecoded(load_split(args, args.split, counter))
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    tasks = [t for t in args.tasks.split(",") if t]
    progress = not args.no_progress
    # Each task is evaluated on the rows that carry its target; a row without one is not a bad row.
    labelled = usable_rows(dataset, "classification", BadRowCounter())
    captioned = usable_rows(dataset, "captioning", BadRowCounter())
    results = {}
    if "classification" in tasks and len(labelled):
        results["classification"] = evaluate_classification(model, processor, labelled, args.batch_size, progress, counter)
    output_dir = args.output_dir or (args.model if os.path.isdir(args.model) else "eval_output")
    if "captioning" in tasks and len(captioned) and getattr(model, "captioner", None) is not None:
        results["captioning"], _ = evaluate_captioning(
            model, processor, captioned, args.batch_size, args.num_beams, args.max_new_tokens, progress,
            java=not args.no_java, counter=counter)
        if args.caption_samples:
            caption_samples(model, processor, captioned, args, Path(output_dir) / "caption_samples.png")
    if "retrieval" in tasks and len(captioned):
        results["retrieval"] = evaluate_retrieval(model, processor, captioned, args.batch_size, args.top_k,
                                                  args.exhaustive, progress, counter)
    results = {task: metrics for task, metrics in results.items() if metrics}
    if not results:  # nothing to report: leave any earlier eval_results.json as it was
        raise SystemExit(f"nothing evaluated: the {args.split} split ({len(dataset)} rows: {len(labelled)} with a "
                         f"label, {len(captioned)} with captions) gave no result for --tasks {args.tasks} and this "
                         f"model. {counter.summary()}")
    os.makedirs(output_dir, exist_ok=True)
    payload = {"model": args.model, "revision": args.revision, "dataset": args.dataset_name or args.dataset,
               "data": args.dataset_name or args.data_dir or args.data_file, "split": args.split, "results": results,
               "bad_rows": dict(counter.counts), "converted": dict(counter.converted)}
    Path(output_dir, "eval_results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    table = markdown_table(results)
    Path(output_dir, "eval_results.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(counter.summary())
    return payload


def caption_samples(model, processor, dataset, args, path: Path):
    """`caption_samples.png`: the first `--caption_samples` readable photos with their generated and reference captions."""
    from modeling_xattn.training_xattn import plot_caption_samples

    collate = XAttnCollator(processor, task="captioning")
    rows, batch = next(batches(dataset.select(range(min(args.caption_samples, len(dataset)))), collate,
                               args.caption_samples, False, "samples"))
    ids = model.generate(batch["pixel_values"].to(model.device),
                         **generation_overrides(args.num_beams, args.max_new_tokens))
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_caption_samples([row["image"] for row in rows], processor.batch_decode(ids, skip_special_tokens=True),
                         [list(row["captions"]) for row in rows], str(path))


if __name__ == "__main__":
    main()
