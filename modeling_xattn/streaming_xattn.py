"""Streaming data: WebDataset tar shards (a local folder, or a Hub dataset repo of them) and Hub datasets, read as
`datasets` IterableDatasets, so that a training set never has to fit on the disk or in memory.

Shards (`write_shards`, `scripts/make_shards.py`) are `{split}-{n:06d}.tar` files; each sample is two members that
share a key: `<key>.jpg` (the image as JPEG bytes: a JPEG source file is copied as it is, anything else is encoded
once) and `<key>.json` with the schema's text columns:
    {"captions": [...], "text": "...", "label": "<class name or id, '' for none>", "answers": [...],
     "question": "...", "image_id": "..."}
`datasets.load_dataset("webdataset", data_files=..., streaming=True)` reads them (no `webdataset` package needed).

`TrainingStream` is the training loop's view of a stream: one example per image-caption pair, a seeded shuffle
buffer (reshuffled each epoch with `set_epoch`), `datasets.distributed.split_dataset_by_node` so that every process
reads different rows, and a position (the epoch and `datasets`' `state_dict()` of each process's stream) saved with
every checkpoint, from which a killed run resumes.

What a resume restores, exactly as `datasets` can: the position in the source (shard and row). The rows that were
waiting in the shuffle buffer at the checkpoint are not stored by `datasets`, so they are not seen again in that
epoch (at most `--shuffle_buffer_size` rows); with `--shuffle_buffer_size 0` the resumed run reads exactly the rows
the uninterrupted run would have read.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from itertools import islice
from pathlib import Path

import torch

from .data_xattn import (
    NO_TARGET,
    SPLIT_FOLDERS,
    TASK_TARGETS,
    BadRowCounter,
    _label_ids,
    _row_captions,
    _source_splits,
    _to_schema,
    as_label,
    class_names_of,
    clean_text,
    held_out_by_id,
    load_image,
    map_columns,
    undecoded,
)
from .training_xattn import any_process

SHARD_PATTERN = "{split}-{index:06d}.tar"
JPEG_QUALITY = 95


def shard_features():
    """The `datasets` features of a shard sample (given to the webdataset builder, which would otherwise infer them
    from the first five samples and fail on a later row whose caption list is not empty where theirs were)."""
    import datasets

    text = datasets.Value("string")
    return datasets.Features({
        "__key__": text, "__url__": text, "jpg": datasets.Image(decode=False),
        "json": {"captions": datasets.List(text), "text": text, "label": text, "answers": datasets.List(text),
                 "question": text, "image_id": text},
    })


# ======================================================================================================= writing


def _jpeg_bytes(value) -> bytes:
    """The image of a row as JPEG bytes: a JPEG file's own bytes, anything else decoded and encoded once."""
    raw = None
    if isinstance(value, dict):  # datasets' undecoded image
        raw = value.get("bytes")
        if raw is None and value.get("path"):
            raw = Path(value["path"]).read_bytes()
    elif isinstance(value, (str, os.PathLike)):
        raw = Path(value).read_bytes()
    if raw is not None and raw[:3] == b"\xff\xd8\xff":
        load_image({"bytes": raw})  # a truncated or damaged JPEG is refused here, not in the middle of training
        return raw
    image = load_image({"bytes": raw} if raw is not None else value)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def shard_sample(row, names: list[str] | None = None) -> dict:
    """The JSON member of a row's sample: the schema's text columns, the label as its class name (ids mean
    nothing without the names) or "" when the row has none."""
    label = as_label(row.get("label"))
    return {
        "captions": _row_captions(row),
        "text": clean_text(row.get("text")),
        "label": "" if label == NO_TARGET else (names[label] if names and label < len(names) else str(label)),
        "answers": [clean_text(a) for a in row.get("answers") or []],
        "question": clean_text(row.get("question")),
        "image_id": str(row.get("image_id", "")),
    }


def write_shards(rows, output_dir: str, split: str, rows_per_shard: int = 1000, names: list[str] | None = None,
                 counter: BadRowCounter | None = None) -> list[str]:
    """Write `rows` (schema rows: a `datasets.Dataset` or any iterable of dicts) as WebDataset shards
    `{split}-000000.tar`, ... of at most `rows_per_shard` samples in `output_dir`; returns their paths.

    A row whose image cannot be read is skipped and counted in `counter`. Each shard is written to a temporary name
    and renamed when complete, so a killed run never leaves a truncated shard under a shard's name."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    counter = counter if counter is not None else BadRowCounter()
    os.makedirs(output_dir, exist_ok=True)
    paths, tar, written, temporary = [], None, 0, None

    def close():
        tar.close()
        os.replace(temporary, paths[-1])

    for index, row in enumerate(rows):
        where = str(row.get("image_id", index))
        try:
            image = _jpeg_bytes(row["image"])
        except Exception as error:  # unreadable, truncated, missing or too large: skip, count
            counter.add(f"bad image ({type(error).__name__})", where)
            continue
        if written % rows_per_shard == 0:
            if tar is not None:
                close()
            paths.append(os.path.join(output_dir, SHARD_PATTERN.format(split=split, index=len(paths))))
            temporary = paths[-1] + ".tmp"
            tar = tarfile.open(temporary, "w")
        key = f"{index:09d}"
        for member, data in ((f"{key}.jpg", image),
                             (f"{key}.json", json.dumps(shard_sample(row, names), ensure_ascii=False).encode())):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        written += 1
    if tar is not None:
        close()
    return paths


# ======================================================================================================= reading


def shard_files(data_dir: str) -> dict[str, list[str]]:
    """The shards of a folder by split: `train-*.tar`, `validation-*.tar` (or any split-folder name `datasets`
    knows: `val-*.tar`, `test-*.tar`, ...)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--data_dir {data_dir}: no such folder")
    splits: dict[str, list[str]] = {}
    for path in sorted(root.glob("*.tar")):
        prefix = path.name.split("-", 1)[0].lower()
        if prefix in SPLIT_FOLDERS:
            splits.setdefault(SPLIT_FOLDERS[prefix], []).append(str(path))
    if not splits:
        raise FileNotFoundError(f"--data_dir {data_dir}: no shards named train-*.tar / validation-*.tar / test-*.tar "
                                "(scripts/make_shards.py writes them)")
    return splits


def load_shards(data_dir: str):
    """A folder of shards read whole (not streamed), as a `DatasetDict` of the schema: what evaluation and
    `--dataset webdataset` without `--streaming` use. Class names are taken from every split's labels."""
    import datasets

    loaded = datasets.DatasetDict({
        split: datasets.load_dataset("webdataset", data_files={split: paths}, split=split, features=shard_features())
        for split, paths in shard_files(data_dir).items()})
    loaded = loaded.map(_from_shard, remove_columns=list(shard_features()), desc="reading shards")
    names = class_names_of([label for part in loaded.values() for label in part["label"]])
    loaded = loaded.map(lambda row: {"label": _label_ids(row["label"], names)}, desc="labels")
    return loaded.cast_column("label", datasets.ClassLabel(names=names)) if names else loaded


def _from_shard(row) -> dict:
    sample = row["json"] or {}
    return {"image": row["jpg"], "text": sample.get("text") or "", "captions": sample.get("captions") or [],
            "label": sample.get("label") or "", "answers": sample.get("answers") or [],
            "question": sample.get("question") or "", "image_id": sample.get("image_id") or row["__key__"]}


def schema_stream(stream, args):
    """A stream of a source's rows -> rows of the schema, image undecoded (the collator decodes it, so one bad image
    is skipped there). Shards (ours, or any WebDataset with `.jpg` + `.json` members) are recognised by their
    columns; other Hub datasets use the column options (`--image_column`, `--caption_column`, ...)."""
    import datasets

    columns = set(stream.column_names or [])
    if {"jpg", "json"} <= columns:
        return stream.map(_from_shard, remove_columns=sorted(columns))
    if args.image_column in columns and isinstance(stream.features[args.image_column], datasets.Image):
        stream = stream.cast_column(args.image_column, datasets.Image(decode=False))
    return map_columns(stream, image_column=args.image_column, caption_column=args.caption_column,
                       text_column=args.text_column, label_column=args.label_column,
                       answers_column=args.answers_column)


def stream_splits(args) -> dict:
    """The splits of a streamed source (`--dataset webdataset` with `--data_dir`, or `--dataset hub`), each as a
    function that opens it as an IterableDataset of raw rows (nothing is read before it is iterated)."""
    import datasets

    if args.dataset == "webdataset":
        if not args.data_dir:
            raise ValueError("--dataset webdataset needs --data_dir, a folder of train-*.tar / validation-*.tar shards")
        files = shard_files(args.data_dir)
        return {split: (lambda split=split: datasets.load_dataset(
                    "webdataset", data_files={split: files[split]}, split=split, streaming=True,
                    features=shard_features()))
                for split in files}
    if args.dataset == "hub":
        if not args.dataset_name:
            raise ValueError("--dataset hub needs --dataset_name")
        names = datasets.get_dataset_split_names(args.dataset_name, args.dataset_config_name,
                                                 revision=args.dataset_revision)
        return {SPLIT_FOLDERS.get(name, name): (lambda name=name: datasets.load_dataset(
                    args.dataset_name, args.dataset_config_name, split=name, revision=args.dataset_revision,
                    streaming=True))
                for name in names}
    raise ValueError(f"--streaming reads WebDataset shards (--dataset webdataset --data_dir shards/) or a Hub dataset "
                     f"(--dataset hub); --dataset {args.dataset} is read whole. scripts/make_shards.py turns any "
                     "source into shards")


class StreamingData:
    """What training needs from a streamed source: `probe` (the first rows of the train split, as a small in-memory
    Dataset: the tokenizer, the tasks, the class names and the VQA answers are taken from it), `validation` (up to
    `--max_eval_samples` rows read once into memory: the validation split, or rows held out of train by a hash of
    their image id), and `training_stream(task, ...)`."""

    PROBE_ROWS = 2000

    def __init__(self, args):
        self.args = args
        self.splits = stream_splits(args)
        if "train" not in self.splits:
            raise ValueError(f"the streamed source has no train split; it has {sorted(self.splits)}")
        self.hold_out = "validation" not in self.splits
        # the probe needs only the text columns: its images are not kept in memory
        probe_rows = [{**row, "image": None} for row in islice(self._train_rows(), self.PROBE_ROWS)]
        validation = (self._train_rows(held_out=True) if self.hold_out
                      else schema_stream(self.splits["validation"](), args))
        validation_rows = list(islice(validation, args.max_eval_samples))
        if not probe_rows:
            raise ValueError("the streamed train split has no row")
        raw_labels = [row["label"] for row in probe_rows + validation_rows]
        self.class_names = self._stream_class_names() or class_names_of(raw_labels)
        self.probe = _to_schema(probe_rows, self.class_names)
        self.validation = _to_schema(validation_rows, self.class_names)

    def _stream_class_names(self):
        import datasets

        feature = (self.splits["train"]().features or {}).get(self.args.label_column)
        return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None

    def _train_rows(self, held_out: bool = False):
        """The train split's rows in the schema: without a validation split, those that training keeps, or with
        `held_out` those held out for validation (by `held_out_by_id`, as `load_split` holds them out)."""
        stream = schema_stream(self.splits["train"](), self.args)
        if self.hold_out:
            fraction, seed = self.args.validation_fraction, self.args.data_seed
            stream = stream.filter(lambda row: held_out_by_id(row["image_id"], fraction, seed) == held_out)
        return stream

    def training_stream(self, task: str, batch_size: int, collate, rank: int = 0, world_size: int = 1,
                        seed: int = 0) -> "TrainingStream":
        names = self.class_names

        def open_stream():
            stream = self._train_rows().map(lambda row: {"label": _label_ids(row["label"], names)})
            if "caption" in TASK_TARGETS[task]:
                stream = stream.map(_caption_pairs, batched=True, batch_size=1)
            return stream

        return TrainingStream(open_stream, batch_size, collate, shuffle_buffer_size=self.args.shuffle_buffer_size,
                              seed=seed, rank=rank, world_size=world_size)


def _caption_pairs(rows: dict) -> dict:
    """One example per image-caption pair (as `CaptionPairs` makes for a Dataset); a row without captions is one
    example. Runs as a batched map, which `datasets` resumes inside a batch."""
    out = {key: [] for key in (*rows, "caption_index")}
    for position in range(len(rows["image"])):
        count = max(len(_row_captions({"captions": rows["captions"][position]})), 1)
        for caption in range(count):
            for key in rows:
                out[key].append(rows[key][position])
            out["caption_index"].append(caption)
    return out


class TrainingStream:
    """Batches of a training stream, epoch after epoch, with a position that checkpoints save and restore.

    `open_stream()` returns a fresh IterableDataset of schema rows for each epoch; it is shuffled with a seeded
    buffer (`set_epoch` reseeds it every epoch) and split across processes. The DataLoader reads on the training
    process (no workers): its position is then exactly the rows that made the batches so far. Register the object
    with `accelerator.register_for_checkpointing` and call `capture(accelerator)` on every process just before each
    `save_state`."""

    def __init__(self, open_stream, batch_size: int, collate, shuffle_buffer_size: int = 1000, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.open_stream = open_stream
        self.batch_size = batch_size
        self.collate = collate
        self.shuffle_buffer_size = shuffle_buffer_size
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.stream = None
        self._resume = None  # this process's position to start the next epoch from (after load_state_dict)
        self._positions = None  # every process's position, gathered by capture()
        self.read_from_start = True  # whether the current epoch was read from its first row (not resumed)

    def rows(self):
        """This process's rows of the current epoch, from its position."""
        from datasets.distributed import split_dataset_by_node

        stream = self.open_stream()
        if self.shuffle_buffer_size:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer_size)
        stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
        stream.set_epoch(self.epoch)
        self.read_from_start = self._resume is None
        if self._resume is not None:
            stream.load_state_dict(self._resume)
            self._resume = None
        self.stream = stream
        return stream

    def batches(self, accelerator=None):
        """This epoch's batches. With several processes, all stop as soon as one has no full batch left (the
        shorter process decides, as `drop_last` does), so no process waits for gradients that never come; the
        next call starts the next epoch."""
        loader = torch.utils.data.DataLoader(self.rows(), batch_size=self.batch_size, collate_fn=self.collate,
                                             num_workers=0, drop_last=True)
        iterator = iter(loader)
        while True:
            batch = next(iterator, None)
            if any_process(accelerator, batch is None):
                break
            yield batch
        self.epoch += 1
        self.stream = None

    def position(self) -> dict:
        """This process's position: the epoch, and `datasets`' state of its stream (None at an epoch's start)."""
        return {"epoch": self.epoch, "stream": self.stream.state_dict() if self.stream is not None else None}

    def capture(self, accelerator=None) -> None:
        """Gather every process's position (a collective: every process calls it) for the next `state_dict()`."""
        own = self.position()
        if accelerator is None or accelerator.num_processes == 1:
            self._positions = [own]
            return
        from accelerate.utils import gather_object

        self._positions = gather_object([own])

    def state_dict(self) -> dict:
        positions = self._positions or [self.position()]
        return {"num_processes": len(positions), "positions": positions}

    def load_state_dict(self, state: dict) -> None:
        if state["num_processes"] != self.world_size:
            raise ValueError(f"this checkpoint's stream positions are for {state['num_processes']} process(es); "
                             f"resume it with that many (now {self.world_size})")
        own = state["positions"][self.rank]
        self.epoch, self._resume = own["epoch"], own["stream"]


def make_shards(args, output_dir: str, rows_per_shard: int = 1000, splits: list[str] | None = None) -> dict:
    """Write every split of the source that `args` (parsed data options, see `data_options`) names, or only
    `splits`, as shards in `output_dir`, replacing the shards of those splits already there: what
    `scripts/make_shards.py` runs. Returns the shard paths by split, the rows written and the skipped-row
    summary."""
    import datasets

    counter = BadRowCounter()
    available = _source_splits(args, counter)
    unknown = sorted(set(splits or []) - set(available))
    if unknown:
        raise ValueError(f"the source has no split {', '.join(unknown)}; it has {sorted(available)}")
    written, rows = {}, {}
    for split in splits or sorted(available):
        data = undecoded(available[split]())
        if args.max_samples:
            data = data.select(range(min(args.max_samples, len(data))))
        feature = data.features.get("label")
        names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        for old in Path(output_dir).glob(f"{split}-*.tar"):  # a previous run's shards would be read as more data
            old.unlink()
        before = counter.total
        written[split] = write_shards(data, output_dir, split, rows_per_shard, names, counter)
        rows[split] = len(data) - (counter.total - before)
    return {"shards": written, "rows": rows, "summary": counter.summary()}


__all__ = [
    "load_shards",
    "StreamingData",
    "TrainingStream",
    "schema_stream",
    "shard_features",
    "shard_files",
    "shard_sample",
    "make_shards",
    "stream_splits",
    "write_shards",
]
