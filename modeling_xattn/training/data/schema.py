"""The common row schema every source produces, and the targets a row offers a batch.

Schema (every loader returns these columns; a task ignores what it does not use):
    image     - a PIL image (`datasets.Image()` feature) or a path string
    text      - statement, tweet or question for classification / VQA ("" when there is none)
    captions  - list of reference captions (empty when there are none)
    label     - class id for classification, -100 (`NO_TARGET`) when unlabelled
    answers   - list of human answers for VQA (empty when there are none)
    image_id  - an identifier of the image (several captions of one image share it)
and beside them, for VQA: question (the question where `text` is a statement), question_id and answer_type (as the
official files give them; "" elsewhere).

Unreadable, truncated or missing images and decompression bombs are refused by `load_image` and counted by the
callers in `BadRowCounter`; non-UTF-8 text is converted (`clean_text`)."""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from modeling_xattn.configuration_xattn import SENTIMENT_LABELS
from modeling_xattn.training.data.vqa import answer_accuracies, normalize_answer

SCHEMA = ("image", "text", "captions", "label", "answers", "image_id")
VQA_COLUMNS = ("question", "question_id", "answer_type")  # beside the schema, "" where a source has none


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


def row_captions(row) -> list[str]:
    return [text for text in (clean_text(c) for c in row.get("captions") or []) if text]


# The row targets a batch is made of: "statement" (a text with a class label), "question" (a VQA question, read as
# the text), "caption". A batch's `targets` name them joined by "+" (`tasks.batch_targets` picks a run's from its
# tasks' registry targets); a row is usable for a batch when it carries at least one of them.
BATCH_TARGETS = {name: tuple(name.split("+")) for name in
                 ("statement+caption", "statement", "question+caption", "question", "caption")}
# Why a row has none of a batch's targets, target by target, for the skipped-row summary (caption first).
MISSING_TARGET = {"caption": "no caption", "statement": "no labelled text", "question": "no question"}


def row_text(row, targets: str) -> str:
    """The text the fused encoder reads for a row in a batch of `targets`: the question for VQA, else the statement."""
    reads_question = "question" in BATCH_TARGETS[targets]
    return clean_text((row.get("question") or row.get("text")) if reads_question else row.get("text"))


def row_targets(row, targets: str) -> set[str]:
    """Which of a batch's `targets` `row` carries: "statement" (text + class label), "question" (VQA question),
    "caption" (at least one non-empty caption). Reads no image."""
    carried = set()
    text = row_text(row, targets)
    if text and as_label(row.get("label")) != NO_TARGET:
        carried.add("statement")
    if text and "question" in BATCH_TARGETS[targets]:
        carried.add("question")
    if row_captions(row):
        carried.add("caption")
    return carried & set(BATCH_TARGETS[targets])


def missing_target_reason(row, targets: str) -> str:
    """Why a row has none of a batch's `targets`, for the skipped-row summary."""
    if targets == "statement":
        return "empty text" if not row_text(row, targets) else "no label"
    if targets == "question":
        return "empty question"
    wanted = sorted(BATCH_TARGETS[targets], key=lambda target: target != "caption")
    return " and ".join(MISSING_TARGET[target] for target in wanted)


def stable_id(value) -> int:
    """An integer id for any image id, equal across processes (Python's str hash is salted per process)."""
    import hashlib

    if isinstance(value, int):
        return value
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=7).digest(), "big")


def vqa_soft_scores(answers: list[list[str]], vocab: dict[str, int]) -> torch.Tensor:
    """The standard VQA target: score(a) = min(#annotators who gave a / 3, 1) for each answer in the vocabulary,
    the answers normalised as the official evaluation normalises a prediction (`normalize_answer`)."""
    scores = torch.zeros(len(answers), len(vocab))
    for row, given in enumerate(answers):
        for answer, count in Counter(normalize_answer(clean_text(a)) for a in given).items():
            if answer in vocab:
                scores[row, vocab[answer]] = vqa_score(count)
    return scores


def vqa_answer_accuracy(answers: list[list[str]], vocab: dict[str, int]) -> torch.Tensor:
    """For each row and each vocabulary answer, the official VQA accuracy that answer would score (`vqa.py`: the
    10-choose-9 average against the row's human answers): evaluation reads it at the predicted answer."""
    table = torch.zeros(len(answers), len(vocab))
    for row, given in enumerate(answers):
        # the human answers as given (the official evaluation neither strips nor collapses their spaces)
        for answer, accuracy in answer_accuracies([a if isinstance(a, str) else clean_text(a) for a in given]).items():
            if answer in vocab:
                table[row, vocab[answer]] = accuracy
    return table


def answer_vocabulary(dataset, top_k: int = 3129) -> list[str]:
    """The `top_k` most frequent answers (VQAv2's usual 3129), normalised as the official evaluation normalises a
    prediction, most frequent first."""
    counts = Counter(normalize_answer(clean_text(a)) for answers in dataset["answers"] for a in answers)
    return [a for a, _ in counts.most_common(top_k) if a]


def to_schema(rows: list[dict], class_names: list[str] | None = None):
    """Rows -> a Dataset of the schema. With `class_names`, string labels become ids into it and the label column a
    `ClassLabel` that carries the names (the training script names the classifier's outputs after them; a missing
    label is then -1, ClassLabel's own mark, which `as_label` reads as -100)."""
    import datasets

    for row in rows:
        row.setdefault("text", "")
        row.setdefault("captions", [])
        row["label"] = label_id(row.get("label"), class_names)
        row.setdefault("answers", [])
        for key in VQA_COLUMNS:
            row[key] = "" if row.get(key) is None else str(row[key])
    columns = {key: [row.get(key) for row in rows] for key in (*SCHEMA, *VQA_COLUMNS)}
    columns["image_id"] = [str(v) for v in columns["image_id"]]
    dataset = datasets.Dataset.from_dict(columns)
    return dataset.cast_column("label", datasets.ClassLabel(names=class_names)) if class_names else dataset


def label_id(label, class_names: list[str] | None = None) -> int:
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


def class_names_of(labels) -> list[str] | None:
    """Class names when labels are names other than the sentiment ones (sorted, so every split maps a name to the
    same id); None when they are ids or sentiment names, which `as_label` reads."""
    names = {str(label).strip() for label in labels if isinstance(label, str) and label.strip()}
    if all(name in SENTIMENT_LABELS or name.lstrip("-").isdigit() for name in names):
        return None
    return sorted(name for name in names if not name.lstrip("-").isdigit())


# The split folder names `datasets`' imagefolder recognises, mapped to the split they hold.
SPLIT_FOLDERS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test", "eval": "test",
                 "evaluation": "test"}


def vqa_score(count: int) -> float:
    """The standard VQA soft score of an answer given by `count` of the annotators: min(count / 3, 1)."""
    return min(count / 3.0, 1.0)


def undecoded(dataset):
    """Leave image decoding to the collator, so one unreadable image is skipped there instead of crashing a read."""
    import datasets

    if isinstance(dataset.features.get("image"), datasets.Image):
        return dataset.cast_column("image", datasets.Image(decode=False))
    return dataset
