"""Rows of the schema -> model batches: the collator, and the cache of processed photos it can keep."""

from __future__ import annotations

import hashlib
import os

import torch
from PIL import Image

from modeling_xattn.modeling_xattn import caption_labels
from modeling_xattn.training.data.schema import (
    BATCH_TARGETS,
    NO_TARGET,
    BadRowCounter,
    as_label,
    load_image,
    missing_target_reason,
    row_captions,
    row_targets,
    row_text,
    stable_id,
    vqa_answer_accuracy,
    vqa_soft_scores,
)
from modeling_xattn.training.data.views import crop_fraction


class XAttnCollator:
    """Rows of the schema -> a model batch through `XAttnProcessor`.

    targets: the row targets the batch is made of, joined by "+" (`BATCH_TARGETS`): "statement+caption" (a
    labelled statement and/or a caption per row), "statement", "question" (question + soft scores over
    `answer_vocab`), "question+caption" or "caption". A row is kept when its image reads and it carries at least one
    of the targets; otherwise it is skipped and counted by reason, and the batch shrinks.

    Rows that lack one target keep the others: a row without a label gets `labels = -100` (its statement, if any,
    is still encoded), a row without a caption gets an all-zero `caption_attention_mask` (the model's "no caption"),
    a VQA row without a question gets soft scores of -100. A batch in which no row has a statement has no
    `input_ids` (and labels of -100 only); one in which no row has a caption has no `caption_input_ids`. Every batch
    carries `image_ids` (the models take them: captions of one image are never each other's negatives);
    `with_row_index=True` adds `row_index`, the positions in `rows` of the rows that were kept.

    `pad_to_max_length=True` pads every text to the processor's `max_length` and every caption to its
    `max_caption_length` (else to the longest of the batch), so that every batch has the same shapes: a compiled
    step is then traced once, not again for each new length.

    The caption of a row is `row["caption_index"]` where set (`CaptionPairs` sets it: one example per image-caption
    pair), else `caption_index` (default: the first caption).

    photo_cache: a `PhotoCache` the collator keeps each photo's pixel values in (decoded, converted and resized
    once, read from the cache in later epochs and evaluations; a cropped example is always made afresh), or None.

    model: the model class the batch feeds (the class, its name or an instance), under this package's loop or
    `transformers.Trainer` (which needs `remove_unused_columns=False`, since the collator reads the raw columns):
        `XAttnForMultiTask` (default): the keys above, and `labels` always (all -100 when no row has one), so that
            Trainer computes an evaluation loss on caption-only sets too;
        `XAttnForSequenceClassification`: the statement/question and its labels only;
        `XAttnForImageTextRetrieval`: the caption as `input_ids`/`attention_mask`, the image ids as `labels`
            (captions of one image are never each other's negatives);
        `XAttnForConditionalGeneration`: the caption as `decoder_input_ids`/`decoder_attention_mask` and as
            `labels` (padding -100).
    """

    MODELS = ("XAttnForMultiTask", "XAttnForSequenceClassification", "XAttnForImageTextRetrieval",
              "XAttnForConditionalGeneration")
    CAPTION_MODELS = ("XAttnForImageTextRetrieval", "XAttnForConditionalGeneration")

    def __init__(self, processor, targets: str = "statement+caption", answer_vocab: list[str] | None = None,
                 counter: BadRowCounter | None = None, caption_index: int = 0, image_dir: str | None = None,
                 model: str | type = "XAttnForMultiTask", with_row_index: bool = False, pad_to_max_length: bool = False,
                 photo_cache: PhotoCache | None = None):
        if isinstance(model, torch.nn.Module):  # a model instance, as transformers' collators take one
            model = type(model)
        model = getattr(model, "__name__", model)
        if targets not in BATCH_TARGETS:
            raise ValueError(f"XAttnCollator: targets must be one of {list(BATCH_TARGETS)}, got {targets!r}")
        if model not in self.MODELS:
            raise ValueError(f"XAttnCollator: model must be one of {self.MODELS} (the class, its name or an instance), "
                             f"got {str(model)[:80]!r}")
        if model in self.CAPTION_MODELS and "caption" not in BATCH_TARGETS[targets]:
            raise ValueError(f"XAttnCollator: model={model!r} trains on captions, which targets={targets!r} lacks")
        self.model = model  # the model class's name
        self.with_row_index = with_row_index
        self.pad_to_max_length = pad_to_max_length
        self.processor = processor
        self.targets = targets
        self.answer_vocab = {a: i for i, a in enumerate(answer_vocab or [])}
        self.counter = counter if counter is not None else BadRowCounter()
        self.caption_index = caption_index
        self.image_dir = image_dir
        self.photo_cache = photo_cache

    def __call__(self, rows: list[dict]) -> dict:
        wanted = self.targets
        images, texts, captions, labels, answers, ids, kept, has = [], [], [], [], [], [], [], []
        for position, row in enumerate(rows):
            where = str(row.get("image_id", ""))
            carried = row_targets(row, wanted)
            reason = None if carried else missing_target_reason(row, wanted)
            key = cached = None
            if reason is None and self.photo_cache is not None and row.get("crop_box") is None:
                key = self.photo_cache.key(row["image"], self.image_dir)
                cached = self.photo_cache.get(key)
            if reason is None and cached is None:
                try:
                    image = load_image(row["image"], self.image_dir)
                except Exception as error:  # unreadable, truncated, missing or too large: skip, count
                    reason = f"bad image ({type(error).__name__})"
            if reason is not None:
                self.counter.add(reason, where)
                continue
            mode = cached[0] if cached is not None else image.mode
            if mode != "RGB":
                self.counter.convert(f"{mode} image converted to RGB", where)
            if cached is not None:
                image = cached
            elif row.get("crop_box") is not None:  # training augmentation (RandomResizedCrops)
                image = crop_fraction(image, row["crop_box"])
            elif key is not None:
                image = (key, image)  # processed below, then kept
            if isinstance(row.get("text"), bytes) or isinstance(row.get("question"), bytes):
                self.counter.convert("text bytes decoded", where)
            references = row_captions(row)
            index = row.get("caption_index")
            index = self.caption_index if index is None else index
            images.append(image)
            kept.append(position)
            has.append(carried)
            texts.append(row_text(row, wanted))
            captions.append(references[min(index, len(references) - 1)] if references else "")
            labels.append(as_label(row.get("label")) if "statement" in carried else NO_TARGET)
            answers.append(row.get("answers") or [])
            ids.append(row.get("image_id", len(ids)))
        if not images:
            return {}
        with_text = [bool({"statement", "question"} & carried) for carried in has]
        with_caption = [("caption" in carried) for carried in has]
        batch = {}
        if any(with_text) or any(with_caption):
            batch = dict(self.processor(
                text=texts if any(with_text) else None,
                captions=captions if any(with_caption) else None,
                padding="max_length" if self.pad_to_max_length else True,
            ))
        batch["pixel_values"] = self._pixels(images)
        if any(with_caption) and not all(with_caption):
            batch["caption_attention_mask"][~torch.tensor(with_caption)] = 0  # all-zero mask: this row has no caption
        if any(with_text) and "statement" in BATCH_TARGETS[wanted]:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if any(with_text) and "question" in BATCH_TARGETS[wanted]:
            scores = vqa_soft_scores(answers, self.answer_vocab)
            scores[~torch.tensor(with_text)] = NO_TARGET
            batch["labels"] = scores
            # the official accuracy of every vocabulary answer (evaluation reads it at the prediction; the model
            # takes and ignores it)
            batch["vqa_answer_accuracy"] = vqa_answer_accuracy(answers, self.answer_vocab)
        batch["image_ids"] = torch.tensor([stable_id(i) for i in ids], dtype=torch.long)
        batch["row_index"] = torch.tensor(kept, dtype=torch.long)  # which of `rows` made it into the batch
        batch = self._for_model(batch)
        if not self.with_row_index:
            batch.pop("row_index", None)
        return batch

    def _pixels(self, images: list) -> torch.Tensor:
        """The batch's pixel values: the cached ones as they are (`(mode, pixels)`), the others through the
        processor (each image is processed on its own, so a cached photo's values are those it would get afresh),
        and those given as `(key, image)` kept in the cache."""
        fresh = [index for index, image in enumerate(images) if not isinstance(image, tuple) or
                 isinstance(image[1], Image.Image)]
        pixels = [None if index in fresh else image[1] for index, image in enumerate(images)]
        if fresh:
            plain = [images[i][1] if isinstance(images[i], tuple) else images[i] for i in fresh]
            made = self.processor(images=plain)["pixel_values"]
            for index, values in zip(fresh, made):
                pixels[index] = values
                if isinstance(images[index], tuple):
                    key, image = images[index]
                    self.photo_cache.put(key, image.mode, values)
        return torch.stack(pixels)

    def _for_model(self, batch: dict) -> dict:
        """Rename the batch's keys to the arguments of the model class `model` names."""
        if self.model == "XAttnForMultiTask":
            if "labels" not in batch:
                shape = (len(batch["pixel_values"]),)
                if "question" in BATCH_TARGETS[self.targets]:
                    shape += (len(self.answer_vocab),)
                batch["labels"] = torch.full(shape, NO_TARGET, dtype=torch.float if len(shape) == 2 else torch.long)
            return batch
        if self.model == "XAttnForSequenceClassification":
            return {k: v for k, v in batch.items() if not k.startswith("caption_")}
        if "caption_input_ids" not in batch:  # no row of this batch has a caption: nothing for this model
            return {}
        has_caption = batch["caption_attention_mask"].bool().any(-1)
        ids, mask = batch["caption_input_ids"][has_caption], batch["caption_attention_mask"][has_caption]
        common = {"pixel_values": batch["pixel_values"][has_caption], "row_index": batch["row_index"][has_caption]}
        if self.model == "XAttnForImageTextRetrieval":
            return {**common, "input_ids": ids, "attention_mask": mask, "labels": batch["image_ids"][has_caption]}
        return {**common, "decoder_input_ids": ids, "decoder_attention_mask": mask,
                "labels": caption_labels(ids, mask, self.processor.tokenizer.pad_token_id)}


class PhotoCache:
    """Each photo's processed pixel values, kept after the first time it is read, up to `max_bytes` in all (the
    photos read after that are processed every time). A photo is known by its file's path, or by a hash of its bytes
    for a photo stored in the rows; an image given as an object is not cached. What a training step spends on
    reading, decoding and resizing its photos (docs/performance.md says how much) is then spent once per
    photo, not once per epoch and caption. The values are exactly those the processor makes, so a run with the
    cache is the run without it."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used, self.entries = max_bytes, 0, {}
        self.hits = self.misses = 0

    @staticmethod
    def key(value, base_dir: str | None = None):
        if isinstance(value, dict):  # datasets' undecoded image
            if value.get("bytes"):
                return "bytes", hashlib.blake2b(value["bytes"], digest_size=16).digest()
            value = value.get("path")
        if isinstance(value, (str, os.PathLike)):
            return "path", os.path.join(base_dir, value) if base_dir and not os.path.isabs(value) else str(value)
        return None

    def get(self, key) -> tuple | None:
        entry = self.entries.get(key) if key is not None else None
        self.hits += entry is not None
        self.misses += entry is None
        return entry

    def put(self, key, mode: str, pixels: torch.Tensor) -> None:
        size = pixels.numel() * pixels.element_size()
        if key not in self.entries and self.used + size <= self.max_bytes:
            self.entries[key] = (mode, pixels.clone())
            self.used += size

