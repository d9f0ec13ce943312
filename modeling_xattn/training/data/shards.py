"""WebDataset tar shards: the format (`{split}-{n:06d}.tar`, one `.jpg` and one `.json` of the schema per row),
writing them (a source's splits: `make_shards`) and reading a folder of them as `datasets` splits."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from modeling_xattn.training.data.schema import (
    NO_TARGET,
    SPLIT_FOLDERS,
    BadRowCounter,
    as_label,
    class_names_of,
    clean_text,
    label_id,
    load_image,
    row_captions,
    undecoded,
)

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
        "captions": row_captions(row),
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
    loaded = loaded.map(from_shard, remove_columns=list(shard_features()), desc="reading shards")
    names = class_names_of([label for part in loaded.values() for label in part["label"]])
    loaded = loaded.map(lambda row: {"label": label_id(row["label"], names)}, desc="labels")
    return loaded.cast_column("label", datasets.ClassLabel(names=names)) if names else loaded


def from_shard(row) -> dict:
    sample = row["json"] or {}
    return {"image": row["jpg"], "text": sample.get("text") or "", "captions": sample.get("captions") or [],
            "label": sample.get("label") or "", "answers": sample.get("answers") or [],
            "question": sample.get("question") or "", "image_id": sample.get("image_id") or row["__key__"]}


def make_shards(available: dict, output_dir: str, rows_per_shard: int = 1000, splits: list[str] | None = None,
                max_samples: int | None = None, counter: BadRowCounter | None = None) -> dict:
    """Write every split of `available` (split name -> a function that reads it as a Dataset of the schema, as
    `sources.source_splits` gives them), or only `splits`, each cut to `max_samples` rows, as shards in `output_dir`,
    replacing the shards of those splits already there: what `scripts/make_shards.py` runs. Returns the shard paths
    by split, the rows written and the skipped-row summary of `counter`."""
    import datasets

    counter = counter if counter is not None else BadRowCounter()
    unknown = sorted(set(splits or []) - set(available))
    if unknown:
        raise ValueError(f"the source has no split {', '.join(unknown)}; it has {sorted(available)}")
    written, rows = {}, {}
    for split in splits or sorted(available):
        data = undecoded(available[split]())
        if max_samples:
            data = data.select(range(min(max_samples, len(data))))
        feature = data.features.get("label")
        names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        for old in Path(output_dir).glob(f"{split}-*.tar"):  # a previous run's shards would be read as more data
            old.unlink()
        before = counter.total
        written[split] = write_shards(data, output_dir, split, rows_per_shard, names, counter)
        rows[split] = len(data) - (counter.total - before)
    return {"shards": written, "rows": rows, "summary": counter.summary()}
