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
the uninterrupted run would have read."""

from __future__ import annotations

from itertools import islice

import torch

from modeling_xattn.training.data.schema import (
    BATCH_TARGETS,
    SPLIT_FOLDERS,
    class_names_of,
    label_id,
    row_captions,
    to_schema,
)
from modeling_xattn.training.data.shards import from_shard, shard_features, shard_files
from modeling_xattn.training.data.sources import held_out_by_id, map_columns
from modeling_xattn.training.distributed import any_process


def schema_stream(stream, args):
    """A stream of a source's rows -> rows of the schema, image undecoded (the collator decodes it, so one bad image
    is skipped there). Shards (ours, or any WebDataset with `.jpg` + `.json` members) are recognised by their
    columns; other Hub datasets use the column options (`--image_column`, `--caption_column`, ...)."""
    import datasets

    columns = set(stream.column_names or [])
    if {"jpg", "json"} <= columns:
        return stream.map(from_shard, remove_columns=sorted(columns))
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
    their image id), and `training_stream(targets, ...)` (a batch's targets)."""

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
        self.probe = to_schema(probe_rows, self.class_names)
        self.validation = to_schema(validation_rows, self.class_names)

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

    def training_stream(self, targets: str, batch_size: int, collate, rank: int = 0, world_size: int = 1,
                        seed: int = 0) -> "TrainingStream":
        names = self.class_names

        def open_stream():
            stream = self._train_rows().map(lambda row: {"label": label_id(row["label"], names)})
            if "caption" in BATCH_TARGETS[targets]:
                stream = stream.map(_caption_pairs, batched=True, batch_size=1)
            return stream

        return TrainingStream(open_stream, batch_size, collate, shuffle_buffer_size=self.args.shuffle_buffer_size,
                              seed=seed, rank=rank, world_size=world_size)


def _caption_pairs(rows: dict) -> dict:
    """One example per image-caption pair (as `CaptionPairs` makes for a Dataset); a row without captions is one
    example. Runs as a batched map, which `datasets` resumes inside a batch."""
    out = {key: [] for key in (*rows, "caption_index")}
    for position in range(len(rows["image"])):
        count = max(len(row_captions({"captions": rows["captions"][position]})), 1)
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
