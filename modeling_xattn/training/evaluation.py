"""Evaluation: each task scored on a dataset of the common schema, the multi-task validation of the training loop,
and the files an evaluation writes (inference itself, loading, generating and ranking, is `inference.py`).

    model, processor = load_model("outputs/xattn")                  # inference.load_model
    results = evaluate_model(model, processor, dataset, tasks=("classification", "retrieval", "captioning"))
    print(markdown_table(results))                                  # metrics.markdown_table

Classification gives accuracy and macro-F1; captioning BLEU-1..4, METEOR, ROUGE-L and CIDEr with the COCO toolkit;
retrieval R@1/5/10 both directions, two-stage (the embeddings shortlist `top_k`, the matching head re-ranks), five
captions per image as the COCO 5k and Flickr30k 1k protocols count them; VQA the official accuracy (data/vqa.py).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from modeling_xattn.training.collate import XAttnCollator
from modeling_xattn.training.data.schema import BadRowCounter
from modeling_xattn.training.data.vqa import overall_accuracy, vqa_accuracy
from modeling_xattn.training.gallery import pair_scores
from modeling_xattn.training.inference import (
    RERANK_BUDGET_SECONDS,
    batches,
    encode_gallery,
    generate_captions,
    plan_reranking,
    rank_gallery,
    rerank_batch_size_for,
)
from modeling_xattn.training.metrics import (
    caption_metrics,
    classification_metrics,
    recall_at_k,
    retrieval_metrics,
)
from modeling_xattn.training.plots import plot_caption_samples
from modeling_xattn.training.tasks import REGISTRY, evaluated_tasks, loss_keys, usable_rows

logger = logging.getLogger(__name__)


def image_id(row: dict, position: int, key: str = "image_id") -> int | str:
    """The id a results file gives a row's photo (or, with `key="question_id"`, its question): the row's own (an
    integer when it is one, as COCO's and VQA's are, so the file matches their annotation files), or its position
    among the rows evaluated."""
    value = row.get(key)
    value = str(value) if value not in (None, "") else str(position)
    return int(value) if value.isdigit() else value


@torch.inference_mode()
def evaluate_classification(model, processor, dataset, batch_size=32, progress=True, counter=None) -> dict:
    collate = XAttnCollator(processor, targets="statement", counter=counter,
                            model="XAttnForSequenceClassification", with_row_index=True)
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
def evaluate_vqa(model, processor, dataset, batch_size=32, progress=True, counter=None,
                 outputs: dict | None = None) -> dict:
    """The official VQA accuracy (data/vqa.py: normalised answers, the 10-choose-9 average) of the model's top answer
    for every question that has human answers, overall and per answer type, as percentages rounded to 2 places. A
    model whose classifier is not a VQA one (trained on answers as soft scores) gives nothing. `outputs`, when given,
    receives `vqa_results`, the official results file `[{"question_id", "answer"}]`, answering every question of
    `dataset` (with or without human answers, as the evaluation server requires): a question whose image could not
    be read gets the most frequent training answer, counted in `questions_without_image`."""
    if getattr(model.config, "problem_type", None) != "multi_label_classification":
        return {}
    answers = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    collate = XAttnCollator(processor, targets="question", answer_vocab=answers, counter=counter,
                            model="XAttnForSequenceClassification", with_row_index=True)
    predicted = {}
    for rows, batch in batches(dataset, collate, batch_size, progress, "vqa"):
        logits = model(pixel_values=batch["pixel_values"].to(model.device),
                       input_ids=batch["input_ids"].to(model.device),
                       attention_mask=batch["attention_mask"].to(model.device)).logits
        for row, top in zip(rows, logits.argmax(-1).tolist()):
            predicted[image_id(row, len(predicted), "question_id")] = answers[top]
    columns = [c for c in ("question_id", "answers", "answer_type") if c in dataset.column_names]
    accuracies, by_type, results, without_image = [], {}, [], 0
    for position, row in enumerate(dataset.select_columns(columns)):
        question = image_id(row, position, "question_id")
        if question not in predicted:
            without_image += 1
        answer = predicted.get(question, answers[0])  # (the vocabulary is ordered by training frequency)
        results.append({"question_id": question, "answer": answer})
        if row.get("answers"):
            accuracies.append(vqa_accuracy(answer, list(row["answers"])))
            by_type.setdefault(row.get("answer_type") or "", []).append(accuracies[-1])
    if outputs is not None and results:
        outputs["vqa_results"] = results
    metrics = {"questions": len(results), "questions_with_answers": len(accuracies),
               "questions_without_image": without_image}
    if accuracies:
        metrics["vqa_accuracy"] = overall_accuracy(accuracies)
        metrics.update({f"vqa_accuracy_{kind.replace('/', '_')}": overall_accuracy(values)
                        for kind, values in sorted(by_type.items()) if kind})
    return metrics if results else {}


@torch.inference_mode()
def evaluate_captioning(model, processor, dataset, batch_size=32, num_beams=None, max_new_tokens=None, progress=True,
                        java=True, counter=None, outputs: dict | None = None) -> tuple[dict, list[str]]:
    """Caption every photo and score the captions against its references. `outputs`, when given, receives
    `captions` (a COCO results list, `[{"image_id", "caption"}]`, one per photo) and `references` (the COCO
    annotation layout, `{"images": [...], "annotations": [...]}`), which `write_predictions` saves."""
    collate = XAttnCollator(processor, targets="caption", counter=counter, with_row_index=True)
    predictions, references, ids = [], [], []
    for rows, batch in batches(dataset, collate, batch_size, progress, "captioning"):
        predictions += generate_captions(model, processor, batch["pixel_values"], num_beams, max_new_tokens)
        references += [list(row["captions"]) for row in rows]
        ids += [image_id(row, len(ids) + n) for n, row in enumerate(rows)]
    if not predictions:
        return {}, []
    if outputs is not None:
        outputs["captions"] = [{"image_id": i, "caption": c} for i, c in zip(ids, predictions)]
        outputs["references"] = coco_references(ids, references)
    return caption_metrics(predictions, references, tokenize=java, progress=progress), predictions


def validation_caption_metrics(model, processor, dataset, count: int, accelerator) -> dict:
    """The COCO toolkit's scores (`val_CIDEr`, `val_BLEU-4`, ...) of greedy captions for the first `count` captioned
    photos of `dataset`, what `--metric_for_best_model cider` compares (as BLIP and LAVIS select captioning
    checkpoints). The main process captions and scores (Java's PTB tokenizer and METEOR where Java is present) and
    shares the figures, so that every process takes the same decision about the best model."""
    import shutil

    from accelerate.utils import broadcast_object_list

    shared = [None]
    if accelerator.is_main_process:
        plain = accelerator.unwrap_model(model, keep_torch_compile=False)
        rows = usable_rows(dataset, "caption", BadRowCounter())
        rows = rows.select(range(min(count, len(rows))))
        plain.eval()
        with accelerator.autocast():
            metrics, _ = evaluate_captioning(plain, processor, rows, num_beams=1, progress=False,
                                             java=shutil.which("java") is not None)
        plain.train()
        shared = [{f"val_{key}": value for key, value in metrics.items()}]
    if accelerator.num_processes > 1:
        broadcast_object_list(shared)
    return shared[0] or {}


def coco_references(ids: list[str], references: list[list[str]]) -> dict:
    """References in the COCO captions annotation layout (what `pycocotools.coco.COCO` and the toolkit read)."""
    annotations = []
    for photo, captions in zip(ids, references):
        for caption in captions:
            annotations.append({"image_id": photo, "id": len(annotations), "caption": caption})
    return {"images": [{"id": photo} for photo in ids], "annotations": annotations, "type": "captions"}


# The standard retrieval protocols (COCO's 5k Karpathy test, Flickr30k's 1k test, as ALBEF and BLIP report them)
# count five captions per image; COCO gives some images six or seven, of which the first five count.
CAPTIONS_PER_IMAGE = 5


@torch.inference_mode()
def evaluate_retrieval(model, processor, dataset, batch_size=32, top_k=128, exhaustive=False, progress=True,
                       counter=None, rerank_budget=RERANK_BUDGET_SECONDS, rerank_batch_size=None,
                       outputs: dict | None = None, captions_per_image: int = CAPTIONS_PER_IMAGE,
                       rerank_score: str = "itm+similarity") -> dict:
    """Gallery = the split's images and the first `captions_per_image` of each one's captions (0: all of them); any
    of an image's captions is a hit. `top_k`: one
    shortlist size, one per direction (`{"i2t": 64, "t2i": 16}`, as `scripts/benchmark.py` picks them from its
    R@1-vs-k curve), or "auto" (`choose_shortlist` within `rerank_budget` seconds). `rerank_score`: how a
    shortlisted pair is scored (`RERANK_SCORES`). `outputs`, when given, receives `retrieval`: each query's top 10
    (`ranked_lists`). With a matching head, also the head against each photo's hardest other caption
    (`matching_against_hardest`)."""
    if getattr(model, "retrieval", None) is None:
        return {}
    if getattr(model.config, "lambda_itm", 1.0) == 0 and (top_k or exhaustive):
        # a matching head trained with weight 0 (the paper recipe has no such loss) would re-rank at random
        logger.warning("the matching head was trained with lambda_itm=0: ranking by the embeddings alone (top_k 0)")
        top_k, exhaustive = 0, False
    collate = XAttnCollator(processor, targets="caption", counter=counter, with_row_index=True)
    pixels, captions, owner, ids = [], [], [], []
    for rows, batch in batches(dataset, collate, batch_size, progress, "retrieval: reading photos"):
        for row in rows:
            row_captions = [c for c in row["captions"] if c.strip()]
            row_captions = row_captions[:captions_per_image] if captions_per_image else row_captions
            captions += row_captions
            owner += [len(ids)] * len(row_captions)
            ids.append(image_id(row, len(ids)))
        pixels.append(batch["pixel_values"])
    if not pixels:
        return {}
    pixels = torch.cat(pixels)
    started = time.perf_counter()
    owner = torch.tensor(owner, device=model.device)
    encoded = encode_gallery(model, processor, pixels, captions, batch_size, progress=progress)
    results = {}
    if exhaustive or top_k:
        top_k, plan = plan_reranking(model, encoded, top_k, rerank_budget, rerank_batch_size, progress, exhaustive)
        results.update(plan)
    scores_by_direction = {}
    for direction in ("i2t", "t2i"):
        k = top_k[direction] if isinstance(top_k, dict) else top_k
        ranking_started = time.perf_counter()
        scores, pairs, _ = rank_gallery(model, processor, pixels, captions, direction, k, exhaustive, batch_size,
                                        encoded, progress, rerank_batch_size, rerank_score)
        metrics = retrieval_metrics(scores, owner)
        results.update({k: v for k, v in metrics.items() if k.startswith(direction)})
        results[f"{direction}_pair_evaluations"] = pairs
        if pairs:
            results["rerank_score"] = rerank_score
        if pairs:
            results[f"{direction}_pairs_per_second"] = round(pairs / (time.perf_counter() - ranking_started), 1)
        scores_by_direction[direction] = scores
    results["seconds"] = time.perf_counter() - started
    results["gallery"] = f"{len(pixels)} images x {len(captions)} captions"
    (_, image_embeds), (_, _, text_embeds) = encoded  # (tokens, embeddings), (tokens, mask, embeddings)
    if not exhaustive and (min(top_k.values()) if isinstance(top_k, dict) else top_k) > 0:
        # the first stage alone, beside the two-stage figures: what re-ranking with the matching head adds
        similarity = model.retrieval.similarity(image_embeds, text_embeds).float().cpu()
        results.update({f"embedding_{k}": v for k, v in retrieval_metrics(similarity, owner.cpu()).items()})
    results.update(embedding_spread(image_embeds, text_embeds, owner))
    if getattr(model.config, "lambda_itm", 1.0) != 0:
        results.update(matching_against_hardest(model, encoded, owner, captions, rerank_batch_size))
    if outputs is not None:
        outputs["retrieval"] = ranked_lists(scores_by_direction, ids, captions, owner.tolist())
    return results


def matching_against_hardest(model, encoded, owner, captions: list[str], batch_size=None) -> dict:
    """The matching (ITM) head on the decision it exists for: each photo with its own first caption and with its
    hardest other caption (the most similar by the embeddings among the other photos' captions whose text is none of
    the photo's own captions). Returns the accuracy of p(match) > 0.5 over the 2N pairs (a head that gives every
    pair one answer: 50%), the ROC AUC (the chance that a photo's own caption scores above a hardest other one, ties
    half) and the number of pairs; a photo without any other caption is left out."""
    (image_tokens, image_embeds), (text_tokens, text_mask, text_embeds) = encoded
    photos, owner = len(image_embeds), owner.cpu()
    first = torch.full((photos,), -1, dtype=torch.long)
    for caption, photo in enumerate(owner.tolist()):
        if first[photo] < 0:
            first[photo] = caption
    similarity = model.retrieval.similarity(image_embeds, text_embeds).float().cpu()
    text_ids = {text: index for index, text in enumerate(dict.fromkeys(captions))}
    text_id = torch.tensor([text_ids[text] for text in captions])
    own = owner[None, :] == torch.arange(photos)[:, None]  # (N, M): the photo's own captions
    own_texts = torch.zeros(photos, len(text_ids), dtype=torch.bool)
    own_texts[owner, text_id] = True  # (N, T): the texts of the photo's own captions
    excluded = own | own_texts[:, text_id]  # its captions, and any caption that repeats one of their texts
    kept = ~excluded.all(1) & (first >= 0)
    if not kept.any():
        return {}
    hardest = similarity.masked_fill(excluded, float("-inf")).argmax(1)[kept]
    index = torch.arange(photos)[kept]
    images = torch.cat([index, index]).to(image_tokens.device)
    texts = torch.cat([first[kept], hardest]).to(image_tokens.device)
    photos = len(index)
    scores = pair_scores(model, image_tokens, text_tokens, text_mask, images, texts,
                               batch_size or rerank_batch_size_for(model)).exp().float().cpu()
    matched, other = scores[:photos], scores[photos:]
    accuracy = 50.0 * float((matched > 0.5).float().mean() + (other <= 0.5).float().mean())
    greater = ((matched[:, None] > other[None, :]).float().mean()
               + 0.5 * (matched[:, None] == other[None, :]).float().mean())
    return {"itm_accuracy": accuracy, "itm_auc": float(greater), "itm_pairs": 2 * photos}


def ranked_lists(scores: dict, ids: list[str], captions: list[str], owner: list[int], depth: int = 10) -> dict:
    """Each query's top `depth`, as `retrieval_top10.json` keeps them: for every photo the captions it ranks first
    (with the photo each belongs to), for every caption the photos it ranks first; `hit` = the first correct rank
    (1-based) within the list, or None."""
    i2t = scores["i2t"].float().cpu().topk(min(depth, len(captions)), dim=1).indices.tolist()
    t2i = scores["t2i"].float().cpu().T.topk(min(depth, len(ids)), dim=1).indices.tolist()

    def first_hit(flags):
        return next((rank for rank, flag in enumerate(flags, start=1) if flag), None)

    return {
        "i2t": [{"image_id": ids[i], "captions": [captions[j] for j in top],
                 "caption_image_ids": [ids[owner[j]] for j in top], "hit": first_hit(owner[j] == i for j in top)}
                for i, top in enumerate(i2t)],
        "t2i": [{"caption": captions[j], "image_id": ids[owner[j]], "image_ids": [ids[i] for i in top],
                 "hit": first_hit(i == owner[j] for i in top)} for j, top in enumerate(t2i)],
    }


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


@dataclass
class EvaluationSettings:
    """How `evaluate_model` runs every task's evaluator: the batch size, captioning's decoding, retrieval's
    re-ranking (`evaluate_retrieval`), whether the Java caption tokenizer runs, progress bars."""

    batch_size: int = 32
    num_beams: int | None = None
    max_new_tokens: int | None = None
    top_k: int | str | dict = "auto"
    exhaustive: bool = False
    java: bool = True
    progress: bool = True
    rerank_budget: float = RERANK_BUDGET_SECONDS
    captions_per_image: int = CAPTIONS_PER_IMAGE
    rerank_score: str = "itm+similarity"


# Each task's evaluator (`Task.evaluate`): one signature, `(model, processor, rows, settings, counter, outputs)`,
# `rows` those that carry the task's target; `{}` where the model has no head for it.
def score_classification(model, processor, rows, settings: EvaluationSettings, counter, outputs) -> dict:
    if model.config.problem_type == "multi_label_classification":  # a VQA classifier: answers, not classes
        return {}
    return evaluate_classification(model, processor, rows, settings.batch_size, settings.progress, counter)


def score_vqa(model, processor, rows, settings: EvaluationSettings, counter, outputs) -> dict:
    return evaluate_vqa(model, processor, rows, settings.batch_size, settings.progress, counter, outputs)


def score_captioning(model, processor, rows, settings: EvaluationSettings, counter, outputs) -> dict:
    if getattr(model, "captioner", None) is None:
        return {}
    metrics, _ = evaluate_captioning(model, processor, rows, settings.batch_size, settings.num_beams,
                                     settings.max_new_tokens, settings.progress, settings.java, counter, outputs)
    return metrics


def score_retrieval(model, processor, rows, settings: EvaluationSettings, counter, outputs) -> dict:
    return evaluate_retrieval(model, processor, rows, settings.batch_size, settings.top_k, settings.exhaustive,
                              settings.progress, counter, settings.rerank_budget, outputs=outputs,
                              captions_per_image=settings.captions_per_image, rerank_score=settings.rerank_score)


def evaluate_model(model, processor, dataset, tasks=None, batch_size=32, num_beams=None, max_new_tokens=None,
                   top_k="auto", exhaustive=False, java=True, progress=True, counter=None,
                   rerank_budget=RERANK_BUDGET_SECONDS, outputs: dict | None = None,
                   captions_per_image: int = CAPTIONS_PER_IMAGE, rerank_score: str = "itm+similarity") -> dict:
    """Every task of `tasks` (default: every task with an evaluator) the model has a head for, each scored by its
    registry evaluator on the rows that carry its target (a row without one is not a bad row), in registry order.
    Returns `{task: metrics}` for the tasks that gave a result. `outputs`, when given, receives what the evaluation
    made besides its metrics (the captions, their references, the ranked lists), for `write_predictions`."""
    known = evaluated_tasks()
    tasks = known if tasks is None else [t for t in tasks.split(",") if t] if isinstance(tasks, str) else list(tasks)
    unknown = set(tasks) - set(known)
    if unknown:
        raise ValueError(f"evaluate_model: unknown tasks {sorted(unknown)}; choose from {', '.join(known)}")
    settings = EvaluationSettings(batch_size, num_beams, max_new_tokens, top_k, exhaustive, java, progress,
                                  rerank_budget, captions_per_image, rerank_score)
    counter = counter if counter is not None else BadRowCounter()
    results, rows_by_target = {}, {}
    for name in (name for name in known if name in tasks):
        task = REGISTRY[name]
        if task.target not in rows_by_target:
            rows_by_target[task.target] = usable_rows(dataset, task.target, BadRowCounter())
        if len(rows_by_target[task.target]):
            results[name] = task.evaluator()(model, processor, rows_by_target[task.target], settings, counter, outputs)
    return {task: metrics for task, metrics in results.items() if metrics}


PREDICTION_FILES = {"captions": "generated_captions.json", "references": "reference_captions.json",
                    "retrieval": "retrieval_top10.json", "vqa_results": "vqa_results.json"}


def write_predictions(outputs: dict, folder) -> list[str]:
    """What `evaluate_model(..., outputs=...)` kept, as files in `folder`: the generated captions as a COCO results
    file (`[{"image_id", "caption"}]`, one per photo), the references in the COCO annotation layout, and each
    retrieval query's top 10. A prediction file this evaluation did not make (an earlier one's, of a task not
    evaluated now) is removed, so that every file beside `eval_results.json` is this evaluation's. Returns the paths
    written."""
    written = []
    for key, name in PREDICTION_FILES.items():
        path = Path(folder, name)
        if key in outputs:
            path.write_text(json.dumps(outputs[key], indent=1, ensure_ascii=False), encoding="utf-8")
            written.append(str(path))
        else:
            path.unlink(missing_ok=True)
    return written


EVALUATION_FILES = ("eval_results.json", "eval_results.md", "caption_samples.png", *PREDICTION_FILES.values())


def caption_samples(model, processor, dataset, count: int, path, num_beams=None, max_new_tokens=None) -> None:
    """A picture of the first `count` readable photos of `dataset` with their generated and reference captions."""
    collate = XAttnCollator(processor, targets="caption", with_row_index=True)
    rows, batch = next(batches(dataset.select(range(min(count, len(dataset)))), collate, count))
    predictions = generate_captions(model, processor, batch["pixel_values"], num_beams, max_new_tokens)
    plot_caption_samples([row["image"] for row in rows], predictions, [list(row["captions"]) for row in rows],
                         str(path))


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
        for key in ("loss", *loss_keys()):
            value = out.get(key)
            if value is not None:
                total = accelerator.gather_for_metrics(value.detach().float().reshape(1) * size).sum()
                sums[key] = sums.get(key, 0.0) + float(total)
        count += int(accelerator.gather_for_metrics(torch.tensor([size], device=accelerator.device)).sum())
        classified = out.logits is not None and unwrapped.config.lambda_ce != 0  # (0: the classifier is not trained)
        if classified and "vqa_answer_accuracy" in batch:  # VQA: the official accuracy of the top answer
            answered = ~(batch["labels"] == -100).any(-1)  # rows without a question carry -100
            table = batch["vqa_answer_accuracy"][answered]
            scores = table.gather(1, out.logits[answered].argmax(-1, keepdim=True)).squeeze(1)
            vqa_sum += float(accelerator.gather_for_metrics(scores).sum())
            vqa_count += int(accelerator.gather_for_metrics(torch.tensor([len(scores)], device=accelerator.device)).sum())
        if classified and "labels" in batch and batch["labels"].dim() == 1:
            predictions, labels = accelerator.gather_for_metrics((out.logits.argmax(-1), batch["labels"]))
            mask = labels != -100
            correct += int((predictions[mask] == labels[mask]).sum())
            labelled += int(mask.sum())
        if out.image_embeds is not None:  # the forward pass's own retrieval embeddings: nothing is encoded twice
            # the embeddings cover every row: the rows that have a caption count
            captioned = batch["caption_attention_mask"].bool().any(-1)
            gathered = accelerator.gather_for_metrics(
                (out.image_embeds[captioned], out.text_embeds[captioned], batch["image_ids"][captioned]))
            image_embeds.append(gathered[0].float())
            text_embeds.append(gathered[1].float())
            ids.append(gathered[2])
    metrics = {f"val_{key}": value / max(count, 1) for key, value in sums.items()}
    if labelled:
        metrics["val_accuracy"] = 100.0 * correct / labelled
    if vqa_count:
        metrics["val_vqa_accuracy"] = 100.0 * vqa_sum / vqa_count  # the official accuracy (10-choose-9 average)
    if image_embeds:
        images, texts, all_ids = torch.cat(image_embeds), torch.cat(text_embeds), torch.cat(ids)
        similarity = -unwrapped.retrieval.distance(images, texts)
        positives = all_ids[:, None] == all_ids[None, :]
        metrics.update({f"val_i2t_{k}": v for k, v in recall_at_k(similarity, positives).items()})
    model.train()
    return metrics


__all__ = ["CAPTIONS_PER_IMAGE", "EVALUATION_FILES", "PREDICTION_FILES", "EvaluationSettings", "caption_samples",
           "coco_references", "embedding_spread", "evaluate_captioning", "evaluate_classification", "evaluate_model",
           "evaluate_multitask", "evaluate_retrieval", "matching_against_hardest", "ranked_lists", "score_captioning",
           "score_classification", "score_retrieval", "score_vqa", "write_predictions"]
