"""The data layer's options: what to read (the source, its columns and splits) and how (whole or as a stream), as
dataclasses that `HfArgumentParser` turns into the commands' `--<name>` options. The training command merges them with
its own groups (`modeling_xattn.training.options`); `load_split` and the streams read only these."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from modeling_xattn.training.data.relations import RelationSpec
from modeling_xattn.training.data.synthetic import SyntheticSpec


def option(default=None, help: str | None = None, **argparse_options):
    """A dataclass field that `HfArgumentParser` turns into `--<name>`: its default, its help, and any other
    argparse setting (aliases, nargs, const)."""
    metadata = dict(argparse_options)
    if help:
        metadata["help"] = help
    return field(default=default, metadata=metadata)


@dataclass
class DataArguments:
    """What to read: the source, its columns and splits (every command that reads data)."""

    _argument_group_name = "data"

    dataset: Literal["synthetic", "relations", "imagefolder", "table", "hub", "webdataset", "coco", "karpathy", "karpathy_hub",
                     "flickr30k_hub", "vqa", "vqa_hub", "mvsa"] = option(
        "synthetic", "the source (docs/data.md: what each reads and needs)")
    data_dir: str | None = option(
        None,
        "imagefolder / MVSA root / COCO or Karpathy image folder / folder of WebDataset shards (train-*.tar, "
        "validation-*.tar)")
    data_file: str | None = option(None, "CSV/JSONL table, COCO captions_*.json or Karpathy dataset_*.json")
    validation_file: str | None = option(None, "validation table or COCO annotation file (else a split is held out)")
    dataset_name: str | None = option(None, "Hub dataset id (with --dataset hub)")
    dataset_config_name: str | None = option(None)
    dataset_revision: str | None = option(None, "Hub dataset revision (commit) to pin")
    image_root: str | None = option(
        None, "the image folder a Hub metadata copy's file paths are relative to (--dataset karpathy_hub: COCO's "
        "folder holding train2014/ and val2014/)")
    split_column: str | None = option(
        None, "a column holding each row's split (train / val / test), for a Hub copy that keeps every split in one "
        "(--dataset flickr30k_hub reads nlphuji's 'split')")
    image_column: str = option("image")
    caption_column: str = option("captions")
    text_column: str = option("text")
    label_column: str = option("label")
    answers_column: str = option("answers")
    synthetic_samples: int = option(
        4000, "rows (images) of the embedded dataset (--dataset relations: scenes per epoch, drawn anew every epoch)")
    synthetic_test_samples: int = option(1000, "rows of its test split")
    synthetic_objects: int = option(SyntheticSpec.objects, "(most) shapes per image")
    synthetic_min_objects: int | None = option(SyntheticSpec.min_objects,
                                               "fewest shapes per image (the count is drawn per image)")
    synthetic_colours: int = option(SyntheticSpec.num_colours, "colours in use")
    synthetic_shapes: int = option(SyntheticSpec.num_shapes, "shape kinds in use")
    relations_objects: int = option(RelationSpec.objects, "--dataset relations: most shapes per scene")
    relations_min_objects: int = option(RelationSpec.min_objects, "--dataset relations: fewest shapes per scene")
    relations_colours: int = option(RelationSpec.num_colours, "--dataset relations: colours in use (one per shape)")
    relations_grid: int = option(RelationSpec.grid, "--dataset relations: cells per side of the scenes' grid")
    relations_questions: Literal["all", "relational", "non-relational"] = option(
        "all", "--dataset relations: the question kinds asked")
    relations_validation_samples: int = option(600, "--dataset relations: scenes of the validation split")
    relations_curriculum_epochs: int = option(
        2,
        "--dataset relations: training scenes start with at most 2 shapes and take one more every this many epochs, "
        "up to --relations_objects, each drawing 2 or more (0: every training scene as the test's)")
    data_seed: int = option(0, "seed of the embedded dataset and of held-out splits")
    validation_fraction: float = option(0.1)
    validation_from_train: bool = option(
        False,
        "validate on --validation_fraction of the train split, held out, even where the source has a validation split:"
        " checkpoints are then chosen without seeing the split you report (VQAv2's val2014, say)")
    caption_matching: bool = option(
        False,
        "turn a captioned source into a labelled two-way task (train with --tasks classification, or "
        "classification,retrieval): does this caption describe this photo or another photo? Each training caption "
        "gives one matching and one mismatched row (both keep the photo's own captions); evaluation splits take one "
        "caption per photo; chance is 50%% (not with --streaming)")
    max_samples: int | None = option(None, "use at most this many rows of the split")
    num_workers: int = option(0)
    photo_cache_gb: float = option(
        2.0,
        "keep each photo's processed pixel values after its first read, up to this many GiB per process, so later "
        "epochs and evaluations skip decoding and resizing it (0: off; off with --num_workers, whose workers read in "
        "parallel, and with --streaming)")


@dataclass
class StreamingArguments:
    """Reading the training rows as a stream."""

    _argument_group_name = "streaming (--dataset webdataset or hub)"

    streaming: bool = option(
        False,
        "read the training rows as a stream (datasets' IterableDataset): nothing is downloaded or loaded whole; needs"
        " --max_steps")
    shuffle_buffer_size: int = option(1000, "rows in the seeded shuffle buffer of a stream (0: source order)")
    max_eval_samples: int = option(1000, "validation rows read from a stream (held once in memory)")


@dataclass
class DataOptions(DataArguments, StreamingArguments):
    """The data options alone: what `load_split` and the streams read."""


def data_options(**values) -> DataOptions:
    """The data options with `values` set, e.g. `data_options(dataset="imagefolder", data_dir="photos/")`."""
    known = {f.name for f in fields(DataOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"data_options: unknown option {unknown[0]!r}; see DataArguments and StreamingArguments")
    return DataOptions(**values)
