"""Data sources, as one table (`SOURCES`, as LAVIS's dataset builders are): each source is a loader of its splits into
the common schema (`schema.py`) and one entry; `load_split` is the split and hold-out policy every command shares.

The sources: the embedded dataset; a local imagefolder with `metadata.jsonl` (and Flickr8k's official files turned
into one); CSV/JSONL tables; any Hub dataset with a column mapping; COCO caption files; the Karpathy split files of
COCO and Flickr30k (`dataset_coco.json`, `dataset_flickr30k.json`); the Hub's Karpathy metadata of COCO joined with a
local image folder; the Hub's parquet copy of Flickr30k with its Karpathy `split` column; VQAv2 from its official
files and from the Hub's parquet copy; MVSA; WebDataset shards. Adding one: a loader, one `Source` entry, one
fixture test of its published schema."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from modeling_xattn.configuration_xattn import SENTIMENT_LABELS
from modeling_xattn.training.data.schema import (
    NO_TARGET,
    SPLIT_FOLDERS,
    BadRowCounter,
    as_label,
    class_names_of,
    clean_text,
    load_image,
    row_captions,
    stable_id,
    to_schema,
    undecoded,
)
from modeling_xattn.training.data.shards import load_shards
from modeling_xattn.training.data.relations import Curriculum, RelationSpec, relations_dataset
from modeling_xattn.training.data.synthetic import synthetic_dataset
from modeling_xattn.training.data.vqa import official_splits, official_vqa_rows
from modeling_xattn.training.data.options import data_options

logger = logging.getLogger(__name__)

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
        splits = datasets.DatasetDict({name: to_schema(part, names).cast_column("image", datasets.Image())
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


def map_columns(dataset, image_column="image", caption_column=None, text_column=None, label_column=None,
                answers_column=None, id_column=None, question_column=None):
    """Rename/convert a dataset's columns to the schema (as transformers' example scripts take `--image_column`...);
    a `datasets.Dataset` or an `IterableDataset`. A VQA copy's `question_id` and `answer_type` columns are kept as
    they are named (the official results file and the per-type accuracy read them)."""
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
            "question_id": str(row["question_id"]) if "question_id" in names else "",
            "answer_type": str(row.get("answer_type") or "") if "answer_type" in names else "",
        }

    keep = [c for c in dataset.column_names if c == image_column]
    progress = {"desc": "mapping columns"} if isinstance(dataset, datasets.Dataset) else {}  # a stream maps lazily
    mapped = dataset.map(convert, with_indices=True, remove_columns=[c for c in dataset.column_names if c not in keep],
                         **progress)
    # an output named as an input column keeps the input's type (an int64 image_id): ids are strings in the schema
    features = getattr(mapped, "features", None) or {}
    for name in ("image_id", "question_id", "answer_type"):
        if name in features and features[name] != datasets.Value("string"):
            mapped = mapped.cast_column(name, datasets.Value("string"))
    return mapped


def load_hub_dataset(name: str, split: str = "train", config_name: str | None = None, revision: str | None = None,
                     split_column: str | None = None, split_value: str | None = None, **column_mapping):
    """Any Hub dataset (or a local folder of its data files) by name with a column mapping; with `split_column`,
    only the rows whose `split_column` is `split_value` (a copy that keeps every split in one)."""
    import datasets

    data = datasets.load_dataset(name, config_name, split=split, revision=revision)
    if split_column:
        if split_column not in data.column_names:
            raise ValueError(f"{name}: no {split_column!r} column to take the {split_value!r} rows by; it has "
                             f"{data.column_names}")
        values = data[split_column]
        data = data.select([index for index, value in enumerate(values) if value == split_value])
    return map_columns(data, **column_mapping)


def load_karpathy_hub(name: str, split: str, image_root: str, revision: str | None = None):
    """The Hub's metadata copy of COCO's Karpathy splits (yerevann/coco-karpathy: splits train, restval, validation,
    test; one row per photo with `filepath` ("val2014"), `filename`, `sentences` (the raw captions), `cocoid`,
    `split`, `url`; no image column) joined with the COCO images in `image_root` (`image_root/filepath/filename`, as
    the official zips unpack them). Training reads its `train` and `restval` splits (113,287 photos), as
    `dataset_coco.json` read with `--dataset karpathy` does."""
    import datasets

    if not image_root:
        raise ValueError("--dataset karpathy_hub joins the Hub's metadata with local images: give --image_root (the "
                         "folder holding train2014/ and val2014/)")
    data = datasets.load_dataset(name, split=split, revision=revision)
    if split == "train":
        data = datasets.concatenate_datasets([data, _karpathy_restval(name, revision)])
    rows = []
    for row in data:
        sentences = row["sentences"]
        captions = [s["raw"] if isinstance(s, dict) else s for s in (sentences or [])]
        rows.append({"image": str(Path(image_root, row.get("filepath") or "", row["filename"])),
                     "captions": [clean_text(c) for c in captions], "image_id": row.get("cocoid", row.get("imgid"))})
    return to_schema(rows)


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
    return to_schema(rows)


def load_coco_captions(annotation_file: str, image_dir: str):
    """COCO caption annotations (`captions_train2017.json` etc.) + their image folder: one row per image."""
    with open(annotation_file, encoding="utf-8") as handle:
        data = json.load(handle)
    captions: dict[int, list[str]] = {}
    for annotation in data["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(clean_text(annotation["caption"]))
    rows = [{"image": str(Path(image_dir) / image["file_name"]), "captions": captions.get(image["id"], []),
             "image_id": image["id"]} for image in data["images"]]
    return to_schema(rows)


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
    return to_schema(rows)


MATCHING_CLASSES = ("another photo's caption", "its own caption")


def caption_matching(dataset, seed: int = 0, every_caption: bool = True):
    """A captioned split as labelled two-way classification rows, as visual entailment builds them from captions: does
    this caption describe this photo? Each (photo, caption) gives two rows: the photo with that caption (label "its own
    caption") and the photo with a caption of another photo, drawn from `seed` (label "another photo's caption"). The
    classes are balanced (chance is 50%) and neither the photo alone nor the caption alone tells the label; only the two
    together do. `every_caption=False` (evaluation splits) takes one caption per photo, drawn from `seed`, so that a
    photo counts once. Photos without captions are left out. Training rows (`every_caption=True`) keep their photo's own
    captions, so retrieval or captioning can train beside the matching (`--tasks classification,retrieval`); evaluation
    rows carry none, so that every photo is scored once, on the matching alone."""
    import datasets

    rng = random.Random(seed)
    captions = [row_captions({"captions": c}) for c in dataset["captions"]]
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
    data = to_schema(rows, list(MATCHING_CLASSES))
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
    return datasets.DatasetDict({name: to_schema([rows[i] for i in idx]) for name, idx in splits.items()})


# Where a copy of the Karpathy metadata keeps its restval split: the Hub's parquet conversion, then the usual layouts.
RESTVAL_FILES = ("default/restval/*.parquet", "data/restval-*.parquet", "**/restval/*.parquet", "**/*restval*.parquet")


def _karpathy_restval(name: str, revision: str | None):
    """Karpathy's restval photos (30,504 of COCO's val2014, trained on with train), read by file pattern: `datasets`
    infers only train / validation / test from a folder layout. A copy without them is said."""
    import datasets

    for pattern in RESTVAL_FILES:
        try:
            return datasets.load_dataset(name, data_files={"restval": pattern}, split="restval", revision=revision)
        except (FileNotFoundError, ValueError):
            continue
    logger.warning(f"{name} has no restval split: training on Karpathy's train photos alone (82,783 of 113,287)")
    return datasets.load_dataset(name, split="train", revision=revision).select([])


def load_vqa(root: str, split: str, counter: BadRowCounter | None = None):
    """VQAv2 from its official files under `root` (questions, annotations, `train2014/` and `val2014/` images, as the
    download unpacks them; the test-dev or test questions for `split="test"`; `data/vqa.py`): one row per question
    with its ten human answers. Every question stays a row, its image read later: a missing image is skipped and
    counted where the batch is made, and evaluation still answers its question."""
    rows = official_vqa_rows(root, split)
    if not rows:
        raise ValueError(f"--data_dir {root}: the {split} questions file holds no question")
    return to_schema(rows)


def load_split(args, split: str, counter: BadRowCounter | None = None, hold_out_validation: bool = False):
    """The `split` ("train", "validation" or "test") of the dataset that `args` (typed data options: `DataOptions`,
    `TrainingOptions`, or a dict of them) names, in the common schema.

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
    splits = source_splits(args, counter if counter is not None else BadRowCounter())
    source = _source_name(args)
    if getattr(args, "validation_from_train", False) and "validation" in splits:
        # the source's validation split stays unseen, for reporting; checkpoints are chosen on rows held out of train
        splits = {name: load for name, load in splits.items() if name != "validation"}
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


def held_out_by_id(image_id, fraction: float, seed: int = 0) -> bool:
    """Whether the row of `image_id` is one of the `fraction` held out for validation: a hash of the id and the seed,
    so every process, epoch and reading order agrees."""
    return stable_id(f"validation:{seed}:{image_id}") % 10_000 < fraction * 10_000


def _held_out(full, split, args):
    if args.dataset in STREAMABLE:
        keep = [held_out_by_id(i, args.validation_fraction, args.data_seed) == (split == "validation")
                for i in full["image_id"]]
        return full.select([index for index, wanted in enumerate(keep) if wanted])
    parts = full.train_test_split(test_size=args.validation_fraction, seed=args.data_seed)
    return parts["train"] if split == "train" else parts["test"]


@dataclass(frozen=True)
class Source:
    """One data source: `splits(args, counter)` returns the splits the source itself has, each a function that loads
    it (nothing is read before it is needed); `needs` names the options it takes, `hub` the Hub dataset and revision
    it reads by default (`--dataset_name` / `--dataset_revision` override them); `streamable` sources are read by
    `--streaming`, and their held-out validation rows are chosen by a hash of the image id (`held_out_by_id`)."""

    name: str
    splits: Callable
    needs: str
    hub: tuple[str, str | None] | None = None
    streamable: bool = False

    def describe(self, args) -> str:
        if self.hub or self.name == "hub":
            return f"Hub dataset {hub_name(args)}"
        if self.name == "synthetic":
            return "the embedded dataset"
        if self.name == "relations":
            return "the relational diagnostic"
        return f"{self.name} source {args.data_dir or args.data_file}"


def hub_name(args) -> str:
    """The Hub dataset a source reads: `--dataset_name`, else the source's own."""
    default = SOURCES[args.dataset].hub
    return args.dataset_name or (default[0] if default else "")


def hub_revision(args) -> str | None:
    """`--dataset_revision`, else the source's own (none for a local folder of the data files)."""
    default = SOURCES[args.dataset].hub
    if args.dataset_revision or Path(hub_name(args)).is_dir():
        return args.dataset_revision
    return default[1] if default else None


def _columns(args) -> dict:
    return dict(caption_column=args.caption_column, text_column=args.text_column, label_column=args.label_column)


def _eager(parts) -> dict:
    return {name: (lambda part=part: part) for name, part in parts.items()}


def _synthetic_splits(args, counter):
    knobs = dict(objects=args.synthetic_objects, num_colours=args.synthetic_colours,
                 num_shapes=args.synthetic_shapes, min_objects=args.synthetic_min_objects)
    return {"train": lambda: synthetic_dataset(args.synthetic_samples, seed=args.data_seed, **knobs),
            "test": lambda: synthetic_dataset(args.synthetic_test_samples, seed=args.data_seed + 1, **knobs)}


def relation_spec(args) -> RelationSpec:
    """The relational diagnostic's knobs from the options, checked (an impossible value names its option)."""
    spec = RelationSpec(objects=args.relations_objects, min_objects=args.relations_min_objects,
                        num_colours=args.relations_colours, grid=args.relations_grid,
                        questions=args.relations_questions, seed=3 * args.data_seed)
    try:
        return spec.check()
    except ValueError as error:
        name, _, why = str(error).partition(": ")
        option = {"num_colours": "relations_colours"}.get(name, f"relations_{name}")
        raise ValueError(f"--{option}: {why}") from None  # every knob the options set is named by its option


def relation_curriculum(args) -> Curriculum | None:
    """The training scenes' curriculum (`--relations_curriculum_epochs`), or None."""
    if args.relations_curriculum_epochs < 0:
        raise ValueError(f"--relations_curriculum_epochs must be >= 0, got {args.relations_curriculum_epochs}")
    return Curriculum(epochs_per_object=args.relations_curriculum_epochs) if args.relations_curriculum_epochs else None


def _relations_splits(args, counter):
    # train, validation and test scenes come from three seeds, so no split holds another's scene; training draws
    # fresh scenes every epoch (`FreshScenes`), the stored train rows are its first epoch (the curriculum's first stage)
    # the generator's seeds 3s, 3s + 1 and 3s + 2 for data seed s, so no two data seeds share a split's scenes
    spec, curriculum = relation_spec(args), relation_curriculum(args)
    first = curriculum.spec(spec, 0) if curriculum else spec
    seeded = lambda part: dataclasses.replace(spec, seed=3 * args.data_seed + part)  # noqa: E731
    return {"train": lambda: relations_dataset(args.synthetic_samples, first),
            "validation": lambda: relations_dataset(args.relations_validation_samples, seeded(2)),
            "test": lambda: relations_dataset(args.synthetic_test_samples, seeded(1))}


def _hub_splits(args, counter, **fixed):
    """A Hub dataset's own splits (SPLIT_FOLDERS names them), each loaded with the column mapping; with
    `--split_column`, the splits a one-split copy names in that column."""
    import datasets

    mapping = dict(image_column=args.image_column, answers_column=args.answers_column, **_columns(args))
    mapping.update(fixed)
    if args.split_column:
        return _split_column_splits(args, mapping)
    name, revision = hub_name(args), hub_revision(args)
    names = datasets.get_dataset_split_names(name, args.dataset_config_name, revision=revision)
    canonical = {SPLIT_FOLDERS.get(split, split): split for split in names}
    return {split: (lambda hub=hub: load_hub_dataset(name, hub, args.dataset_config_name, revision=revision,
                                                     **mapping))
            for split, hub in canonical.items()}


def _split_column_splits(args, mapping):
    """A copy that keeps every split in one Hub split and names each row's in `--split_column` (train/val/test)."""
    import datasets

    name, revision = hub_name(args), hub_revision(args)
    (only, *rest) = datasets.get_dataset_split_names(name, args.dataset_config_name, revision=revision)
    if rest:
        raise ValueError(f"--split_column {args.split_column}: {name} has several splits ({[only, *rest]}); the "
                         "column is for a copy that keeps every split in one")
    values = {"train": "train", "validation": "val", "test": "test"}
    return {split: (lambda value=value: load_hub_dataset(name, only, args.dataset_config_name, revision=revision,
                                                         split_column=args.split_column, split_value=value,
                                                         **mapping))
            for split, value in values.items()}


def _flickr30k_hub_splits(args, counter):
    # nlphuji/flickr30k's parquet copy: image, caption (the five), sentids, split (train/val/test), img_id, filename
    args = _with_defaults(args, split_column="split")
    return _split_column_splits(args, dict(image_column="image", caption_column="caption", id_column="img_id"))


def _vqa_hub_splits(args, counter):
    # lmms-lab/VQAv2: question_type, multiple_choice_answer, answers [{answer, answer_confidence, answer_id}],
    # image_id, answer_type, question_id, question, image; splits validation, testdev, test (no answers in the last two)
    return _hub_splits(args, counter, image_column="image", text_column="question", question_column="question",
                       answers_column="answers", id_column="image_id")


def _with_defaults(args, **values):
    """`args` with `values` where the options were left empty."""
    import copy

    changed = copy.copy(args)
    for name, value in values.items():
        if not getattr(changed, name, None):
            setattr(changed, name, value)
    return changed


def _files(args, load) -> dict:
    files = {"train": args.data_file, "validation": args.validation_file}
    return {name: (lambda path=path: load(path)) for name, path in files.items() if path}


SOURCES = {source.name: source for source in (
    Source("synthetic", _synthetic_splits, "nothing: drawn from --data_seed"),
    Source("relations", _relations_splits, "nothing: drawn from --data_seed (the relational diagnostic)"),
    Source("imagefolder", lambda args, counter: _eager(load_imagefolder(args.data_dir, split=None, counter=counter,
                                                                        **_columns(args))),
           "--data_dir (images + metadata.jsonl, at the top or in train/, validation/, test/)"),
    Source("table", lambda args, counter: _files(args, lambda path: load_table(
        path, args.data_dir, image_column=args.image_column, **_columns(args))),
           "--data_file (CSV/JSONL, image paths relative to --data_dir) [--validation_file]"),
    Source("hub", _hub_splits, "--dataset_name [--dataset_revision --split_column] and the column options",
           streamable=True),
    Source("webdataset", lambda args, counter: _eager(load_shards(args.data_dir)),
           "--data_dir (train-*.tar, validation-*.tar)", streamable=True),
    Source("coco", lambda args, counter: _files(args, lambda path: load_coco_captions(path, args.data_dir)),
           "--data_file captions_train2017.json [--validation_file captions_val2017.json] --data_dir train2017/"),
    Source("karpathy", lambda args, counter: {
        name: (lambda name=name: load_karpathy(args.data_file, args.data_dir, name))
        for name in ("train", "validation", "test")},
           "--data_file dataset_coco.json or dataset_flickr30k.json --data_dir (the images)"),
    Source("karpathy_hub", lambda args, counter: {
        name: (lambda name=name: load_karpathy_hub(hub_name(args), name, args.image_root, hub_revision(args)))
        for name in ("train", "validation", "test")},
           "--image_root (COCO's train2014/ and val2014/)",
           hub=("yerevann/coco-karpathy", "refs/convert/parquet")),
    Source("flickr30k_hub", _flickr30k_hub_splits, "nothing else: the images are in the parquet files",
           hub=("nlphuji/flickr30k", "refs/convert/parquet")),
    Source("vqa", lambda args, counter: {
        name: (lambda name=name: load_vqa(args.data_dir, name, counter)) for name in official_splits(args.data_dir)},
           "--data_dir (the official questions, annotations, train2014/ and val2014/)"),
    Source("vqa_hub", _vqa_hub_splits, "nothing else: the images are in the parquet files",
           hub=("lmms-lab/VQAv2", None)),
    Source("mvsa", lambda args, counter: _eager(load_mvsa(args.data_dir, seed=args.data_seed, counter=counter)),
           "--data_dir (MVSA-Single or MVSA-Multiple: data/ and labelResultAll.txt)"),
)}
STREAMABLE = tuple(name for name, source in SOURCES.items() if source.streamable)


def dataset_identity(args) -> dict:
    """What the data is, for results files and the model card: `dataset_id` (its Hub id, else the source's name),
    `dataset_hub_id` (the Hub id of the data: the copy it was read from, or for the official files of a benchmark
    the Hub hosts, that benchmark's; None for other local data), `dataset_title` (the benchmark's name)."""
    source = SOURCES[args.dataset]
    hub = hub_name(args) if (source.hub or args.dataset == "hub") else None
    hub = hub if hub and not Path(hub).is_dir() else None
    file = Path(args.data_file or "").name
    if hub is None and args.dataset in ("karpathy", "vqa"):
        hub = {"dataset_coco.json": "yerevann/coco-karpathy", "dataset_flickr30k.json": "nlphuji/flickr30k"}.get(
            file) if args.dataset == "karpathy" else "HuggingFaceM4/VQAv2"
    titles = {"karpathy": "Flickr30k Karpathy" if "flickr30k" in file else "COCO Karpathy" if "coco" in file else None,
              "karpathy_hub": "COCO Karpathy", "flickr30k_hub": "Flickr30k Karpathy", "vqa": "VQAv2",
              "vqa_hub": "VQAv2", "mvsa": "MVSA", "synthetic": "the embedded dataset",
              "relations": "the relational diagnostic", "coco": "COCO captions"}
    return {"dataset_id": hub or args.dataset, "dataset_hub_id": hub,
            "dataset_title": titles.get(args.dataset) or hub or source.describe(args)}


def _source_name(args) -> str:
    return SOURCES[args.dataset].describe(args)


def source_splits(args, counter) -> dict:
    """The splits the source itself has, each as a function that loads it (nothing is read before it is needed)."""
    if args.dataset not in SOURCES:
        raise ValueError(f"--dataset {args.dataset!r} is not a known source; choose one of {sorted(SOURCES)}")
    return SOURCES[args.dataset].splits(args, counter)
