"""Evaluation: each task on a dataset of the common schema, the multi-task validation of the training loop, gallery
ranking, and the results table.

    model, processor = load_model("outputs/xattn")
    results = evaluate_model(model, processor, dataset, tasks=("classification", "retrieval", "captioning"))
    print(markdown_table(results))

Classification gives accuracy and macro-F1; captioning BLEU-1..4, METEOR, ROUGE-L and CIDEr with the COCO toolkit;
retrieval R@1/5/10 both directions, two-stage (the embeddings shortlist `top_k`, the matching head re-ranks).
"""

from __future__ import annotations

import logging
import time

import torch
from tqdm.auto import tqdm

from modeling_xattn.training.collate import XAttnCollator
from modeling_xattn.training.data.schema import BadRowCounter
from modeling_xattn.training.hub import load_pretrained, load_processor
from modeling_xattn.training.metrics import caption_metrics, classification_metrics, recall_at_k, retrieval_metrics
from modeling_xattn.training.plots import plot_caption_samples
from modeling_xattn.training.tasks import EVALUATED_TASKS, LOSS_KEYS, usable_rows

logger = logging.getLogger(__name__)

TASKS = EVALUATED_TASKS  # the tasks evaluate_model scores (the registry's)


def load_model(name: str, revision: str | None = None):
    """A saved multi-task model and its processor, from a folder or the Hub (custom code, safetensors only)."""
    return load_pretrained(name, revision).eval(), load_processor(name, revision)


def batches(dataset, collate, batch_size, progress=False, desc=None):
    """Yield `(rows that made it into the batch, batch)` (the collator needs `with_row_index=True`); rows the
    collator skips are counted by it."""
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, disable=not progress):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate(rows)
        if batch:
            yield [rows[i] for i in batch.pop("row_index").tolist()], batch


@torch.inference_mode()
def evaluate_classification(model, processor, dataset, batch_size=32, progress=True, counter=None) -> dict:
    collate = XAttnCollator(processor, task="classification", counter=counter, head="classification",
                            with_row_index=True)
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
def generate_captions(model, processor, pixel_values, num_beams=None, max_new_tokens=None) -> list[str]:
    """Decoded captions of a batch of images, from the model's generation config and any override given."""
    ids = model.generate(pixel_values.to(model.device), **generation_overrides(num_beams, max_new_tokens))
    return processor.batch_decode(ids, skip_special_tokens=True)


@torch.inference_mode()
def evaluate_captioning(model, processor, dataset, batch_size=32, num_beams=None, max_new_tokens=None, progress=True,
                        java=True, counter=None) -> tuple[dict, list[str]]:
    collate = XAttnCollator(processor, task="captioning", counter=counter, with_row_index=True)
    predictions, references = [], []
    for rows, batch in batches(dataset, collate, batch_size, progress, "captioning"):
        predictions += generate_captions(model, processor, batch["pixel_values"], num_beams, max_new_tokens)
        references += [list(row["captions"]) for row in rows]
    if not predictions:
        return {}, []
    return caption_metrics(predictions, references, tokenize=java), predictions


@torch.inference_mode()
def encode_gallery(model, processor, pixel_values, captions: list[str], batch_size=64, text_batch_size=256):
    """Images and captions of a gallery, each encoded once in batches: `(images, texts)` as `model.rank` takes them."""
    images = model.encode_gallery_images(pixel_values, batch_size)
    tokens = processor(captions=captions)
    texts = model.encode_gallery_texts(tokens["caption_input_ids"], tokens["caption_attention_mask"], text_batch_size)
    return images, texts


@torch.inference_mode()
def rank_gallery(model, processor, pixel_values, captions: list[str], direction="i2t", top_k=128, exhaustive=False,
                 batch_size=64, encoded=None):
    """Two-stage ranking of a gallery: images and captions are encoded once (pass `encoded` from an earlier call
    to reuse them), the embeddings shortlist `top_k` per query, the matching head re-ranks the shortlist.
    Returns `(scores (num_images, num_captions), pairs scored by cross-attention, encoded)`."""
    if encoded is None:
        encoded = encode_gallery(model, processor, pixel_values, captions, batch_size)
    scores, pairs = model.rank(*encoded, direction=direction, k=top_k, exhaustive=exhaustive)
    return scores, pairs, encoded


def shortlist_sizes(value: str):
    """`--top_k` as given: one size for both directions ("128"), or one per direction ("i2t=64,t2i=16")."""
    import argparse

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


def recall_at_1_by_k(scores: torch.Tensor, similarity: torch.Tensor, text_to_image: torch.Tensor, direction: str,
                     ks) -> dict[int, float]:
    """R@1 of two-stage ranking for every shortlist size in `ks`, from one ranking's `(num_images, num_texts)`
    matrix (`model.rank`) whose shortlist was at least `max(ks)` long (or exhaustive): the top k of a query by
    embedding `similarity` are inside its longer shortlist, so each smaller k re-ranks pairs already scored. What
    the benchmark picks each direction's k from."""
    queries = similarity if direction == "i2t" else similarity.T
    scored = scores if direction == "i2t" else scores.T
    curve = {}
    for k in ks:
        top = queries.topk(min(k, queries.shape[1]), dim=1).indices
        shortlist = torch.zeros_like(queries, dtype=torch.bool).scatter_(1, top, True)
        ranked = torch.where(shortlist, scored, queries - 1e4)
        ranked = ranked if direction == "i2t" else ranked.T
        curve[int(k)] = retrieval_metrics(ranked.float().cpu(), text_to_image.cpu(), ks=(1,))[f"{direction}_R@1"]
    return curve


@torch.inference_mode()
def evaluate_retrieval(model, processor, dataset, batch_size=32, top_k=128, exhaustive=False, progress=True,
                       counter=None) -> dict:
    """Gallery = the split's images and all their captions; any of an image's captions is a hit. `top_k`: one
    shortlist size, or one per direction (`{"i2t": 64, "t2i": 16}`, as `scripts/benchmark.py` picks them from its
    R@1-vs-k curve)."""
    if getattr(model, "retrieval", None) is None:
        return {}
    if getattr(model.config, "lambda_itm", 1.0) == 0 and (top_k or exhaustive):
        # a matching head trained with weight 0 (the paper recipe has no such loss) would re-rank at random
        logger.warning("the matching head was trained with lambda_itm=0: ranking by the embeddings alone (top_k 0)")
        top_k, exhaustive = 0, False
    collate = XAttnCollator(processor, task="captioning", counter=counter, with_row_index=True)
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
    owner = torch.tensor(owner, device=model.device)
    results, encoded = {}, None
    for direction in ("i2t", "t2i"):
        k = top_k[direction] if isinstance(top_k, dict) else top_k
        scores, pairs, encoded = rank_gallery(model, processor, pixels, captions, direction, k, exhaustive,
                                              batch_size, encoded)
        metrics = retrieval_metrics(scores, owner)
        results.update({k: v for k, v in metrics.items() if k.startswith(direction)})
        results[f"{direction}_pair_evaluations"] = pairs
    results["seconds"] = time.perf_counter() - started
    results["gallery"] = f"{len(pixels)} images x {len(captions)} captions"
    (_, image_embeds), (_, _, text_embeds) = encoded  # (tokens, embeddings), (tokens, mask, embeddings)
    if not exhaustive and (min(top_k.values()) if isinstance(top_k, dict) else top_k) > 0:
        # the first stage alone, beside the two-stage figures: what re-ranking with the matching head adds
        similarity = model.retrieval.similarity(image_embeds, text_embeds).float().cpu()
        results.update({f"embedding_{k}": v for k, v in retrieval_metrics(similarity, owner.cpu()).items()})
    results.update(embedding_spread(image_embeds, text_embeds, owner))
    return results


def embedding_spread(image_embeds, text_embeds, owner) -> dict:
    """How spread out the embeddings are: a mean cosine near 1 between different images (or captions) means a tower
    maps everything to nearly one point, which no ranking on top of it can undo; matching pairs should be closer than
    the rest. `owner[j]` is the image of caption j."""
    def mean_off_diagonal(matrix):
        n = matrix.shape[0]
        return float((matrix.float().sum() - matrix.float().diagonal().sum()) / max(n * n - n, 1))

    cosine = (image_embeds @ text_embeds.T).float()
    own = owner[None, :] == torch.arange(len(image_embeds), device=owner.device)[:, None]
    return {"image_embeds_mean_cosine": mean_off_diagonal(image_embeds @ image_embeds.T),
            "text_embeds_mean_cosine": mean_off_diagonal(text_embeds @ text_embeds.T),
            "matching_mean_cosine": float(cosine[own].mean()),
            "non_matching_mean_cosine": float(cosine[~own].mean())}


def evaluate_model(model, processor, dataset, tasks=TASKS, batch_size=32, num_beams=None, max_new_tokens=None,
                   top_k=128, exhaustive=False, java=True, progress=True, counter=None) -> dict:
    """Every task of `tasks` the model has a head for, each on the rows that carry its target (a row without one is
    not a bad row). Returns `{task: metrics}` for the tasks that gave a result."""
    tasks = [t for t in tasks.split(",") if t] if isinstance(tasks, str) else list(tasks)
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"evaluate_model: unknown tasks {sorted(unknown)}; choose from {', '.join(TASKS)}")
    counter = counter if counter is not None else BadRowCounter()
    labelled = usable_rows(dataset, "classification", BadRowCounter())
    captioned = usable_rows(dataset, "captioning", BadRowCounter())
    results = {}
    if "classification" in tasks and len(labelled):
        results["classification"] = evaluate_classification(model, processor, labelled, batch_size, progress, counter)
    if "captioning" in tasks and len(captioned) and getattr(model, "captioner", None) is not None:
        results["captioning"], _ = evaluate_captioning(model, processor, captioned, batch_size, num_beams,
                                                       max_new_tokens, progress, java, counter)
    if "retrieval" in tasks and len(captioned):
        results["retrieval"] = evaluate_retrieval(model, processor, captioned, batch_size, top_k, exhaustive,
                                                  progress, counter)
    return {task: metrics for task, metrics in results.items() if metrics}


def caption_samples(model, processor, dataset, count: int, path, num_beams=None, max_new_tokens=None) -> None:
    """A picture of the first `count` readable photos of `dataset` with their generated and reference captions."""
    collate = XAttnCollator(processor, task="captioning", with_row_index=True)
    rows, batch = next(batches(dataset.select(range(min(count, len(dataset)))), collate, count))
    predictions = generate_captions(model, processor, batch["pixel_values"], num_beams, max_new_tokens)
    plot_caption_samples([row["image"] for row in rows], predictions, [list(row["captions"]) for row in rows],
                         str(path))


def markdown_table(rows, columns=None) -> str:
    """One markdown table writer. `rows` is `{task: {metric: value}}` (rendered as task | metric | value), or a list
    of dicts rendered with `columns` (default: the first dict's keys). Floats get 4 significant digits."""
    def shown(value):
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    if isinstance(rows, dict):
        rows = [{"task": task, "metric": key, "value": value}
                for task, metrics in rows.items() for key, value in metrics.items()]
        columns = ["task", "metric", "value"]
    columns = columns or (list(rows[0]) if rows else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(shown(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


@torch.no_grad()
def evaluate_multitask(model, dataloader, accelerator, max_batches=None) -> dict:
    """The training loop's validation: losses per task (Formula 4 and its parts), 3-way or VQA accuracy, and
    image->text retrieval over the whole validation set from the unimodal embeddings (one caption per image)."""
    model.eval()
    sums, count, correct, labelled, vqa_sum, vqa_count = {}, 0, 0, 0, 0.0, 0
    image_embeds, text_embeds, ids = [], [], []
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    for step, batch in enumerate(dataloader):
        if max_batches is not None and step >= max_batches:
            break
        if not batch:
            continue
        with accelerator.autocast():
            out = model(**batch)
        size = len(batch["pixel_values"])
        for key in ("loss", *LOSS_KEYS):
            value = getattr(out, key)
            if value is not None:
                total = accelerator.gather_for_metrics(value.detach().float().reshape(1) * size).sum()
                sums[key] = sums.get(key, 0.0) + float(total)
        count += int(accelerator.gather_for_metrics(torch.tensor([size], device=accelerator.device)).sum())
        if out.logits is not None and "labels" in batch and batch["labels"].dim() == 2:  # VQA soft scores
            answered = ~(batch["labels"] == -100).any(-1)  # rows without a question carry -100
            scores = batch["labels"][answered].gather(1, out.logits[answered].argmax(-1, keepdim=True)).squeeze(1)
            vqa_sum += float(accelerator.gather_for_metrics(scores).sum())
            vqa_count += int(accelerator.gather_for_metrics(torch.tensor([len(scores)], device=accelerator.device)).sum())
        if out.logits is not None and "labels" in batch and batch["labels"].dim() == 1:
            predictions, labels = accelerator.gather_for_metrics((out.logits.argmax(-1), batch["labels"]))
            mask = labels != -100
            correct += int((predictions[mask] == labels[mask]).sum())
            labelled += int(mask.sum())
        if out.image_embeds is not None:  # the forward pass's own retrieval embeddings: nothing is encoded twice
            image_ids = batch["image_ids"]
            if "caption_attention_mask" in batch:  # the embeddings cover the rows that have a caption
                image_ids = image_ids[batch["caption_attention_mask"].bool().any(-1)]
            gathered = accelerator.gather_for_metrics((out.image_embeds, out.text_embeds, image_ids))
            image_embeds.append(gathered[0].float())
            text_embeds.append(gathered[1].float())
            ids.append(gathered[2])
    metrics = {f"val_{key}": value / max(count, 1) for key, value in sums.items()}
    if labelled:
        metrics["val_accuracy"] = 100.0 * correct / labelled
    if vqa_count:
        metrics["val_vqa_accuracy"] = 100.0 * vqa_sum / vqa_count  # min(#annotators / 3, 1) of the top answer
    if image_embeds:
        images, texts, all_ids = torch.cat(image_embeds), torch.cat(text_embeds), torch.cat(ids)
        similarity = -unwrapped.retrieval.distance(images, texts)
        positives = all_ids[:, None] == all_ids[None, :]
        metrics.update({f"val_i2t_{k}": v for k, v in recall_at_k(similarity, positives).items()})
    model.train()
    return metrics


__all__ = ["TASKS", "batches", "caption_samples", "embedding_spread", "encode_gallery", "evaluate_captioning",
           "evaluate_classification", "evaluate_model", "evaluate_multitask", "evaluate_retrieval",
           "generate_captions", "load_model", "markdown_table", "rank_gallery"]


def generation_overrides(num_beams: int | None = None, max_new_tokens: int | None = None) -> dict:
    """The generation arguments a command line set; the others come from the model's `generation_config`."""
    return {k: v for k, v in dict(num_beams=num_beams, max_new_tokens=max_new_tokens).items() if v is not None}
