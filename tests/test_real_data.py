"""The path a user takes with their own photographs: captions-only folders, partly labelled rows, every caption,
real negatives, the folder's own splits, bad files, and the real photos in ../shared/data where they exist."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_SAMPLE, load_script, slow
from PIL import Image

from modeling_xattn import XAttnConfig, XAttnForMultiTask
from modeling_xattn.modeling_xattn import negative_pairs, sample_negatives
from modeling_xattn.training.collate import XAttnCollator
from modeling_xattn.training.data.schema import NO_TARGET, as_label, undecoded
from modeling_xattn.training.data.sources import load_imagefolder, load_split
from modeling_xattn.training.data.synthetic import synthetic_dataset
from modeling_xattn.training.data.views import CaptionPairs
from modeling_xattn.training.options import data_options

train = load_script("train")
evaluation = load_script("evaluate")
predict = load_script("predict")

FLICKR8K = SHARED_SAMPLE.parent / "flickr8k"
FAST = ["--vocab_size", "200", "--report_to", "none", "--no_progress", "--batch_size", "8"]
needs_coco = pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason="shared COCO sample not present (a user's clone has none)")
needs_flickr = pytest.mark.skipif(not FLICKR8K.exists(), reason="shared Flickr8k not present (a user's clone has none)")


def photos(count, seed=0):
    """`count` photographs: real Flickr8k ones where ../shared has them, else drawn images (a user's clone)."""
    if FLICKR8K.exists():
        return [Image.open(path).convert("RGB") for path in sorted((FLICKR8K / "train").glob("*.jpg"))[seed:seed + count]]
    return [row["image"] for row in synthetic_dataset(count, seed=seed)]


def write_folder(folder: Path, rows: list[dict], images=None):
    """An imagefolder split: one JPEG per row and a metadata.jsonl with the row's columns."""
    folder.mkdir(parents=True, exist_ok=True)
    images = images or photos(len(rows))
    with open(folder / "metadata.jsonl", "w") as handle:
        for index, (row, image) in enumerate(zip(rows, images)):
            name = row.pop("file_name", f"{index:04d}.jpg")
            image.save(folder / name)
            handle.write(json.dumps({"file_name": name, "image_id": f"{folder.name}-{index}", **row}) + "\n")
    return folder


def captions_only(count, offset=0):
    return [{"captions": [f"photo {offset + i} shows a dog", f"a picture number {offset + i}",
                          f"caption {i % 3} of a scene"]} for i in range(count)]


def data_args(**values):
    return data_options(**values)


# ---------------------------------------------------------------------------------------------------- training runs

def test_captions_only_folder_trains_retrieval_and_captioning(tmp_path):
    root = tmp_path / "photos"
    write_folder(root / "train", captions_only(12))
    write_folder(root / "validation", captions_only(4, offset=100))
    result = train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(root), "--max_steps", "3",
                                "--output_dir", str(tmp_path / "run")])
    assert result["global_step"] == 3
    metrics = result["metrics"]
    assert {"val_loss_cl", "val_loss_seq", "val_i2t_R@1"} <= set(metrics) and "val_accuracy" not in metrics
    card = json.loads((tmp_path / "run" / "train_results.json").read_text())["card"]
    assert card["tasks"] == "captioning,retrieval"  # "auto" resolved from the data


def test_partly_labelled_rows_train_every_task(tmp_path):
    rows = []
    for i in range(12):
        row = {}
        if i % 3 != 1:  # two rows in three carry a labelled statement
            row.update(text=f"there is a thing number {i}", label=["positive", "neutral", "negative"][i % 3])
        if i % 3 != 2:  # two in three carry captions
            row["captions"] = [f"a photo {i}", f"another caption {i}"]
        rows.append(row)
    write_folder(tmp_path / "mixed", rows)
    result = train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(tmp_path / "mixed"), "--max_steps", "3",
                                "--validation_fraction", "0.25", "--output_dir", str(tmp_path / "run")])
    assert result["global_step"] == 3
    assert {"val_loss_ce", "val_loss_cl", "val_loss_seq"} <= set(result["metrics"])


def test_partly_labelled_batch_computes_each_loss_on_its_rows(processor):
    config = XAttnConfig.from_preset("tiny", text_config={"vocab_size": len(processor.tokenizer)})
    model = XAttnForMultiTask(config).eval()
    data = synthetic_dataset(4)
    rows = [dict(data[i]) for i in range(4)]
    rows[1]["label"] = -1  # datasets' "missing" ClassLabel: no classification target
    rows[2]["captions"] = []  # no caption: no retrieval or captioning target
    batch = XAttnCollator(processor)(rows)
    assert batch["labels"].tolist() == [rows[0]["label"], NO_TARGET, rows[2]["label"], rows[3]["label"]]
    assert batch["caption_attention_mask"].any(-1).tolist() == [True, True, False, True]
    with torch.no_grad():
        torch.manual_seed(0)
        out = model(**batch)
        assert torch.isfinite(out.loss) and out.image_embeds.shape[0] == 4  # every row; row 2's text is empty
        logits = out.logits[[0, 2, 3]]
        torch.testing.assert_close(out.loss_ce, torch.nn.functional.cross_entropy(logits, batch["labels"][[0, 2, 3]]))
        keep = torch.tensor([0, 1, 3])  # the caption rows alone give the same caption loss
        torch.manual_seed(0)
        alone = model(pixel_values=batch["pixel_values"][keep], caption_input_ids=batch["caption_input_ids"][keep],
                      caption_attention_mask=batch["caption_attention_mask"][keep], image_ids=batch["image_ids"][keep])
    torch.testing.assert_close(out.loss_seq, alone.loss_seq)
    torch.testing.assert_close(out.loss_cl, alone.loss_cl)
    torch.testing.assert_close(out.loss_itm, alone.loss_itm)
    torch.testing.assert_close(out.image_embeds[keep], alone.image_embeds)


def test_too_few_rows_for_one_batch_stops_with_the_counts(tmp_path):
    write_folder(tmp_path / "small", [{"captions": ["one caption"]}] * 6)
    with pytest.raises(SystemExit, match=r"cannot fill one batch of 8 x 1"):
        train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(tmp_path / "small"), "--max_steps", "2",
                           "--output_dir", str(tmp_path / "run")])


def test_a_task_without_targets_stops_at_once(tmp_path):
    write_folder(tmp_path / "captions", captions_only(12))
    with pytest.raises(SystemExit, match="no training row has a target for classification"):
        train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(tmp_path / "captions"), "--tasks",
                           "classification,captioning", "--output_dir", str(tmp_path / "run")])


def test_an_epoch_without_a_usable_row_stops_instead_of_spinning(tmp_path):
    folder = write_folder(tmp_path / "broken", captions_only(12))
    for path in folder.glob("*.jpg"):
        path.write_bytes(b"not a jpeg")
    with pytest.raises(RuntimeError, match=r"made no training step.*bad image \(UnidentifiedImageError\): 1[01]"):
        train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(folder), "--max_steps", "5",
                           "--output_dir", str(tmp_path / "run")])


# ---------------------------------------------------------------------------------------------------- every caption

def test_every_caption_reaches_the_loader_once_per_epoch(processor):
    data = undecoded(synthetic_dataset(10))
    data = data.map(lambda row, i: {"captions": row["captions"][: 1 + i % 5]}, with_indices=True)
    pairs = CaptionPairs(data)
    expected = sorted((str(row["image_id"]), caption) for row in data for caption in row["captions"])
    assert len(pairs) == len(expected) == sum(1 + i % 5 for i in range(10))
    loader = torch.utils.data.DataLoader(pairs, batch_size=4, shuffle=True, collate_fn=lambda rows: rows)
    collate, seen = XAttnCollator(processor, targets="caption"), []
    for rows in loader:
        chosen = [row["captions"][row["caption_index"]] for row in rows]
        seen += [(str(row["image_id"]), caption) for row, caption in zip(rows, chosen)]
        batch = collate(rows)  # the collator trains exactly the pair's caption
        assert torch.equal(batch["caption_input_ids"], processor(captions=chosen)["caption_input_ids"])
    assert sorted(seen) == expected


# ---------------------------------------------------------------------------------------------------- negatives

def test_duplicate_captions_and_shared_images_are_never_negatives(processor):
    captions = ["a dog runs", "a dog runs", "a cat sleeps", "a red car", "a red car"]
    image_ids = torch.tensor([1, 2, 3, 3, 4])  # rows 2 and 3: two captions of one image
    tokens = processor(captions=captions)
    negatives = negative_pairs(image_ids, tokens["caption_input_ids"], tokens["caption_attention_mask"])
    expected = torch.ones(5, 5, dtype=torch.bool)
    for i, j in [(0, 1), (2, 3), (3, 4)]:  # identical text / same image / identical text
        expected[i, j] = expected[j, i] = False
    expected.fill_diagonal_(False)
    assert torch.equal(negatives, expected)

    embeds = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    picked = set()
    torch.manual_seed(0)
    for _ in range(200):
        text_for_image, image_for_text, valid = sample_negatives(embeds, embeds, negatives, temperature=0.5)
        assert valid.all()
        for i in range(5):
            assert negatives[i, text_for_image[i]] and negatives[image_for_text[i], i]
            picked.add((i, int(text_for_image[i])))
    assert len(picked) > 5  # drawn in proportion to similarity, not always the single closest


# ---------------------------------------------------------------------------------------------------- splits

def test_a_folders_own_splits_are_used_as_they_are(tmp_path, caplog):
    root = tmp_path / "data"
    write_folder(root / "train", captions_only(10))
    write_folder(root / "validation", captions_only(3, offset=50))
    write_folder(root / "test", captions_only(4, offset=90))
    args = data_args(dataset="imagefolder", data_dir=str(root))
    with caplog.at_level(logging.WARNING):
        sizes = {split: len(load_split(args, split, hold_out_validation=split == "train"))
                 for split in ("train", "validation", "test")}
    assert sizes == {"train": 10, "validation": 3, "test": 4} and not caplog.records  # nothing carved, nothing said


def test_a_missing_validation_split_is_carved_out_of_train_and_said(tmp_path, caplog):
    write_folder(tmp_path / "flat", captions_only(20))  # images + metadata.jsonl at the top level
    args = data_args(dataset="imagefolder", data_dir=str(tmp_path / "flat"))
    with caplog.at_level(logging.WARNING):
        training = load_split(args, "train", hold_out_validation=True)
        validation = load_split(args, "validation")
    assert len(training) == 18 and len(validation) == 2
    assert not set(training["image_id"]) & set(validation["image_id"])
    assert "holding out 10%" in caplog.text and "no validation split" in caplog.text
    assert len(load_split(args, "train")) == 20  # evaluating the train split loses no row
    assert len(load_split(args, "test")) == 20  # a folder with one split evaluates every row of it


def test_a_folder_with_only_test_evaluates_every_row(tmp_path):
    write_folder(tmp_path / "only" / "test", captions_only(7))
    args = data_args(dataset="imagefolder", data_dir=str(tmp_path / "only"))
    assert len(load_split(args, "test")) == 7 and len(load_split(args, "validation")) == 7
    with pytest.raises(ValueError, match=r"has no 'test' split; it has \['train', 'validation'\]"):
        root = tmp_path / "two"
        write_folder(root / "train", captions_only(4))
        write_folder(root / "validation", captions_only(2))
        load_split(data_args(dataset="imagefolder", data_dir=str(root)), "test")


def test_no_label_is_one_sentinel():
    assert [as_label(v) for v in (None, -1, -100, "negative", "2", 1, "cat")] == [-100, -100, -100, 2, 2, 1, -100]


# ---------------------------------------------------------------------------------------------------- bad input

def test_bad_files_on_the_real_path_are_converted_or_skipped_and_counted(tmp_path, capsys):
    folder = tmp_path / "bad" / "train"
    good = [{"captions": [f"a good photo {i}", f"still good {i}"]} for i in range(10)]
    write_folder(folder, good)
    images = photos(5, seed=20)
    with open(folder / "metadata.jsonl", "ab") as handle:
        def add(name, captions, raw=None):
            line = raw or json.dumps({"file_name": name, "image_id": name, "captions": captions}).encode()
            handle.write(line + b"\n")

        add("missing.jpg", ["its file is not there"])
        images[0].save(folder / "truncated.jpg")
        whole = (folder / "truncated.jpg").read_bytes()
        (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
        add("truncated.jpg", ["a truncated jpeg"])
        rgba = images[1].convert("RGBA")
        rgba.putalpha(128)
        rgba.save(folder / "alpha.png")
        add("alpha.png", ["a png with alpha"])
        grey16 = (np.asarray(images[2].convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(grey16).save(folder / "sixteen.png")
        add("sixteen.png", ["a sixteen bit png"])
        images[3].convert("L").save(folder / "grey.jpg")
        add("grey.jpg", ["a grayscale jpeg"])
        images[4].save(folder / "nocaption.jpg")
        add("nocaption.jpg", [])
        shutil.copy(folder / "0000.jpg", folder / "latin.jpg")
        add("", [], raw=b'{"file_name": "latin.jpg", "image_id": "latin", "captions": ["caf\xe9 au lait on a table"]}')
    # batch 1 for one epoch: every example is drawn, none dropped by drop_last
    result = train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(tmp_path / "bad"), "--num_epochs", "1",
                                "--batch_size", "1", "--validation_fraction", "0.01", "--output_dir", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    examples = int(printed.split(" training examples")[0].rsplit(" ", 1)[1])
    assert result["global_step"] == examples >= 20  # every pair of the usable rows trained once
    summary = json.loads((tmp_path / "run" / "train_results.json").read_text())
    skipped, converted = summary["bad_rows"], summary["converted"]
    assert skipped["image file missing"] == 1
    assert skipped["bad image (OSError)"] == 1
    assert skipped["no target for the task (no caption)"] == 1
    assert converted["RGBA image converted to RGB"] == 1 and converted["L image converted to RGB"] == 1
    assert sum(n for key, n in converted.items() if key.startswith("I")) == 1  # the 16-bit PNG ("I;16" or "I")
    assert converted["non-UTF-8 metadata line decoded as Latin-1"] == 1
    assert "bad rows skipped: 3" in printed and "values converted" in printed


# ---------------------------------------------------------------------------------------------------- real photos

@pytest.fixture(scope="module")
def coco_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coco_model")
    train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(SHARED_SAMPLE), "--max_steps", "4",
                       "--image_size", "96", "--output_dir", str(folder)])
    return folder


@slow
@needs_coco
def test_real_coco_photos_train_evaluate_and_caption(coco_model, tmp_path, capsys):
    results = json.loads((coco_model / "train_results.json").read_text())
    assert results["global_step"] == 4 and results["card"]["tasks"] == "captioning,retrieval"
    assert json.loads((coco_model / "config.json").read_text())["image_size"] == 96
    payload = evaluation.main(["--model", str(coco_model), "--dataset", "imagefolder", "--data_dir", str(SHARED_SAMPLE),
                               "--split", "test", "--no_progress", "--num_beams", "2", "--max_new_tokens", "6",
                               "--top_k", "4", "--no_java", "--output_dir", str(tmp_path), "--caption_samples", "6"])
    retrieval = payload["results"]["retrieval"]
    assert retrieval["gallery"] == "32 images x 160 captions"  # the folder's one split, every row of it
    assert {"BLEU-4", "CIDEr"} <= set(payload["results"]["captioning"])
    assert (tmp_path / "caption_samples.png").stat().st_size > 20_000
    capsys.readouterr()
    photos_ = sorted(SHARED_SAMPLE.glob("*.jpg"))[:3]
    captions = predict.main(["caption", "--model", str(coco_model), "--images", *map(str, photos_),
                             "--num_beams", "2", "--max_new_tokens", "6", "--json"])
    assert len(captions) == 3 and all(isinstance(row["caption"], str) for row in captions)


@needs_flickr
def test_flickr8k_splits_and_a_few_training_steps(tmp_path):
    args = data_args(dataset="imagefolder", data_dir=str(FLICKR8K))
    splits = load_imagefolder(str(FLICKR8K), split=None)
    assert {name: len(part) for name, part in splits.items()} == {"train": 6000, "validation": 1000}
    assert len(load_split(args, "validation")) == 1000  # the official dev split, not a slice of train
    result = train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(FLICKR8K), "--max_samples", "48",
                                "--max_steps", "3", "--image_size", "128", "--output_dir", str(tmp_path / "run")])
    assert result["global_step"] == 3 and "val_i2t_R@1" in result["metrics"]


def test_coco_annotation_files_train_with_their_own_validation_file(tmp_path):
    images = photos(14, seed=40)
    for split, indices in (("train", range(10)), ("val", range(10, 14))):
        coco = {"images": [], "annotations": []}
        for i in indices:
            images[i].save(tmp_path / f"{i:012d}.jpg")
            coco["images"].append({"id": i, "file_name": f"{i:012d}.jpg"})
            coco["annotations"] += [{"image_id": i, "caption": f"A photo {i} of something."},
                                    {"image_id": i, "caption": f"Another view {i}."}]
        (tmp_path / f"captions_{split}.json").write_text(json.dumps(coco))
    result = train.main(FAST + ["--dataset", "coco", "--data_file", str(tmp_path / "captions_train.json"),
                                "--validation_file", str(tmp_path / "captions_val.json"), "--data_dir", str(tmp_path),
                                "--max_steps", "2", "--output_dir", str(tmp_path / "run")])
    assert result["global_step"] == 2 and "val_loss_seq" in result["metrics"]


def test_a_hub_style_dataset_keeps_its_splits(tmp_path):
    """A dataset repository laid out as on the Hub (one file per split), loaded by name through `datasets`."""
    import datasets

    repo = tmp_path / "user-photos"
    (repo / "data").mkdir(parents=True)
    for split, count in (("train", 6), ("validation", 2), ("test", 3)):
        part = datasets.Dataset.from_dict({"image": photos(count), "caption": [f"{split} photo {i}" for i in range(count)]},
                                          features=datasets.Features({"image": datasets.Image(),
                                                                      "caption": datasets.Value("string")}))
        part.to_parquet(str(repo / "data" / f"{split}-00000-of-00001.parquet"))
    args = data_args(dataset="hub", dataset_name=str(repo), caption_column="caption")
    sizes = {split: len(load_split(args, split, hold_out_validation=split == "train")) for split in ("train", "validation", "test")}
    assert sizes == {"train": 6, "validation": 2, "test": 3}
    row = load_split(args, "test")[0]
    assert row["captions"] == ["test photo 0"] and row["label"] == NO_TARGET


def test_vqa_rows_without_a_question_keep_their_captions(processor):
    from modeling_xattn.training.data.schema import answer_vocabulary

    data = synthetic_dataset(4)
    rows = [dict(data[i]) for i in range(4)]
    rows[1]["question"], rows[1]["text"] = "", ""  # no question: its caption still trains
    vocab = answer_vocabulary(data)
    batch = XAttnCollator(processor, targets="question+caption", answer_vocab=vocab)(rows)
    assert (batch["labels"][1] == NO_TARGET).all() and (batch["labels"][[0, 2, 3]] >= 0).all()
    config = XAttnConfig.from_preset("tiny", text_config={"vocab_size": len(processor.tokenizer)},
                                     id2label=dict(enumerate(vocab)), problem_type="multi_label_classification")
    model = XAttnForMultiTask(config).eval()
    with torch.no_grad():
        out = model(**batch)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        out.logits[[0, 2, 3]], batch["labels"][[0, 2, 3]], reduction="sum") / 3
    torch.testing.assert_close(out.loss_ce, expected)


def test_class_labels_name_the_classifier(tmp_path):
    rows = [{"text": f"a photo of thing {i}", "label": ["dog", "cat", "bird", "fish", "horse"][i % 5],
             "captions": [f"caption {i}"]} for i in range(15)]
    rows[3]["label"] = None  # unlabelled: no classification target, its caption still trains
    write_folder(tmp_path / "five" / "train", rows[:12])
    write_folder(tmp_path / "five" / "validation", rows[12:])
    splits = load_imagefolder(str(tmp_path / "five"), split=None)
    assert splits["train"].features["label"].names == ["bird", "cat", "dog", "fish", "horse"]
    assert as_label(splits["train"][3]["label"]) == NO_TARGET
    result = train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(tmp_path / "five"), "--max_steps", "2",
                                "--output_dir", str(tmp_path / "run")])
    assert "val_accuracy" in result["metrics"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert list(config["id2label"].values()) == ["bird", "cat", "dog", "fish", "horse"]
    ids = tmp_path / "ids"
    write_folder(ids, [{"text": f"thing {i}", "label": i % 5} for i in range(12)])
    train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(ids), "--max_steps", "1", "--validation_fraction",
                       "0.2", "--output_dir", str(tmp_path / "ids_run")])
    assert len(json.loads((tmp_path / "ids_run" / "config.json").read_text())["id2label"]) == 5


@pytest.fixture(scope="module")
def captions_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions_model")
    write_folder(root / "photos", captions_only(12))
    train.main(FAST + ["--dataset", "imagefolder", "--data_dir", str(root / "photos"), "--max_steps", "2",
                       "--output_dir", str(root / "model")])
    return root / "model"


def test_evaluation_counts_only_bad_rows_and_never_overwrites_with_nothing(captions_model, tmp_path):
    coco_model = captions_model
    mixed = tmp_path / "mixed"
    write_folder(mixed, [{"text": "a statement", "label": 1} if i % 2 else {"captions": ["a caption"]} for i in range(6)])
    payload = evaluation.main(["--model", str(coco_model), "--dataset", "imagefolder", "--data_dir", str(mixed),
                               "--split", "train", "--no_progress", "--num_beams", "1", "--max_new_tokens", "4",
                               "--no_java", "--top_k", "2", "--output_dir", str(tmp_path / "eval")])
    assert payload["bad_rows"] == {} and set(payload["results"]) >= {"captioning", "retrieval"}
    before = (tmp_path / "eval" / "eval_results.json").read_text()
    broken = write_folder(tmp_path / "broken", captions_only(4))
    for path in broken.glob("*.jpg"):
        path.write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit, match="another evaluation"):  # another source's results are not replaced
        evaluation.main(["--model", str(coco_model), "--dataset", "imagefolder", "--data_dir", str(broken),
                         "--split", "train", "--no_progress", "--output_dir", str(tmp_path / "eval")])
    with pytest.raises(SystemExit, match="nothing evaluated"):  # nor, when told to, by an evaluation of nothing
        evaluation.main(["--model", str(coco_model), "--dataset", "imagefolder", "--data_dir", str(broken),
                         "--split", "train", "--no_progress", "--output_dir", str(tmp_path / "eval"),
                         "--overwrite_output_dir"])
    assert (tmp_path / "eval" / "eval_results.json").read_text() == before


def test_official_flickr8k_files_become_an_imagefolder(tmp_path):
    from modeling_xattn.training.data.sources import flickr8k_to_imagefolder

    source = tmp_path / "Flicker8k_Dataset"
    source.mkdir()
    names = [f"{1000 + i}_abc.jpg" for i in range(5)]
    for name, image in zip(names, photos(5, seed=60)):
        image.save(source / name)
    tokens = "".join(f"{name}#{n}\tA caption {n} of {name} .\n" for name in names for n in range(5))
    (tmp_path / "Flickr8k.token.txt").write_text(tokens)
    (tmp_path / "train.txt").write_text("\n".join(names[:3] + ["missing.jpg"]))
    (tmp_path / "dev.txt").write_text("\n".join(names[3:]))
    written = flickr8k_to_imagefolder(str(tmp_path / "Flickr8k.token.txt"), str(source),
                                      {"train": str(tmp_path / "train.txt"), "validation": str(tmp_path / "dev.txt")},
                                      str(tmp_path / "flickr8k"), image_size=32)
    assert written == {"train": 3, "validation": 2}
    splits = load_imagefolder(str(tmp_path / "flickr8k"), split=None)
    assert len(splits["train"]) == 3 and len(splits["validation"][0]["captions"]) == 5
    assert splits["train"][0]["image"].size == (32, 32)
