"""Data layer: every source becomes one `datasets.Dataset` schema, and one collator turns rows into model batches.

Schema (every loader returns these columns; a task ignores what it does not use):
    image     - a PIL image (`datasets.Image()` feature) or a path string
    text      - statement, tweet or question for classification / VQA ("" when there is none)
    captions  - list of reference captions (empty when there are none)
    label     - class id for classification, -100 (`NO_TARGET`) when unlabelled
    answers   - list of human answers for VQA (empty when there are none)
    image_id  - an identifier of the image (several captions of one image share it)

Sources: the embedded synthetic dataset (`synthetic_dataset`, no download), a local imagefolder with
`metadata.jsonl`, CSV/JSONL files with image paths, any Hub dataset with a column mapping, COCO caption annotation
files, Karpathy split files, and the MVSA sentiment layout; each source's own splits (`load_split`). Rows without a
target for the task, unreadable, truncated or missing images and decompression bombs are skipped and counted in
`BadRowCounter`; non-UTF-8 text and unusual image modes are converted and counted. `CaptionPairs` makes one training
example per image-caption pair.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .configuration_xattn import SENTIMENT_LABELS
from .metrics_xattn import vqa_score
from .modeling_xattn import caption_labels

logger = logging.getLogger(__name__)

SCHEMA = ("image", "text", "captions", "label", "answers", "image_id")

# The embedded dataset lives in synthetic_xattn.py; its names stay importable from here.
from .synthetic_xattn import COLOURS, POSITIONS, SHAPES, SyntheticSpec, synthetic_dataset, synthetic_example  # noqa: E402, F401

# ======================================================================================================= bad rows

NO_TARGET = -100  # "no target" for a row, in labels everywhere (transformers' losses ignore -100)


def as_label(value) -> int:
    """A class id, or `NO_TARGET` for None or a negative id (datasets' `ClassLabel` marks a missing label with -1)."""
    if value is None or isinstance(value, bool):
        return NO_TARGET
    if isinstance(value, str):
        value = value.strip()
        if value in SENTIMENT_LABELS:
            return SENTIMENT_LABELS.index(value)
        return int(value) if value.lstrip("-").isdigit() and int(value) >= 0 else NO_TARGET
    value = int(value)
    return value if value >= 0 else NO_TARGET


@dataclass
class BadRowCounter:
    """Rows skipped for bad input and values converted to make a row usable, by reason; `summary()` is printed at
    the end of a run. A row (`where`) skipped again for the same reason (next epoch, another caption of the same
    image) is counted once."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    converted: Counter = field(default_factory=Counter)
    _seen: set = field(default_factory=set, repr=False)

    def add(self, reason: str, where: str = ""):
        """Count a skipped row."""
        self._record(self.counts, "skipped", reason, where)

    def convert(self, reason: str, where: str = ""):
        """Count a value that was repaired rather than skipped (a Latin-1 caption, a 16-bit image...)."""
        self._record(self.converted, "converted", reason, where)

    def _record(self, counts: Counter, kind: str, reason: str, where: str):
        key = (kind, reason, where)
        if where and key in self._seen:
            return
        self._seen.add(key)
        counts[reason] += 1
        self.examples.setdefault(reason, where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        def listed(counts):
            return "; ".join(f"{reason}: {n} (e.g. {self.examples[reason]})" for reason, n in counts.most_common())

        text = f"bad rows skipped: {self.total}" + (f" - {listed(self.counts)}" if self.counts else "")
        if self.converted:
            text += f"\nvalues converted: {sum(self.converted.values())} - {listed(self.converted)}"
        return text


MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold


def load_image(value, base_dir: str | None = None) -> Image.Image:
    """A PIL image from a PIL image, a path, or a datasets image dict; fully decoded (truncated files fail here)."""
    if isinstance(value, dict):  # datasets' undecoded image: {"bytes": ..., "path": ...}
        value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else value.get("path")
    if isinstance(value, (str, os.PathLike)):
        path = Path(base_dir, value) if base_dir and not os.path.isabs(value) else Path(value)
        value = Image.open(path)
    if not isinstance(value, Image.Image):
        raise ValueError(f"not an image: {type(value).__name__}")
    if value.width * value.height > MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{value.width}x{value.height} pixels")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        value.load()
    return value


def clean_text(value) -> str:
    """Text as a clean string; bytes are decoded as UTF-8, falling back to Latin-1 (never fails)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
    return " ".join(str(value).split())


# ======================================================================================================= collator

# What each collator task trains on: a row is usable when it has at least one of these targets.
TASK_TARGETS = {
    "multitask": ("statement", "caption"),
    "classification": ("statement",),
    "vqa": ("question",),
    "vqa+captions": ("question", "caption"),
    "retrieval": ("caption",),
    "captioning": ("caption",),
}


def _row_text(row, task: str) -> str:
    """The text the fused encoder reads for a row: the question for VQA, else the statement."""
    return clean_text((row.get("question") or row.get("text")) if task.startswith("vqa") else row.get("text"))


def _row_captions(row) -> list[str]:
    return [text for text in (clean_text(c) for c in row.get("captions") or []) if text]


def row_targets(row, task: str) -> set[str]:
    """The targets of `task` that `row` carries: "statement" (text + class label), "question" (VQA question),
    "caption" (at least one non-empty caption). Reads no image."""
    targets = set()
    text = _row_text(row, task)
    if text and as_label(row.get("label")) != NO_TARGET:
        targets.add("statement")
    if text and task.startswith("vqa"):
        targets.add("question")
    if _row_captions(row):
        targets.add("caption")
    return targets & set(TASK_TARGETS[task])


def _missing_target_reason(row, task: str) -> str:
    """Why a row has no target for `task`, for the skipped-row summary."""
    if task == "classification":
        return "empty text" if not _row_text(row, task) else "no label"
    if task == "vqa":
        return "empty question"
    if task in ("retrieval", "captioning"):
        return "no caption"
    return "no caption and no labelled text" if task == "multitask" else "no caption and no question"


class XAttnCollator:
    """Rows of the schema -> a model batch through `XAttnProcessor`.

    task: "multitask" (a labelled statement and/or a caption per row), "classification", "vqa" (question + soft
    scores over `answer_vocab`), "vqa+captions", "retrieval" or "captioning" (`TASK_TARGETS` lists what each trains
    on). A row is kept when its image reads and it carries at least one of the task's targets; otherwise it is
    skipped and counted by reason, and the batch shrinks.

    Rows that lack one target keep the others: a row without a label gets `labels = -100` (its statement, if any,
    is still encoded), a row without a caption gets an all-zero `caption_attention_mask` (the model's "no caption"),
    a VQA row without a question gets soft scores of -100. A batch in which no row has a statement has no
    `input_ids` (and labels of -100 only); one in which no row has a caption has no `caption_input_ids`. Every batch
    carries `image_ids` (the models take them: captions of one image are never each other's negatives);
    `with_row_index=True` adds `row_index`, the positions in `rows` of the rows that were kept.

    The caption of a row is `row["caption_index"]` where set (`CaptionPairs` sets it: one example per image-caption
    pair), else `caption_index` (default: the first caption).

    head: the model the batch feeds, under this package's loop or `transformers.Trainer` (which needs
    `remove_unused_columns=False`, since the collator reads the raw columns):
        "multitask" (default; `XAttnForMultiTask`, also `XAttnForSequenceClassification`): the keys above, and
            `labels` always (all -100 when no row has one), so that Trainer computes an evaluation loss on
            caption-only sets too;
        "classification": the statement/question and its labels only;
        "retrieval" (`XAttnForImageTextRetrieval`): the caption as `input_ids`/`attention_mask`, the image ids as
            `labels` (captions of one image are never each other's negatives);
        "captioning" (`XAttnForConditionalGeneration`): the caption as `decoder_input_ids`/`decoder_attention_mask`
            and as `labels` (padding -100).
    """

    HEADS = ("multitask", "classification", "retrieval", "captioning")

    def __init__(self, processor, task: str = "multitask", answer_vocab: list[str] | None = None,
                 counter: BadRowCounter | None = None, caption_index: int = 0, image_dir: str | None = None,
                 head: str = "multitask", with_row_index: bool = False):
        if task not in TASK_TARGETS:
            raise ValueError(f"XAttnCollator: task must be one of {sorted(TASK_TARGETS)}, got {task!r}")
        if head not in self.HEADS:
            raise ValueError(f"XAttnCollator: head must be one of {self.HEADS}, got {head!r}")
        if head in ("retrieval", "captioning") and "caption" not in TASK_TARGETS[task]:
            raise ValueError(f"XAttnCollator: head={head!r} trains on captions, which task={task!r} does not read")
        self.head = head
        self.with_row_index = with_row_index
        self.processor = processor
        self.task = task
        self.answer_vocab = {a: i for i, a in enumerate(answer_vocab or [])}
        self.counter = counter if counter is not None else BadRowCounter()
        self.caption_index = caption_index
        self.image_dir = image_dir

    def __call__(self, rows: list[dict]) -> dict:
        task = self.task
        images, texts, captions, labels, answers, ids, kept, has = [], [], [], [], [], [], [], []
        for position, row in enumerate(rows):
            where = str(row.get("image_id", ""))
            targets = row_targets(row, task)
            reason = None if targets else _missing_target_reason(row, task)
            if reason is None:
                try:
                    image = load_image(row["image"], self.image_dir)
                except Exception as error:  # unreadable, truncated, missing or too large: skip, count
                    reason = f"bad image ({type(error).__name__})"
            if reason is not None:
                self.counter.add(reason, where)
                continue
            if image.mode != "RGB":
                self.counter.convert(f"{image.mode} image converted to RGB", where)
            if row.get("crop_box") is not None:  # training augmentation (RandomResizedCrops)
                image = crop_fraction(image, row["crop_box"])
            if isinstance(row.get("text"), bytes) or isinstance(row.get("question"), bytes):
                self.counter.convert("text bytes decoded", where)
            row_captions = _row_captions(row)
            index = row.get("caption_index")
            index = self.caption_index if index is None else index
            images.append(image)
            kept.append(position)
            has.append(targets)
            texts.append(_row_text(row, task))
            captions.append(row_captions[min(index, len(row_captions) - 1)] if row_captions else "")
            labels.append(as_label(row.get("label")) if "statement" in targets else NO_TARGET)
            answers.append(row.get("answers") or [])
            ids.append(row.get("image_id", len(ids)))
        if not images:
            return {}
        with_text = [bool({"statement", "question"} & targets) for targets in has]
        with_caption = [("caption" in targets) for targets in has]
        batch = dict(self.processor(
            images=images,
            text=texts if any(with_text) else None,
            captions=captions if any(with_caption) else None,
        ))
        if any(with_caption) and not all(with_caption):
            batch["caption_attention_mask"][~torch.tensor(with_caption)] = 0  # all-zero mask: this row has no caption
        if any(with_text) and task in ("multitask", "classification"):
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if any(with_text) and task.startswith("vqa"):
            scores = vqa_soft_scores(answers, self.answer_vocab)
            scores[~torch.tensor(with_text)] = NO_TARGET
            batch["labels"] = scores
        batch["image_ids"] = torch.tensor([_stable_id(i) for i in ids], dtype=torch.long)
        batch["row_index"] = torch.tensor(kept, dtype=torch.long)  # which of `rows` made it into the batch
        batch = self._for_head(batch)
        if not self.with_row_index:
            batch.pop("row_index", None)
        return batch

    def _for_head(self, batch: dict) -> dict:
        """Rename the batch's keys to the arguments of the model `head` names."""
        if self.head == "multitask":
            if "labels" not in batch:
                shape = (len(batch["pixel_values"]),)
                if self.task.startswith("vqa"):
                    shape += (len(self.answer_vocab),)
                batch["labels"] = torch.full(shape, NO_TARGET, dtype=torch.float if len(shape) == 2 else torch.long)
            return batch
        if self.head == "classification":
            return {k: v for k, v in batch.items() if not k.startswith("caption_")}
        if "caption_input_ids" not in batch:  # no row of this batch has a caption: nothing for this head
            return {}
        has_caption = batch["caption_attention_mask"].bool().any(-1)
        ids, mask = batch["caption_input_ids"][has_caption], batch["caption_attention_mask"][has_caption]
        common = {"pixel_values": batch["pixel_values"][has_caption], "row_index": batch["row_index"][has_caption]}
        if self.head == "retrieval":
            return {**common, "input_ids": ids, "attention_mask": mask, "labels": batch["image_ids"][has_caption]}
        return {**common, "decoder_input_ids": ids, "decoder_attention_mask": mask,
                "labels": caption_labels(ids, mask, self.processor.tokenizer.pad_token_id)}


class CaptionPairs(torch.utils.data.Dataset):
    """One example per image-caption pair (a row with five captions is five examples per epoch, as COCO captioning
    and ALBEF/BLIP retrieval training iterate), so every caption trains in every epoch; rows without captions are
    one example each. An example is the row with `caption_index` set, which `XAttnCollator` reads.

    The pairs are a fixed list, so the DataLoader's seeded sampler shuffles them and a resumed run skips exactly
    the batches it had done."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.pairs = [(row, caption) for row, captions in enumerate(dataset["captions"])
                      for caption in range(max(len(_row_captions({"captions": captions})), 1))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        row, caption = self.pairs[index]
        return {**self.dataset[row], "caption_index": caption}


class EpochSeeded(torch.utils.data.Dataset):
    """A view of `dataset` whose examples draw something from a generator seeded with (seed, epoch, index): the draw
    does not depend on the global random state, the loader's workers or an interruption, so a resumed run draws the
    same. `set_epoch` (passed on to a wrapped `EpochSeeded`) moves to the next pass; the epoch sits in shared memory,
    so workers see it."""

    def __init__(self, dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch
        if isinstance(self.dataset, EpochSeeded):
            self.dataset.set_epoch(epoch)

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(_stable_id(f"{self.seed}/{int(self._epoch[0])}/{index}"))

    def __len__(self) -> int:
        return len(self.dataset)


class CaptionPerPhoto(EpochSeeded):
    """One example per photo and epoch, with one of its captions drawn from (seed, epoch, index): the alternative
    to `CaptionPairs` (every image-caption pair every epoch), as some captioning recipes sample. Rows without
    captions are one example each, unchanged."""

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        count = len(_row_captions(row))
        if count < 2:
            return row
        return {**row, "caption_index": int(torch.randint(count, (1,), generator=self.generator(index)))}


class RandomResizedCrops(EpochSeeded):
    """Training examples with a random crop each (torchvision's RandomResizedCrop parameters: an area in
    [`scale`, 1] of the photo, aspect ratio in [3/4, 4/3]; no flips, since captions say "left" and "right"). The crop
    is a box in fractions of the photo, `row["crop_box"] = (left, top, right, bottom)`, which `XAttnCollator` cuts
    before the processor resizes, drawn from (seed, epoch, index) (`EpochSeeded`)."""

    def __init__(self, dataset, scale: float = 0.5, seed: int = 0, ratio=(3 / 4, 4 / 3)):
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"RandomResizedCrops: scale must lie in (0, 1], got {scale!r}")
        super().__init__(dataset, seed)
        self.scale, self.ratio = scale, ratio

    def crop_box(self, index: int) -> tuple[float, float, float, float]:
        generator = self.generator(index)
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):  # torchvision's rejection loop, on the unit square (the aspect is the photo's own)
            area = self.scale + (1.0 - self.scale) * torch.rand(1, generator=generator).item()
            aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=generator)).item()
            width, height = math.sqrt(area * aspect), math.sqrt(area / aspect)
            if width <= 1.0 and height <= 1.0:
                left = (1.0 - width) * torch.rand(1, generator=generator).item()
                top = (1.0 - height) * torch.rand(1, generator=generator).item()
                return left, top, left + width, top + height
        return 0.0, 0.0, 1.0, 1.0

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        return row if self.scale >= 1.0 else {**row, "crop_box": self.crop_box(index)}


def crop_fraction(image: Image.Image, box) -> Image.Image:
    """`image` cut to `box` = (left, top, right, bottom) in fractions of its width and height."""
    width, height = image.size
    left, top, right, bottom = box
    return image.crop((round(left * width), round(top * height), max(round(right * width), round(left * width) + 1),
                       max(round(bottom * height), round(top * height) + 1)))


def _stable_id(value) -> int:
    """An integer id for any image id, equal across processes (Python's str hash is salted per process)."""
    import hashlib

    if isinstance(value, int):
        return value
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=7).digest(), "big")


def vqa_soft_scores(answers: list[list[str]], vocab: dict[str, int]) -> torch.Tensor:
    """The standard VQA target: score(a) = min(#annotators who gave a / 3, 1) for each answer in the vocabulary."""
    scores = torch.zeros(len(answers), len(vocab))
    for row, given in enumerate(answers):
        for answer, count in Counter(clean_text(a).lower() for a in given).items():
            if answer in vocab:
                scores[row, vocab[answer]] = vqa_score(count)
    return scores


def answer_vocabulary(dataset, top_k: int = 3129) -> list[str]:
    """The `top_k` most frequent answers (VQAv2's usual 3129), most frequent first."""
    counts = Counter(clean_text(a).lower() for answers in dataset["answers"] for a in answers)
    return [a for a, _ in counts.most_common(top_k)]


# ======================================================================================================= loaders


def _to_schema(rows: list[dict], class_names: list[str] | None = None):
    """Rows -> a Dataset of the schema. With `class_names`, string labels become ids into it and the label column a
    `ClassLabel` that carries the names (the training script names the classifier's outputs after them; a missing
    label is then -1, ClassLabel's own mark, which `as_label` reads as -100)."""
    import datasets

    for row in rows:
        row.setdefault("text", "")
        row.setdefault("captions", [])
        row["label"] = _label_ids(row.get("label"), class_names)
        row.setdefault("answers", [])
        row.setdefault("question", "")
    columns = {key: [row.get(key) for row in rows] for key in (*SCHEMA, "question")}
    columns["image_id"] = [str(v) for v in columns["image_id"]]
    dataset = datasets.Dataset.from_dict(columns)
    return dataset.cast_column("label", datasets.ClassLabel(names=class_names)) if class_names else dataset


def _label_ids(label, class_names: list[str] | None = None) -> int:
    """A label (id or name) as an id into `class_names`; a missing or unknown label is -1 with names (ClassLabel's
    own mark, which `as_label` reads as -100) and -100 without."""
    if class_names and isinstance(label, str) and label.strip() in class_names:
        return class_names.index(label.strip())
    label = as_label(label)
    return -1 if class_names and label == NO_TARGET else label


def class_names(*datasets_) -> list[str]:
    """The classifier's label names for training on `datasets_`: names a loader recorded, the sentiment names for
    ids 0-2 (the paper's 3-way task), else "0".."K-1" for the largest id K-1 found."""
    import datasets

    top = -1
    for dataset in datasets_:
        feature = dataset.features.get("label")
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        top = max([top, *(as_label(v) for v in dataset["label"])])
    return list(SENTIMENT_LABELS) if top < len(SENTIMENT_LABELS) else [str(i) for i in range(top + 1)]


# The split folder names `datasets`' imagefolder recognises, mapped to the split they hold.
SPLIT_FOLDERS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test", "eval": "test",
                 "evaluation": "test"}
METADATA_FILE = "metadata.jsonl"


def read_metadata(path: Path, counter: BadRowCounter | None = None) -> list[dict]:
    """The rows of a `metadata.jsonl`, tolerating bad lines: a line that is not UTF-8 is decoded as Latin-1 (counted
    as converted), a line that is not JSON is skipped and counted."""
    counter = counter if counter is not None else BadRowCounter()
    rows = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            where = f"{path.parent.name}/{path.name}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("latin-1")
                counter.convert("non-UTF-8 metadata line decoded as Latin-1", where)
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                counter.add("metadata line is not JSON", where)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                counter.add("metadata line is not a JSON object", where)
    return rows


def load_imagefolder(data_dir: str, split: str | None = "train", caption_column: str = "captions",
                     text_column: str = "text", label_column: str = "label", counter: BadRowCounter | None = None):
    """A local imagefolder (the `datasets` convention): images with a `metadata.jsonl` (`file_name` + columns), at the
    top level or in split folders (`train/`, `validation/`, `test/` and the other names `datasets` accepts).

    Returns the `split` in the common schema, or with `split=None` a `DatasetDict` of every split the folder has
    (images at the top level form the "train" split, as `datasets` names it). `metadata.jsonl` is read here rather
    than by `datasets.load_dataset`, which stops at a non-UTF-8 line and silently drops rows whose image file is
    missing: here a missing image, a row without `file_name` or a line that is not JSON is skipped and counted in
    `counter`. Folders without `metadata.jsonl` (a class per sub-folder) go through `datasets.load_dataset`.
    """
    import datasets

    counter = counter if counter is not None else BadRowCounter()
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--data_dir {data_dir}: no such folder")
    folders = {SPLIT_FOLDERS[p.name.lower()]: p for p in sorted(root.iterdir())
               if p.is_dir() and p.name.lower() in SPLIT_FOLDERS and (p / METADATA_FILE).exists()}
    if not folders and (root / METADATA_FILE).exists():
        folders = {"train": root}
    if not folders and any(root.glob("*.tar")):
        raise ValueError(f"--data_dir {data_dir} holds .tar files, which look like WebDataset shards: read them with "
                         "--dataset webdataset")
    if not folders and not any(p.is_file() or p.is_dir() for p in root.iterdir()):
        raise FileNotFoundError(f"--data_dir {data_dir} is empty: an imagefolder holds images and a metadata.jsonl "
                                "(file_name + captions/text/label per line), at the top or in train/, validation/, "
                                "test/")
    if folders:
        rows = {name: _imagefolder_rows(folder, caption_column, text_column, label_column, counter)
                for name, folder in folders.items()}
        names = class_names_of([row["label"] for part in rows.values() for row in part])
        splits = datasets.DatasetDict({name: _to_schema(part, names).cast_column("image", datasets.Image())
                                       for name, part in rows.items()})
    else:  # no metadata: `datasets` reads class sub-folders as labels
        loaded = datasets.load_dataset("imagefolder", data_dir=data_dir)
        splits = datasets.DatasetDict({name: map_columns(part, caption_column=caption_column, text_column=text_column,
                                                         label_column=label_column) for name, part in loaded.items()})
    if split is None:
        return splits
    if split not in splits:
        raise ValueError(f"{data_dir} has no {split!r} split; it has {sorted(splits)}")
    return splits[split]


def flickr8k_to_imagefolder(token_file: str, image_dir: str, split_files: dict[str, str], output_dir: str,
                            image_size: int | None = None) -> dict[str, int]:
    """Write the official Flickr8k distribution as an imagefolder: `output_dir/<split>/` with the photos and a
    `metadata.jsonl` (`file_name`, `image_id`, `captions`), which `--dataset imagefolder` reads with its splits.

    token_file: `Flickr8k.token.txt` (`<file>.jpg#<n><TAB><caption>` lines); image_dir: `Flicker8k_Dataset/`;
    split_files: e.g. `{"train": "Flickr_8k.trainImages.txt", "validation": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt"}`; image_size: resize to this square side (None: copy the files as they are).
    Returns the photos written per split; a listed photo that is missing is skipped and said."""
    import shutil

    captions: dict[str, list[str]] = {}
    with open(token_file, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if "\t" in line:
                key, caption = line.rstrip("\n").split("\t", 1)
                captions.setdefault(key.split("#")[0], []).append(caption.strip())
    written = {}
    for split, listing in split_files.items():
        folder = Path(output_dir, split)
        folder.mkdir(parents=True, exist_ok=True)
        names = [name.strip() for name in Path(listing).read_text().splitlines() if name.strip()]
        rows = []
        for name in names:
            source = Path(image_dir, name)
            if not source.is_file():
                logger.warning(f"{name} is listed in {listing} but not in {image_dir}: skipped")
                continue
            if image_size:
                load_image(str(source)).convert("RGB").resize((image_size, image_size), Image.BICUBIC).save(
                    folder / name, quality=90)
            else:
                shutil.copyfile(source, folder / name)
            rows.append({"file_name": name, "image_id": Path(name).stem, "captions": captions.get(name, [])})
        (folder / METADATA_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        written[split] = len(rows)
    return written


def _imagefolder_rows(folder: Path, caption_column, text_column, label_column, counter) -> list[dict]:
    rows = []
    for index, meta in enumerate(read_metadata(folder / METADATA_FILE, counter)):
        name = meta.get("file_name")
        where = f"{folder.name}/{name or f'row {index + 1}'}"
        if not name:
            counter.add("metadata row without file_name", where)
            continue
        path = folder / name
        if not path.is_file():
            counter.add("image file missing", where)
            continue
        captions = meta.get(caption_column) or []
        rows.append({
            "image": str(path),
            "text": clean_text(meta.get(text_column)),
            "captions": [clean_text(c) for c in ([captions] if isinstance(captions, str) else captions)],
            "label": meta.get(label_column),
            "answers": meta.get("answers") or [],
            "question": clean_text(meta.get("question")),
            "image_id": meta.get("image_id", name),
        })
    if not rows:
        raise ValueError(f"{folder / METADATA_FILE}: no usable row ({counter.summary()})")
    return rows


def class_names_of(labels) -> list[str] | None:
    """Class names when labels are names other than the sentiment ones (sorted, so every split maps a name to the
    same id); None when they are ids or sentiment names, which `as_label` reads."""
    names = {str(label).strip() for label in labels if isinstance(label, str) and label.strip()}
    if all(name in SENTIMENT_LABELS or name.lstrip("-").isdigit() for name in names):
        return None
    return sorted(name for name in names if not name.lstrip("-").isdigit())


def map_columns(dataset, image_column="image", caption_column=None, text_column=None, label_column=None,
                answers_column=None, id_column=None, question_column=None):
    """Rename/convert a dataset's columns to the schema (as transformers' example scripts take `--image_column`...);
    a `datasets.Dataset` or an `IterableDataset`."""
    import datasets

    names = set(dataset.column_names)

    def convert(row, index):
        captions = row.get(caption_column) if caption_column in names else []
        if isinstance(captions, str):
            captions = [captions]
        label = as_label(row.get(label_column)) if label_column in names else NO_TARGET
        answers = row.get(answers_column) if answers_column in names else []
        if answers and isinstance(answers[0], dict):  # VQAv2: [{"answer": ...}, ...]
            answers = [a.get("answer", "") for a in answers]
        return {
            "image": row[image_column],
            "text": clean_text(row.get(text_column)) if text_column in names else "",
            "captions": [clean_text(c) for c in captions or []],
            "label": label,
            "answers": answers or [],
            "question": clean_text(row.get(question_column)) if question_column in names else "",
            "image_id": str(row.get(id_column, index)) if id_column in names else str(index),
        }

    keep = [c for c in dataset.column_names if c == image_column]
    progress = {"desc": "mapping columns"} if isinstance(dataset, datasets.Dataset) else {}  # a stream maps lazily
    return dataset.map(convert, with_indices=True, remove_columns=[c for c in dataset.column_names if c not in keep],
                       **progress)


def load_hub_dataset(name: str, split: str = "train", config_name: str | None = None, revision: str | None = None,
                     **column_mapping):
    """Any Hub dataset by name with a column mapping (needs the Hub). Settings for the usual ones are in README:
    COCO Karpathy (`yerevann/coco-karpathy`), Flickr30k (`nlphuji/flickr30k`), VQAv2 (`HuggingFaceM4/VQAv2`)."""
    import datasets

    return map_columns(datasets.load_dataset(name, config_name, split=split, revision=revision), **column_mapping)


def load_table(path: str, image_dir: str | None = None, image_column="image", caption_column="captions",
               text_column="text", label_column="label", answers_column="answers"):
    """CSV or JSONL rows with an image path column; paths are relative to `image_dir` (default: the file's folder).
    Caption cells in CSV may hold a JSON list or `|`-separated captions."""
    base = Path(image_dir or Path(path).parent)
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            raw = list(csv.DictReader(handle))
    else:
        with open(path, encoding="utf-8", errors="replace") as handle:
            raw = [json.loads(line) for line in handle if line.strip()]
    rows = []
    for index, row in enumerate(raw):
        captions = row.get(caption_column) or []
        if isinstance(captions, str):
            captions = json.loads(captions) if captions.startswith("[") else [c for c in captions.split("|") if c]

        rows.append({
            "image": str(base / row[image_column]),
            "text": clean_text(row.get(text_column)),
            "captions": [clean_text(c) for c in captions],
            "label": as_label(row.get(label_column)),
            "answers": row.get(answers_column) or [],
            "image_id": row.get("image_id", index),
        })
    return _to_schema(rows)


def load_coco_captions(annotation_file: str, image_dir: str):
    """COCO caption annotations (`captions_train2017.json` etc.) + their image folder: one row per image."""
    with open(annotation_file, encoding="utf-8") as handle:
        data = json.load(handle)
    captions: dict[int, list[str]] = {}
    for annotation in data["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(clean_text(annotation["caption"]))
    rows = [{"image": str(Path(image_dir) / image["file_name"]), "captions": captions.get(image["id"], []),
             "image_id": image["id"]} for image in data["images"]]
    return _to_schema(rows)


def load_karpathy(split_file: str, image_dir: str, split: str = "train"):
    """Karpathy split files (`dataset_coco.json`, `dataset_flickr30k.json`); `split="train"` also takes `restval`,
    `"validation"` is the file's `val`."""
    with open(split_file, encoding="utf-8") as handle:
        images = json.load(handle)["images"]
    wanted = {"train", "restval"} if split == "train" else {{"validation": "val"}.get(split, split)}
    rows = []
    for image in images:
        if image["split"] not in wanted:
            continue
        path = Path(image_dir, image.get("filepath", ""), image["filename"])
        rows.append({"image": str(path), "captions": [clean_text(s["raw"]) for s in image["sentences"]],
                     "image_id": image.get("cocoid", image.get("imgid"))})
    return _to_schema(rows)


MATCHING_CLASSES = ("another photo's caption", "its own caption")


def caption_matching(dataset, seed: int = 0, every_caption: bool = True):
    """A captioned split as a labelled two-way task, as visual entailment builds one from captions: does this caption
    describe this photo? Each (photo, caption) gives two rows: the photo with that caption (label "its own caption")
    and the photo with a caption of another photo, drawn from `seed` (label "another photo's caption"). The classes
    are balanced (chance is 50%) and neither the photo alone nor the caption alone tells the label; only the two
    together do. `every_caption=False` (evaluation splits) takes one caption per photo, drawn from `seed`, so that a
    photo counts once. Photos without captions are left out. Training rows (`every_caption=True`) keep their photo's
    own captions, so retrieval or captioning can train beside the matching task (`--tasks classification,retrieval`);
    evaluation rows carry none, so that every photo is scored once, on the matching task alone."""
    import datasets

    rng = random.Random(seed)
    captions = [_row_captions({"captions": c}) for c in dataset["captions"]]
    photos = [index for index, own in enumerate(captions) if own]
    if len(photos) < 2:
        raise ValueError(f"caption matching needs at least two captioned photos; the split has {len(photos)}")
    images, ids = undecoded(dataset)["image"], dataset["image_id"]
    rows = []
    for index in photos:
        chosen = captions[index] if every_caption else [rng.choice(captions[index])]
        for caption in chosen:
            other = rng.choice(photos[:-1])
            other = photos[-1] if other == index else other  # a uniform draw among the other photos
            own = captions[index] if every_caption else []
            rows.append({"image": images[index], "text": caption, "label": MATCHING_CLASSES[1],
                         "image_id": ids[index], "captions": own})
            rows.append({"image": images[index], "text": rng.choice(captions[other]), "label": MATCHING_CLASSES[0],
                         "image_id": ids[index], "captions": own})
    data = _to_schema(rows, list(MATCHING_CLASSES))
    return data.cast_column("image", datasets.Image()) if isinstance(rows[0]["image"], dict) else data


def merge_sentiment_pair(text_label: str, image_label: str) -> str | None:
    """MVSA's rule for one annotator's (text, image) pair: equal -> that label; one neutral -> the other;
    positive against negative -> None (the pair is dropped)."""
    if text_label == image_label:
        return text_label
    if "neutral" in (text_label, image_label):
        return image_label if text_label == "neutral" else text_label
    return None


def load_mvsa(root: str, seed: int = 0, counter: BadRowCounter | None = None):
    """The MVSA layout: `root/data/{id}.jpg` + `{id}.txt` and `root/labelResultAll.txt` (a header, then
    `id<TAB>text,image` for MVSA-Single or three annotators' pairs for MVSA-Multiple, merged by majority).

    Returns a `DatasetDict` with a reproducible 8:1:1 train/validation/test split drawn from `seed`. Rows whose
    pairs conflict, or whose annotators have no majority, are dropped and counted in `counter`.
    """
    import datasets

    counter = counter if counter is not None else BadRowCounter()
    root = Path(root)
    rows = []
    with open(root / "labelResultAll.txt", encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()[1:]
    for line in lines:
        parts = line.strip().split("\t")
        if len(parts) < 2:
            continue
        sample_id, pairs = parts[0], parts[1:]
        merged = [merge_sentiment_pair(*pair.split(",")[:2]) for pair in pairs if "," in pair]
        votes = Counter(label for label in merged if label is not None)
        if not votes:
            counter.add("conflicting sentiment", sample_id)
            continue
        (label, count), *rest = votes.most_common()
        if len(pairs) > 1 and (count <= len(pairs) // 2 or (rest and rest[0][1] == count)):
            counter.add("no majority", sample_id)
            continue
        text_path = root / "data" / f"{sample_id}.txt"
        text = clean_text(text_path.read_bytes()) if text_path.exists() else ""
        rows.append({"image": str(root / "data" / f"{sample_id}.jpg"), "text": text,
                     "label": SENTIMENT_LABELS.index(label), "image_id": sample_id})
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_train, n_val = math.floor(0.8 * len(rows)), math.floor(0.1 * len(rows))
    splits = {"train": order[:n_train], "validation": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return datasets.DatasetDict({name: _to_schema([rows[i] for i in idx]) for name, idx in splits.items()})


# ======================================================================================================= command line


def add_data_arguments(parser, streaming: bool = True) -> None:
    """The data options every script shares (as transformers' example scripts name them); `streaming=False` leaves
    out the options of reading a stream for training (a script that only reads a source)."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="synthetic",
                      choices=["synthetic", "imagefolder", "table", "hub", "webdataset", "coco", "karpathy", "mvsa"])
    data.add_argument("--data_dir", help="imagefolder / MVSA root / COCO or Karpathy image folder / folder of "
                                         "WebDataset shards (train-*.tar, validation-*.tar)")
    data.add_argument("--data_file", help="CSV/JSONL table, COCO captions_*.json or Karpathy dataset_*.json")
    data.add_argument("--validation_file", help="validation table or COCO annotation file (else a split is held out)")
    data.add_argument("--dataset_name", help="Hub dataset id (with --dataset hub)")
    data.add_argument("--dataset_config_name")
    data.add_argument("--dataset_revision", help="Hub dataset revision (commit) to pin")
    data.add_argument("--image_column", default="image")
    data.add_argument("--caption_column", default="captions")
    data.add_argument("--text_column", default="text")
    data.add_argument("--label_column", default="label")
    data.add_argument("--answers_column", default="answers")
    data.add_argument("--synthetic_samples", type=int, default=4000, help="rows (images) of the embedded dataset")
    data.add_argument("--synthetic_test_samples", type=int, default=1000, help="rows of its test split")
    data.add_argument("--synthetic_objects", type=int, default=SyntheticSpec.objects, help="(most) shapes per image")
    data.add_argument("--synthetic_min_objects", type=int, default=SyntheticSpec.min_objects,
                      help="fewest shapes per image (the count is drawn per image)")
    data.add_argument("--synthetic_colours", type=int, default=SyntheticSpec.num_colours, help="colours in use")
    data.add_argument("--synthetic_shapes", type=int, default=SyntheticSpec.num_shapes, help="shape kinds in use")
    data.add_argument("--data_seed", type=int, default=0, help="seed of the embedded dataset and of held-out splits")
    data.add_argument("--validation_fraction", type=float, default=0.1)
    data.add_argument("--caption_matching", action="store_true",
                      help="turn a captioned source into a labelled two-way task (train with --tasks "
                           "classification, or classification,retrieval): does this caption describe this photo or "
                           "another photo? Each training caption gives one matching and one mismatched row (both keep "
                           "the photo's own captions); evaluation splits take one caption per photo; chance is 50%% "
                           "(not with --streaming)")
    data.add_argument("--max_samples", type=int, help="use at most this many rows of the split")
    data.add_argument("--num_workers", type=int, default=0)
    if not streaming:
        return
    stream = parser.add_argument_group("streaming (--dataset webdataset or hub)")
    stream.add_argument("--streaming", action="store_true",
                        help="read the training rows as a stream (datasets' IterableDataset): nothing is downloaded "
                             "or loaded whole; needs --max_steps")
    stream.add_argument("--shuffle_buffer_size", type=int, default=1000,
                        help="rows in the seeded shuffle buffer of a stream (0: source order)")
    stream.add_argument("--max_eval_samples", type=int, default=1000,
                        help="validation rows read from a stream (held once in memory)")


def data_options(**values) -> argparse.Namespace:
    """The data options as `add_data_arguments` defines them, with `values` set: what `load_split` takes outside a
    command line, e.g. `load_split(data_options(dataset="imagefolder", data_dir="photos/"), "validation")`."""
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    options = parser.parse_args([])
    for key, value in values.items():
        if not hasattr(options, key):
            raise ValueError(f"data_options: unknown option {key!r}; see add_data_arguments")
        setattr(options, key, value)
    return options


def load_split(args, split: str, counter: BadRowCounter | None = None, hold_out_validation: bool = False):
    """The `split` ("train", "validation" or "test") of the dataset that `args` (parsed data options, or a dict of
    them: see `data_options`) names, in the common schema.

    The source's own splits are used as they are (imagefolder split folders, Karpathy's train+restval/val/test,
    COCO/table `--data_file` + `--validation_file`, Hub splits, MVSA's 8:1:1, the embedded dataset's train and
    test). A split is made only where the source has none, and a warning says so:
    - "validation" missing: a seeded `--validation_fraction` of "train" is held out; with `hold_out_validation`
      (training) "train" is then the rest, so the two never share a row;
    - any other split missing from a source with a single split (a folder of images + metadata.jsonl, one
      annotation file): every row of that split is used;
    - otherwise the error names the splits the source has.
    """
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, got {split!r}")
    if isinstance(args, dict):
        args = data_options(**args)
    splits = _source_splits(args, counter if counter is not None else BadRowCounter())
    source = _source_name(args)
    if split == "train" and hold_out_validation and "validation" not in splits and "train" in splits:
        data = _held_out(splits["train"](), "train", args)
        logger.warning(f"{source} has no validation split: holding out {args.validation_fraction:.0%} of its train "
                       f"split (seed {args.data_seed}); training on the other {len(data)} rows")
    elif split in splits:
        data = splits[split]()
    elif split == "validation" and "train" in splits:
        data = _held_out(splits["train"](), "validation", args)
        how = "by a hash of image_id, as --streaming holds them out" if args.dataset in STREAMABLE else "seeded split"
        logger.warning(f"{source} has no validation split: using the {len(data)} rows held out of its train split "
                       f"({args.validation_fraction:.0%}, seed {args.data_seed}, {how})")
    elif len(splits) == 1:
        (only, load), = splits.items()
        data = load()
        logger.warning(f"{source} has no {split} split, only {only!r}: using all {len(data)} rows of it (a model "
                       f"trained on this source has seen most of them; give the folder a {split}/ split for a fair "
                       "score)")
    else:
        raise ValueError(f"{source} has no {split!r} split; it has {sorted(splits)}")
    if getattr(args, "caption_matching", False):
        data = caption_matching(data, seed=args.data_seed, every_caption=split == "train")
    if args.max_samples:
        data = data.select(range(min(args.max_samples, len(data))))
    return data


# Sources that `--streaming` reads: their validation rows, where they have no validation split, are chosen by a
# hash of the image id (`held_out_by_id`), whether the source is streamed or read whole, so that evaluating a model
# trained on a stream scores the very rows that training held out.
STREAMABLE = ("webdataset", "hub")


def held_out_by_id(image_id, fraction: float, seed: int = 0) -> bool:
    """Whether the row of `image_id` is one of the `fraction` held out for validation: a hash of the id and the seed,
    so every process, epoch and reading order agrees."""
    return _stable_id(f"validation:{seed}:{image_id}") % 10_000 < fraction * 10_000


def _held_out(full, split, args):
    if args.dataset in STREAMABLE:
        keep = [held_out_by_id(i, args.validation_fraction, args.data_seed) == (split == "validation")
                for i in full["image_id"]]
        return full.select([index for index, wanted in enumerate(keep) if wanted])
    parts = full.train_test_split(test_size=args.validation_fraction, seed=args.data_seed)
    return parts["train"] if split == "train" else parts["test"]


def _source_name(args) -> str:
    if args.dataset == "hub":
        return f"Hub dataset {args.dataset_name}"
    if args.dataset == "synthetic":
        return "the embedded dataset"
    return f"{args.dataset} source {args.data_dir or args.data_file}"


def _source_splits(args, counter) -> dict:
    """The splits the source itself has, each as a function that loads it (nothing is read before it is needed)."""
    columns = dict(caption_column=args.caption_column, text_column=args.text_column, label_column=args.label_column)
    if args.dataset == "synthetic":
        knobs = dict(objects=args.synthetic_objects, num_colours=args.synthetic_colours,
                     num_shapes=args.synthetic_shapes, min_objects=args.synthetic_min_objects)
        return {"train": lambda: synthetic_dataset(args.synthetic_samples, seed=args.data_seed, **knobs),
                "test": lambda: synthetic_dataset(args.synthetic_test_samples, seed=args.data_seed + 1, **knobs)}
    if args.dataset == "mvsa":
        splits = load_mvsa(args.data_dir, seed=args.data_seed, counter=counter)
        return {name: (lambda part=part: part) for name, part in splits.items()}
    if args.dataset == "imagefolder":
        splits = load_imagefolder(args.data_dir, split=None, counter=counter, **columns)
        return {name: (lambda part=part: part) for name, part in splits.items()}
    if args.dataset == "karpathy":
        return {name: (lambda name=name: load_karpathy(args.data_file, args.data_dir, name))
                for name in ("train", "validation", "test")}
    if args.dataset == "hub":
        import datasets

        mapping = dict(image_column=args.image_column, answers_column=args.answers_column, **columns)
        names = datasets.get_dataset_split_names(args.dataset_name, args.dataset_config_name,
                                                 revision=args.dataset_revision)
        canonical = {SPLIT_FOLDERS.get(name, name): name for name in names}
        return {split: (lambda name=name: load_hub_dataset(args.dataset_name, name, args.dataset_config_name,
                                                           revision=args.dataset_revision, **mapping))
                for split, name in canonical.items()}
    if args.dataset == "webdataset":
        from .streaming_xattn import load_shards

        splits = load_shards(args.data_dir)
        return {name: (lambda part=part: part) for name, part in splits.items()}
    if args.dataset == "coco":
        files = {"train": args.data_file, "validation": args.validation_file}
        return {name: (lambda path=path: load_coco_captions(path, args.data_dir)) for name, path in files.items() if path}
    if args.dataset == "table":
        files = {"train": args.data_file, "validation": args.validation_file}
        return {name: (lambda path=path: load_table(path, args.data_dir, image_column=args.image_column, **columns))
                for name, path in files.items() if path}
    raise ValueError(f"--dataset {args.dataset!r} is not a known source")


def undecoded(dataset):
    """Leave image decoding to the collator, so one unreadable image is skipped there instead of crashing a read."""
    import datasets

    if isinstance(dataset.features.get("image"), datasets.Image):
        return dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


__all__ = [
    "NO_TARGET",
    "TASK_TARGETS",
    "as_label",
    "class_names",
    "class_names_of",
    "row_targets",
    "CaptionPairs",
    "CaptionPerPhoto",
    "EpochSeeded",
    "RandomResizedCrops",
    "MATCHING_CLASSES",
    "caption_matching",
    "read_metadata",
    "flickr8k_to_imagefolder",
    "add_data_arguments",
    "load_split",
    "undecoded",
    "SyntheticSpec",
    "synthetic_dataset",
    "synthetic_example",
    "BadRowCounter",
    "XAttnCollator",
    "load_image",
    "clean_text",
    "vqa_soft_scores",
    "answer_vocabulary",
    "map_columns",
    "load_imagefolder",
    "load_hub_dataset",
    "load_table",
    "load_coco_captions",
    "load_karpathy",
    "load_mvsa",
    "merge_sentiment_pair",
]
