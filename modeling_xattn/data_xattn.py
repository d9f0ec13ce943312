"""Data layer: every source becomes one `datasets.Dataset` schema, and one collator turns rows into model batches.

Schema (every loader returns these columns; a task ignores what it does not use):
    image     - a PIL image (`datasets.Image()` feature) or a path string
    text      - statement, tweet or question for classification / VQA ("" when there is none)
    captions  - list of reference captions (empty when there are none)
    label     - class id for classification, -1 when unlabelled
    answers   - list of human answers for VQA (empty when there are none)
    image_id  - an identifier of the image (several captions of one image share it)

Sources: the embedded synthetic dataset (`synthetic_dataset`, no download), a local imagefolder with
`metadata.jsonl`, CSV/JSONL files with image paths, any Hub dataset with a column mapping, COCO caption annotation
files, Karpathy split files, and the MVSA sentiment layout. Bad rows (unreadable, truncated or missing images,
decompression bombs, empty or undecodable text) are skipped by the collator and counted in `BadRowCounter`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

SCHEMA = ("image", "text", "captions", "label", "answers", "image_id")
SENTIMENT_LABELS = ("positive", "neutral", "negative")

# ======================================================================================================= embedded data

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
           "purple": (150, 60, 190), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")


@dataclass
class SyntheticSpec:
    """Size knobs of the embedded dataset.

    num_samples: rows to make; image_size: side in pixels; objects: shapes per image (each a distinct colour, on a
    3x3 grid of cells); min_objects: if set, each image draws its count from min_objects..objects;
    num_colours / num_shapes: how many of the palette's colours and shapes are used;
    captions_per_image: reference captions per image (1-5: listing, positions, count, "a picture of", bindings);
    seed: everything is a deterministic function of (seed, row index).
    """

    num_samples: int = 4000
    image_size: int = 64
    objects: int = 2
    seed: int = 0
    num_colours: int = 4
    num_shapes: int = len(SHAPES)
    captions_per_image: int = 5
    min_objects: int | None = None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], colour):
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:  # cross
        w = (x1 - x0) / 3
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=colour)
        draw.rectangle((x0, y0 + w, x1, y1 - w), fill=colour)


NUMBERS = ("no", "one", "two", "three", "four", "five", "six")


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def synthetic_example(index: int, spec: SyntheticSpec) -> dict:
    """One row of the embedded dataset (see `synthetic_dataset` for the design)."""
    rng = random.Random(spec.seed * 1_000_003 + index)
    palette, shape_names = list(COLOURS)[: spec.num_colours], SHAPES[: spec.num_shapes]
    count = spec.objects if spec.min_objects is None else rng.randint(spec.min_objects, spec.objects)
    colours = rng.sample(palette, count)
    shapes = [rng.choice(shape_names) for _ in colours]
    cells = sorted(rng.sample(range(9), count))
    order = list(range(count))
    rng.shuffle(order)
    objects = [(colours[i], shapes[i], cells[j]) for j, i in enumerate(order)]  # cells sorted: reading order

    size = spec.image_size
    image = Image.new("RGB", (size, size), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for colour, shape, position in objects:
        row, col = divmod(position, 3)
        jitter = rng.uniform(-0.08, 0.08) * cell
        scale = rng.uniform(0.55, 0.8) * cell
        cx, cy = (col + 0.5) * cell + jitter, (row + 0.5) * cell - jitter
        _draw_shape(draw, shape, (cx - scale / 2, cy - scale / 2, cx + scale / 2, cy + scale / 2), COLOURS[colour])

    # 3-way statement naming two colours; the label is drawn first so the classes are balanced.
    label = rng.randrange(3)
    present = sorted({colour for colour, _, _ in objects})
    absent = [c for c in palette if c not in present]
    if label == 0:  # positive: both named colours are in the image
        named = rng.sample(present, 2)
    elif label == 2:  # negative: neither is
        named = rng.sample(absent, 2)
    else:  # neutral: one is, one is not (the statement is half true)
        named = [rng.choice(present), rng.choice(absent)]
        rng.shuffle(named)
    text = f"there is a {named[0]} shape and a {named[1]} shape"

    listed = _join([f"a {c} {s}" for c, s, _ in objects])
    captions = [  # five references per image, as COCO has
        listed,
        " ".join(f"{c} {s} at the {POSITIONS[p]}." for c, s, p in objects),
        f"there {'is' if len(objects) == 1 else 'are'} {NUMBERS[len(objects)]} "
        f"shape{'s' if len(objects) > 1 else ''}: {listed}",
        f"a picture of {listed} on a dark background",
        _join([f"the {c} shape is a {s}" for c, s, _ in objects]),
    ][: spec.captions_per_image]
    asked_colour, asked_shape, _ = objects[rng.randrange(len(objects))]
    return {
        "image": image,
        "text": text,
        "captions": captions,
        "label": label,
        "question": f"what shape is the {asked_colour} one",
        "answers": [asked_shape] * 10,
        "image_id": index,
    }


def synthetic_dataset(num_samples: int = 4000, image_size: int = 64, objects: int = 2, seed: int = 0,
                      num_colours: int = 4, num_shapes: int = len(SHAPES), captions_per_image: int = 5,
                      min_objects: int | None = None):
    """The embedded default dataset: coloured shapes on a 3x3 grid, deterministic by seed, made on the fly.

    Each image holds `objects` shapes (or a count drawn from `min_objects`..`objects`), each in a distinct colour of
    the first `num_colours` of the palette (defaults: 2 shapes, 4 colours: the sizes the main job learns).
    The 3-way statement "there is a <colour> shape and a <colour> shape" is *positive* when both named colours are in
    the image, *neutral* when exactly one is (half true), and *negative* when neither is. The label is drawn first and
    the statement built from it:
    - from the text alone every colour pair is equally likely under each label (chance, 1/3);
    - from the image alone nothing says which colours will be named (chance, 1/3);
    - with both, each colour word has to be grounded in the image regions (is there a region of this colour?) and the
      two answers combined: a word-to-region look-up, which is what text-to-image cross-attention does.
    Why colours and not shapes: in the main job's minutes the tiny model learned the colour look-up (a colour is a
    per-pixel feature) but not the shape comparison: a statement "the <colour> shape is a <shape>" (true / on
    another shape / colour absent) stayed at 66% (the colour-absent class only), with 1, 2 or 3 shapes per image.
    Five reference captions per image (as COCO has) describe every shape in reading order in five phrasings
    ("a red circle, a blue square and a green cross", "red circle at the top left. ...", "there are three shapes:
    ...", "a picture of ... on a dark background", "the red shape is a circle, ..."), so most images have a distinct
    description and retrieval is meaningful. VQA rows ask "what shape is the <colour> one" with 10 identical answers.
    Knobs: `num_samples`, `image_size`, `objects`, `min_objects`, `num_colours`, `num_shapes`,
    `captions_per_image`, `seed`.
    """
    import datasets

    fewest = objects if min_objects is None else min_objects
    if not 2 <= fewest <= objects <= num_colours - 2 or num_colours > len(COLOURS) or not 1 <= num_shapes <= len(SHAPES):
        raise ValueError(f"synthetic_dataset: need 2 <= min_objects <= objects <= num_colours - 2 (two colours present and "
                         f"two absent), num_colours <= {len(COLOURS)}, 1 <= num_shapes <= {len(SHAPES)}; got "
                         f"objects={objects}, min_objects={min_objects}, num_colours={num_colours}, num_shapes={num_shapes}")
    if not 1 <= captions_per_image <= 5:
        raise ValueError(f"synthetic_dataset: captions_per_image must be 1-5, got {captions_per_image}")
    spec = SyntheticSpec(num_samples, image_size, objects, seed, num_colours, num_shapes, captions_per_image,
                         min_objects)
    features = datasets.Features({
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "captions": datasets.Sequence(datasets.Value("string")),
        "label": datasets.ClassLabel(names=list(SENTIMENT_LABELS)),
        "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")),
        "image_id": datasets.Value("int64"),
    })
    rows = [synthetic_example(i, spec) for i in range(num_samples)]
    columns = {key: [row[key] for row in rows] for key in features}
    return datasets.Dataset.from_dict(columns, features=features)


# ======================================================================================================= bad rows


@dataclass
class BadRowCounter:
    """Counts rows skipped for bad input, by reason; `summary()` is printed at the end of a run."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add(self, reason: str, where: str = ""):
        self.counts[reason] += 1
        self.examples.setdefault(reason, where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "bad rows skipped: 0"
        parts = [f"{reason}: {n} (e.g. {self.examples[reason]})" for reason, n in self.counts.most_common()]
        return f"bad rows skipped: {self.total} - " + "; ".join(parts)


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


class XAttnCollator:
    """Rows of the schema -> a model batch through `XAttnProcessor`.

    task: "multitask" (classification labels + one caption per image for retrieval and captioning),
    "classification", "vqa" (question + soft scores over `answer_vocab`), "vqa+captions", "retrieval" or
    "captioning". A row whose image cannot
    be read, or whose text the task needs is empty, is skipped and counted; the batch shrinks, the run goes on.
    `caption_index` picks which reference caption trains the model; None draws one per row from `generator`.
    """

    def __init__(self, processor, task: str = "multitask", answer_vocab: list[str] | None = None,
                 counter: BadRowCounter | None = None, caption_index: int | None = 0, image_dir: str | None = None):
        self.processor = processor
        self.task = task
        self.answer_vocab = {a: i for i, a in enumerate(answer_vocab or [])}
        self.counter = counter if counter is not None else BadRowCounter()
        self.caption_index = caption_index
        self.image_dir = image_dir

    def _row_ok(self, row, needs_text, needs_caption, needs_label):
        text = (row.get("question") or row.get("text")) if self.task.startswith("vqa") else row.get("text")
        if needs_text and not clean_text(text):
            return "empty text"
        if needs_caption and not [c for c in row.get("captions") or [] if clean_text(c)]:
            return "no caption"
        if needs_label and row.get("label", -1) in (None, -1):
            return "no label"
        return None

    def __call__(self, rows: list[dict]) -> dict:
        task = self.task
        needs_text = task in ("multitask", "classification", "vqa", "vqa+captions")
        needs_caption = task in ("multitask", "retrieval", "captioning", "vqa+captions")
        needs_label = task == "classification"
        images, texts, captions, labels, answers, ids, kept = [], [], [], [], [], [], []
        for position, row in enumerate(rows):
            reason = self._row_ok(row, needs_text, needs_caption, needs_label)
            if reason is None:
                try:
                    image = load_image(row["image"], self.image_dir)
                except Exception as error:  # unreadable, truncated, missing or too large: skip, count
                    reason = f"bad image ({type(error).__name__})"
            if reason is not None:
                self.counter.add(reason, str(row.get("image_id", "")))
                continue
            images.append(image)
            kept.append(position)
            texts.append(clean_text((row.get("question") or row.get("text")) if task.startswith("vqa") else row.get("text")))
            row_captions = [clean_text(c) for c in row.get("captions") or [] if clean_text(c)]
            if row_captions:
                index = self.caption_index if self.caption_index is not None else random.randrange(len(row_captions))
                captions.append(row_captions[min(index, len(row_captions) - 1)])
            labels.append(row.get("label", -1) if row.get("label") is not None else -1)
            answers.append(row.get("answers") or [])
            ids.append(row.get("image_id", len(ids)))
        if not images:
            return {}
        batch = dict(self.processor(
            images=images,
            text=texts if needs_text else None,
            captions=captions if needs_caption else None,
        ))
        if task in ("multitask", "classification"):
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if task.startswith("vqa"):
            batch["labels"] = vqa_soft_scores(answers, self.answer_vocab)
        batch["image_ids"] = torch.tensor([_stable_id(i) for i in ids], dtype=torch.long)
        batch["row_index"] = torch.tensor(kept, dtype=torch.long)  # which of `rows` made it into the batch
        return batch


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
                scores[row, vocab[answer]] = min(count / 3.0, 1.0)
    return scores


def answer_vocabulary(dataset, top_k: int = 3129) -> list[str]:
    """The `top_k` most frequent answers (VQAv2's usual 3129), most frequent first."""
    counts = Counter(clean_text(a).lower() for answers in dataset["answers"] for a in answers)
    return [a for a, _ in counts.most_common(top_k)]


# ======================================================================================================= loaders


def _to_schema(rows: list[dict]):
    import datasets

    for row in rows:
        row.setdefault("text", "")
        row.setdefault("captions", [])
        row.setdefault("label", -1)
        row.setdefault("answers", [])
        row.setdefault("question", "")
    columns = {key: [row.get(key) for row in rows] for key in (*SCHEMA, "question")}
    columns["image_id"] = [str(v) for v in columns["image_id"]]
    return datasets.Dataset.from_dict(columns)


def load_imagefolder(data_dir: str, split: str = "train", caption_column: str = "captions", text_column: str = "text",
                     label_column: str = "label"):
    """A local imagefolder with `metadata.jsonl` (the datasets convention), through `datasets.load_dataset`."""
    import datasets

    dataset = datasets.load_dataset("imagefolder", data_dir=data_dir, split=split)
    return map_columns(dataset, image_column="image", caption_column=caption_column, text_column=text_column,
                       label_column=label_column)


def map_columns(dataset, image_column="image", caption_column=None, text_column=None, label_column=None,
                answers_column=None, id_column=None, question_column=None):
    """Rename/convert a dataset's columns to the schema (as transformers' example scripts take `--image_column`...)."""
    names = set(dataset.column_names)

    def convert(row, index):
        captions = row.get(caption_column) if caption_column in names else []
        if isinstance(captions, str):
            captions = [captions]
        label = row.get(label_column) if label_column in names else -1
        answers = row.get(answers_column) if answers_column in names else []
        if answers and isinstance(answers[0], dict):  # VQAv2: [{"answer": ...}, ...]
            answers = [a.get("answer", "") for a in answers]
        return {
            "image": row[image_column],
            "text": clean_text(row.get(text_column)) if text_column in names else "",
            "captions": [clean_text(c) for c in captions or []],
            "label": -1 if label is None else label,
            "answers": answers or [],
            "question": clean_text(row.get(question_column)) if question_column in names else "",
            "image_id": str(row.get(id_column, index)) if id_column in names else str(index),
        }

    keep = [c for c in dataset.column_names if c == image_column]
    return dataset.map(convert, with_indices=True, remove_columns=[c for c in dataset.column_names if c not in keep],
                       desc="mapping columns")


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
        label = row.get(label_column, -1)
        rows.append({
            "image": str(base / row[image_column]),
            "text": clean_text(row.get(text_column)),
            "captions": [clean_text(c) for c in captions],
            "label": int(label) if str(label).lstrip("-").isdigit() else SENTIMENT_LABELS.index(label) if label in SENTIMENT_LABELS else -1,
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
    """Karpathy split files (`dataset_coco.json`, `dataset_flickr30k.json`); `split="train"` also takes `restval`."""
    with open(split_file, encoding="utf-8") as handle:
        images = json.load(handle)["images"]
    wanted = {"train", "restval"} if split == "train" else {split}
    rows = []
    for image in images:
        if image["split"] not in wanted:
            continue
        path = Path(image_dir, image.get("filepath", ""), image["filename"])
        rows.append({"image": str(path), "captions": [clean_text(s["raw"]) for s in image["sentences"]],
                     "image_id": image.get("cocoid", image.get("imgid"))})
    return _to_schema(rows)


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


def add_data_arguments(parser) -> None:
    """The data options every script shares (as transformers' example scripts name them)."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="synthetic",
                      choices=["synthetic", "imagefolder", "table", "hub", "coco", "karpathy", "mvsa"])
    data.add_argument("--data_dir", help="imagefolder / MVSA root / COCO or Karpathy image folder")
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
    data.add_argument("--synthetic_samples", type=int, default=4000, help="rows of the embedded dataset")
    data.add_argument("--synthetic_test_samples", type=int, default=1000, help="rows of its test split")
    data.add_argument("--synthetic_objects", type=int, default=SyntheticSpec.objects, help="(most) shapes per image")
    data.add_argument("--synthetic_min_objects", type=int, default=SyntheticSpec.min_objects,
                      help="fewest shapes per image (the count is drawn per image)")
    data.add_argument("--synthetic_colours", type=int, default=SyntheticSpec.num_colours, help="colours in use")
    data.add_argument("--synthetic_shapes", type=int, default=SyntheticSpec.num_shapes, help="shape kinds in use")
    data.add_argument("--data_seed", type=int, default=0, help="seed of the embedded dataset and of held-out splits")
    data.add_argument("--validation_fraction", type=float, default=0.1)
    data.add_argument("--max_samples", type=int, help="use at most this many rows of the split")
    data.add_argument("--num_workers", type=int, default=0)


def load_split(args, split: str, counter: BadRowCounter | None = None):
    """The `split` ("train", "validation" or "test") of the dataset the arguments name, in the common schema.

    Where a source has no such split, "validation" is a seeded held-out fraction of the training rows; the
    embedded dataset's "test" split is drawn with another seed, so its images are new.
    """
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, got {split!r}")
    data = _load_split(args, split, counter)
    if args.max_samples:
        data = data.select(range(min(args.max_samples, len(data))))
    return data


def _held_out(full, split, args):
    parts = full.train_test_split(test_size=args.validation_fraction, seed=args.data_seed)
    return parts["train"] if split == "train" else parts["test"]


def _load_split(args, split, counter):
    if args.dataset == "synthetic":
        knobs = dict(objects=args.synthetic_objects, num_colours=args.synthetic_colours,
                     num_shapes=args.synthetic_shapes, min_objects=args.synthetic_min_objects)
        if split == "test":
            return synthetic_dataset(args.synthetic_test_samples, seed=args.data_seed + 1, **knobs)
        return _held_out(synthetic_dataset(args.synthetic_samples, seed=args.data_seed, **knobs), split, args)
    if args.dataset == "mvsa":
        return load_mvsa(args.data_dir, seed=args.data_seed, counter=counter)[split]
    if args.dataset == "karpathy":
        return load_karpathy(args.data_file, args.data_dir, {"validation": "val"}.get(split, split))
    if args.dataset == "hub":
        mapping = dict(image_column=args.image_column, caption_column=args.caption_column,
                       text_column=args.text_column, label_column=args.label_column,
                       answers_column=args.answers_column)
        return load_hub_dataset(args.dataset_name, split, args.dataset_config_name, revision=args.dataset_revision,
                                **mapping)
    if args.dataset == "coco" and split != "train" and args.validation_file:
        return load_coco_captions(args.validation_file, args.data_dir)
    if args.dataset == "coco":
        full = load_coco_captions(args.data_file, args.data_dir)
    elif args.dataset == "imagefolder":
        full = load_imagefolder(args.data_dir, caption_column=args.caption_column, text_column=args.text_column,
                                label_column=args.label_column)
    else:
        if split != "train" and args.validation_file:
            return load_table(args.validation_file, args.data_dir, image_column=args.image_column,
                              caption_column=args.caption_column, text_column=args.text_column,
                              label_column=args.label_column)
        full = load_table(args.data_file, args.data_dir, image_column=args.image_column,
                          caption_column=args.caption_column, text_column=args.text_column,
                          label_column=args.label_column)
    return full if split == "test" and args.validation_file else _held_out(full, "train" if split == "train" else "validation", args)


def undecoded(dataset):
    """Leave image decoding to the collator, so one unreadable image is skipped there instead of crashing a read."""
    import datasets

    if isinstance(dataset.features.get("image"), datasets.Image):
        return dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


__all__ = [
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
