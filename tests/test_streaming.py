"""Streaming: WebDataset shards written from the embedded dataset and from real COCO photos, read as `datasets`
streams; every process reads different rows; a stream's position survives a kill."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import SHARED_SAMPLE, free_port, kill_after_checkpoint, load_script, slow
from PIL import Image
from safetensors.torch import load_file

from modeling_xattn.training.data.schema import class_names
from modeling_xattn.training.data.shards import load_shards
from modeling_xattn.training.data.sources import data_options, load_split
from modeling_xattn.training.data.streaming import StreamingData

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "scripts" / "train.py"
make_shards = load_script("make_shards")
train = load_script("train")


def shard_rows(path):
    """The (key, json) samples of one tar shard, read with tarfile alone."""
    samples = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, extension = member.name.split(".", 1)
            samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


@pytest.fixture(scope="module")
def embedded_shards(tmp_path_factory):
    """The embedded dataset as shards: 60 train rows in 4 shards of 15, 12 test rows (no validation split)."""
    folder = tmp_path_factory.mktemp("shards")
    result = make_shards.main(["--synthetic_samples", "60", "--synthetic_test_samples", "12", "--rows_per_shard", "15",
                               "--output_dir", str(folder)])
    assert result["rows"] == {"train": 60, "test": 12}
    return folder


def test_shards_hold_the_rows_of_the_source(embedded_shards):
    source = load_split(data_options(synthetic_samples=60, synthetic_test_samples=12), "train")
    assert sorted(p.name for p in embedded_shards.iterdir()) == [
        "test-000000.tar", *(f"train-{i:06d}.tar" for i in range(4))]
    samples = shard_rows(embedded_shards / "train-000001.tar")
    assert len(samples) == 15
    key = sorted(samples)[0]
    row = source[int(key)]
    meta = json.loads(samples[key]["json"])
    assert meta["captions"] == row["captions"] and meta["text"] == row["text"]
    assert meta["label"] == source.features["label"].names[row["label"]]  # the class name, not a bare id
    image = Image.open(io.BytesIO(samples[key]["jpg"]))
    assert image.format == "JPEG" and image.size == row["image"].size

    whole = load_shards(str(embedded_shards))  # read whole, as evaluation reads them
    assert sorted(whole) == ["test", "train"] and len(whole["train"]) == 60
    assert class_names(whole["train"]) == source.features["label"].names
    assert [r["label"] for r in whole["train"]] == source["label"]
    assert whole["train"]["captions"] == source["captions"]


def test_shards_of_real_photos_copy_the_jpeg_bytes(tmp_path):
    if not SHARED_SAMPLE.exists():
        pytest.skip("the COCO sample (../shared/data/coco-val2017-sample) is not beside this checkout")
    result = make_shards.main(["--dataset", "imagefolder", "--data_dir", str(SHARED_SAMPLE), "--rows_per_shard", "10",
                               "--output_dir", str(tmp_path / "coco")])
    assert result["rows"] == {"train": 32} and len(result["shards"]["train"]) == 4
    metadata = {}
    for line in (SHARED_SAMPLE / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        metadata[row["file_name"]] = row
    samples = {}
    for path in result["shards"]["train"]:
        samples.update(shard_rows(path))
    sources = {(SHARED_SAMPLE / name).read_bytes(): row for name, row in metadata.items()}
    for sample in samples.values():
        assert sample["jpg"] in sources  # the photo's own bytes: no second JPEG encoding
        # captions as every loader cleans them (whitespace runs collapsed)
        assert json.loads(sample["json"])["captions"] == [" ".join(c.split()) for c in sources[sample["jpg"]]["captions"]]

    # streamed back for training: validation rows are held out by image id, never read for training
    args = data_options(dataset="webdataset", data_dir=str(tmp_path / "coco"), streaming=True, validation_fraction=0.25)
    data = StreamingData(args)
    held = set(data.validation["image_id"])
    assert held and len(held) + len(data.probe) == 32 and not held & set(data.probe["image_id"])
    stream = data.training_stream("caption", batch_size=4, collate=lambda rows: rows)
    pairs = [(row["image_id"], row["caption_index"]) for batch in stream.batches() for row in batch]
    assert {image for image, _ in pairs} == set(data.probe["image_id"])
    captions = sum(len(c) for c in data.probe["captions"])
    assert len(pairs) == len(set(pairs)) == captions // 4 * 4  # one example per caption, none twice, full batches


def caption_pairs(batch):
    return [(row["image_id"], row["caption_index"]) for row in batch]


def stream_of(folder, rank=0, world_size=1, buffer=8, batch_size=4):
    data = StreamingData(data_options(dataset="webdataset", data_dir=str(folder), streaming=True,
                                      shuffle_buffer_size=buffer))
    return data.training_stream("caption", batch_size, collate=caption_pairs, rank=rank, world_size=world_size,
                                seed=3)


@pytest.mark.parametrize("shards", [4, 3])
def test_two_processes_read_disjoint_rows(embedded_shards, tmp_path, shards):
    folder = embedded_shards
    if shards == 3:  # a shard count the processes do not divide: datasets then splits row by row
        folder = tmp_path / "three"
        folder.mkdir()
        for i in range(3):
            os.symlink(embedded_shards / f"train-{i:06d}.tar", folder / f"train-{i:06d}.tar")
    seen = [[pair for batch in stream_of(folder, rank, 2).batches() for pair in batch] for rank in (0, 1)]
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    every = [pair for batch in stream_of(folder, buffer=0, batch_size=1).batches() for pair in batch]
    held_out = len(every) - len(seen[0]) - len(seen[1])
    assert 0 <= held_out < 2 * 4 * 2  # only what ends an epoch: the shorter process's unfilled batch, drop_last


@slow
def test_stream_position_resumes_at_the_next_row(embedded_shards):
    straight = stream_of(embedded_shards, buffer=0)
    expected = [batch for batch in straight.batches()]
    assert straight.epoch == 1 and len(expected) > 6

    first = stream_of(embedded_shards, buffer=0)
    batches = first.batches()
    done = [next(batches) for _ in range(5)]
    first.capture()
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps, through a round trip

    resumed = stream_of(embedded_shards, buffer=0)  # a new process
    resumed.load_state_dict(state)
    assert done + list(resumed.batches()) == expected
    assert resumed.epoch == 1 and not resumed.read_from_start
    next_epoch = list(resumed.batches())
    assert resumed.read_from_start and sorted(sum(next_epoch, [])) == sorted(sum(expected, []))

    # with a shuffle buffer, datasets restores the source position but not the buffer: no row comes twice, and at
    # most a buffer's worth of the epoch is not seen
    shuffled = stream_of(embedded_shards, buffer=16)
    batches = shuffled.batches()
    done = [pair for _ in range(5) for pair in next(batches)]
    shuffled.capture()
    again = stream_of(embedded_shards, buffer=16)
    again.load_state_dict(shuffled.state_dict())
    rest = [pair for batch in again.batches() for pair in batch]
    assert not set(done) & set(rest) and len(done) + len(rest) >= len(sum(expected, [])) - 16

    with pytest.raises(ValueError, match="for 1 process"):
        stream_of(embedded_shards, rank=0, world_size=2).load_state_dict(state)


def test_streaming_options_are_checked(embedded_shards, tmp_path):
    with pytest.raises(SystemExit, match="needs --max_steps"):
        train.main(["--dataset", "webdataset", "--data_dir", str(embedded_shards), "--streaming",
                    "--output_dir", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="reads WebDataset shards"):
        train.main(["--streaming", "--max_steps", "2", "--output_dir", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="no shards named"):
        train.main(["--dataset", "webdataset", "--data_dir", str(tmp_path), "--streaming", "--max_steps", "2",
                    "--output_dir", str(tmp_path / "c")])


STREAM = ["--dataset", "webdataset", "--streaming", "--batch_size", "8", "--vocab_size", "150", "--report_to", "none",
          "--no_progress", "--learning_rate", "3e-4", "--max_eval_samples", "16"]


@slow
def test_killed_streaming_run_resumes_to_the_same_weights(embedded_shards, tmp_path):
    """SIGKILL after the step-4 checkpoint; the resumed run reads on from the checkpoint's row (source order, no
    shuffle buffer: exactly the rows the uninterrupted run read), across the end of the stream into a second epoch,
    and ends with the same weights, bit for bit."""
    common = STREAM + ["--data_dir", str(embedded_shards), "--shuffle_buffer_size", "0", "--max_steps", "40",
                       "--save_steps", "4", "--eval_steps", "20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run([sys.executable, str(TRAIN), *common, "--output_dir", str(tmp_path / "straight")],
                              cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = tmp_path / "killed"
    last = kill_after_checkpoint([sys.executable, str(TRAIN), *common, "--output_dir", str(killed)], killed, 4,
                                 env=env, cwd=REPO)
    assert 4 <= last < 40

    resumed = subprocess.run([sys.executable, str(TRAIN), *common, "--output_dir", str(killed),
                              "--resume_from_checkpoint", "latest"], cwd=REPO, capture_output=True, text=True,
                             env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {last}" in resumed.stdout
    expected, got = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


@slow
def test_two_processes_stream_and_end_with_identical_weights(embedded_shards, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()),
               str(TRAIN), *STREAM, "--data_dir", str(embedded_shards), "--max_steps", "30", "--eval_steps", "30",
               "--output_dir", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stdout and "weights identical on all 2 processes" in result.stdout
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == 30 and results["num_processes"] == 2


@slow
def test_hub_datasets_stream(embedded_shards, tmp_path):
    """Two Hub dataset repos streamed from the Hub test server: a repo of shards, and an imagefolder of PNG photos
    with `metadata.jsonl` (read through the column options), each at a pinned commit."""
    from hub_server import serve
    from huggingface_hub import HfApi

    from modeling_xattn.training.data.synthetic import synthetic_dataset

    photos = tmp_path / "photos" / "train"
    photos.mkdir(parents=True)
    with open(photos / "metadata.jsonl", "w") as metadata:
        for index, row in enumerate(synthetic_dataset(40, seed=5)):
            row["image"].save(photos / f"{index}.png")
            metadata.write(json.dumps({"file_name": f"{index}.png", "sentences": row["captions"]}) + "\n")
    server, state, endpoint = serve()
    try:
        api = HfApi(endpoint=endpoint, token="hf_test_token")
        commits = {}
        for name, folder in (("user/shards", embedded_shards), ("user/photos", tmp_path / "photos")):
            api.create_repo(name, repo_type="dataset")
            commits[name] = api.upload_folder(folder_path=str(folder), repo_id=name, repo_type="dataset").oid
        env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "home"),
               "HF_TOKEN": "hf_test_token", "OMP_NUM_THREADS": "1"}
        for name, extra in (("user/shards", []), ("user/photos", ["--caption_column", "sentences"])):
            out = tmp_path / name.split("/")[1]
            result = subprocess.run(
                [sys.executable, str(TRAIN), *STREAM, "--dataset", "hub", "--dataset_name", name, "--dataset_revision",
                 commits[name], *extra, "--max_steps", "3", "--output_dir", str(out)],
                cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
            assert result.returncode == 0, result.stderr[-3000:]
            assert "streaming the train split" in result.stdout
            results = json.loads((out / "train_results.json").read_text())
            assert results["global_step"] == 3 and "val_i2t_R@1" in results["metrics"], name
        assert any(r.startswith(f"GET /datasets/user/photos/resolve/{commits['user/photos']}/train/") for r in state.requests)
    finally:
        server.shutdown()


def test_evaluation_holds_out_the_rows_a_stream_held_out(embedded_shards):
    """Shards without a validation split: the rows `--streaming` held out of training are the rows `evaluate.py`
    (the shards read whole) takes as validation."""
    options = dict(dataset="webdataset", data_dir=str(embedded_shards), validation_fraction=0.2)
    streamed = StreamingData(data_options(streaming=True, **options))
    whole = load_split(data_options(**options), "validation")
    assert len(whole) and sorted(whole["image_id"]) == sorted(streamed.validation["image_id"])
    trained = load_split(data_options(**options), "train", hold_out_validation=True)
    assert not set(trained["image_id"]) & set(whole["image_id"]) and len(trained) + len(whole) == 60


def test_rewriting_shards_replaces_the_old_ones(embedded_shards, tmp_path):
    import shutil

    folder = tmp_path / "again"
    shutil.copytree(embedded_shards, folder)
    result = make_shards.main(["--synthetic_samples", "60", "--synthetic_test_samples", "12", "--rows_per_shard",
                               "100", "--splits", "train", "--output_dir", str(folder)])
    assert [Path(p).name for p in result["shards"]["train"]] == ["train-000000.tar"]
    assert sorted(p.name for p in folder.glob("*.tar")) == ["test-000000.tar", "train-000000.tar"]
    assert len(load_shards(str(folder))["train"]) == 60
    with pytest.raises(SystemExit, match="look like WebDataset shards: read them with --dataset webdataset"):
        make_shards.main(["--dataset", "imagefolder", "--data_dir", str(folder), "--output_dir", str(tmp_path / "x")])


def test_a_source_too_small_to_hold_out_a_row_stops_before_training(tmp_path):
    folder = tmp_path / "four"
    make_shards.main(["--synthetic_samples", "4", "--synthetic_test_samples", "1", "--output_dir", str(folder)])
    options = ["--dataset", "webdataset", "--data_dir", str(folder), "--validation_fraction", "0.001"]
    none_held = load_split(data_options(dataset="webdataset", data_dir=str(folder), validation_fraction=0.001),
                           "validation")
    assert len(none_held) == 0  # the hash picks none of four rows at 0.1%
    for streaming in ([], ["--streaming"]):
        with pytest.raises(SystemExit, match="no usable validation row"):
            train.main([*options, "--max_steps", "2", "--batch_size", "1", "--output_dir", str(tmp_path / "out"),
                        *streaming])
