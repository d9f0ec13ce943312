import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import SHARED_SAMPLE
from PIL import Image

from modeling_xattn.training.collate import XAttnCollator
from modeling_xattn.training.data.schema import BadRowCounter, answer_vocabulary, vqa_soft_scores
from modeling_xattn.training.data.sources import (
    MATCHING_CLASSES,
    caption_matching,
    data_options,
    load_coco_captions,
    load_imagefolder,
    load_karpathy,
    load_mvsa,
    load_split,
    load_table,
    merge_sentiment_pair,
)
from modeling_xattn.training.data.synthetic import synthetic_dataset


def write_image(path, colour=(200, 30, 30), size=(20, 16)):
    Image.new("RGB", size, colour).save(path)
    return path


def test_synthetic_dataset_is_deterministic_balanced_and_needs_both_modalities():
    first, second = synthetic_dataset(300, seed=3), synthetic_dataset(300, seed=3)
    assert first["text"] == second["text"] and first["captions"] == second["captions"]
    assert np.array_equal(np.asarray(first[5]["image"]), np.asarray(second[5]["image"]))
    assert first["text"] != synthetic_dataset(300, seed=4)["text"]
    labels = Counter(first["label"])
    assert set(labels) == {0, 1, 2} and min(labels.values()) > 70
    # text alone: every named colour is spread over all three labels
    by_colour = {}
    for text, label in zip(first["text"], first["label"]):
        for colour in named_colours(text):
            by_colour.setdefault(colour, Counter())[label] += 1
    assert len(by_colour) == 4 and all(len(counts) == 3 and min(counts.values()) > 10 for counts in by_colour.values())
    # image alone: whichever colours an image holds, all three labels occur about equally
    by_image_colour = {}
    for captions, label in zip(first["captions"], first["label"]):
        for part in captions[0].replace(" and ", ", ").split(", "):
            by_image_colour.setdefault(part.split()[1], Counter())[label] += 1
    assert all(len(counts) == 3 and min(counts.values()) > 30 for counts in by_image_colour.values())
    assert all(len(captions) == 5 for captions in first["captions"])
    # captions tell images apart
    assert len({tuple(c) for c in first["captions"]}) > 280  # 289 of 300 with the defaults
    row = first[0]
    assert row["image"].size == (64, 64) and len(row["answers"]) == 10 and row["question"].startswith("what shape")


def named_colours(text):
    words = text.split()  # "there is a <colour> shape and a <colour> shape"
    return words[3], words[7]


def test_synthetic_labels_follow_the_image():
    data = synthetic_dataset(60, seed=1)
    for row in data:
        in_image = {part.split()[1] for part in row["captions"][0].replace(" and ", ", ").split(", ")}
        found = sum(colour in in_image for colour in named_colours(row["text"]))
        assert row["label"] == {2: 0, 1: 1, 0: 2}[found], row["text"]  # both: positive, one: neutral, none: negative


def test_synthetic_object_counts_and_knobs():
    data = synthetic_dataset(40, seed=2, objects=3, min_objects=2, num_colours=5, num_shapes=2, captions_per_image=2)
    counts = {len(row["captions"][0].replace(" and ", ", ").split(", ")) for row in data}
    assert counts == {2, 3} and all(len(row["captions"]) == 2 for row in data)
    with pytest.raises(ValueError, match="num_colours - 2"):
        synthetic_dataset(4, objects=5)


def test_bad_rows_are_skipped_and_counted(processor, tmp_path):
    good = write_image(tmp_path / "good.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:60])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image")
    rows = [
        {"image": str(good), "text": "a red thing", "captions": ["red"], "label": 0, "image_id": 1},
        {"image": str(truncated), "text": "x", "captions": ["x"], "label": 1, "image_id": 2},
        {"image": str(tmp_path / "missing.jpg"), "text": "x", "captions": ["x"], "label": 1, "image_id": 3},
        {"image": str(tmp_path / "garbage.jpg"), "text": "x", "captions": ["x"], "label": 1, "image_id": 4},
        {"image": str(good), "text": "   ", "captions": ["x"], "label": 2, "image_id": 5},
        {"image": str(good), "text": b"caf\xe9 latin-1", "captions": ["ok"], "label": 2, "image_id": 6},
    ]
    counter = BadRowCounter()
    batch = XAttnCollator(processor, targets="statement", counter=counter)(rows)
    assert batch["pixel_values"].shape[0] == 2 and batch["labels"].tolist() == [0, 2]
    assert counter.total == 4 and counter.counts["empty text"] == 1
    assert "bad image" in counter.summary() and "text bytes decoded" in counter.summary()
    assert XAttnCollator(processor, counter=counter)(rows[1:4]) == {}
    # multitask: the row with an empty statement still trains its caption; it has no class label (-100)
    batch = XAttnCollator(processor, counter=BadRowCounter())(rows)
    assert batch["labels"].tolist() == [0, -100, 2] and batch["caption_attention_mask"].any(-1).tolist() == [True] * 3


def test_decompression_bomb_is_skipped(processor, tmp_path, monkeypatch):
    import modeling_xattn.training.data.schema as data

    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 100)
    big = write_image(tmp_path / "big.png", size=(20, 20))
    counter = BadRowCounter()
    out = XAttnCollator(processor, targets="caption", counter=counter)([{"image": str(big), "captions": ["c"]}])
    assert out == {} and "DecompressionBombError" in counter.summary()


def test_long_text_is_truncated(processor, tmp_path):
    row = {"image": str(write_image(tmp_path / "a.png")), "text": "word " * 500, "captions": ["w " * 300], "label": 0}
    batch = XAttnCollator(processor)([row])
    assert batch["input_ids"].shape[1] == processor.max_length
    assert batch["caption_input_ids"].shape[1] == processor.max_caption_length


def test_vqa_soft_scores_follow_the_standard_formula():
    """min(#annotators / 3, 1), the answers normalised as the official evaluation normalises a prediction: "two",
    "2" and "Two." are one answer, "2"."""
    vocab = {"yes": 0, "no": 1, "2": 2}
    scores = vqa_soft_scores([["yes"] * 2 + ["no"] * 8, ["two"] * 1 + ["Two."] + ["2"] * 8], vocab)
    torch.testing.assert_close(scores, torch.tensor([[2 / 3, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    assert answer_vocabulary({"answers": [["a", "b", "b"], ["b", "a"]]}, top_k=1) == ["b"]
    assert answer_vocabulary({"answers": [["Two", "2", "the dog"]]}) == ["2", "dog"]


def test_vqa_collation(processor):
    data = synthetic_dataset(8)
    vocab = answer_vocabulary(data)
    batch = XAttnCollator(processor, targets="question", answer_vocab=vocab)([data[i] for i in range(4)])
    assert batch["labels"].shape == (4, len(vocab)) and (batch["labels"].sum(1) == 1).all()


def test_imagefolder_with_metadata(tmp_path):
    rows = []
    for i in range(3):
        write_image(tmp_path / f"{i}.png", colour=(i * 60, 10, 10))
        rows.append({"file_name": f"{i}.png", "captions": [f"image {i}", "another"], "text": f"t{i}", "label": i})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = load_imagefolder(str(tmp_path))
    assert len(data) == 3 and sorted(data["label"]) == [0, 1, 2]
    assert data[0]["captions"][1] == "another" and data[0]["image"].size == (20, 16)


def test_caption_matching_pairs_each_caption_with_its_photo_and_with_another(tmp_path, processor):
    rows = []
    for i in range(6):
        write_image(tmp_path / f"{i}.png", colour=(i * 40, 10, 10))
        rows.append({"file_name": f"{i}.png", "captions": [f"photo {i} first", f"photo {i} second", " "]})
    rows.append({"file_name": "6.png", "captions": []})  # no caption: left out
    write_image(tmp_path / "6.png")
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    options = data_options(dataset="imagefolder", data_dir=str(tmp_path), caption_matching=True, validation_fraction=0.5)
    train = load_split(options, "train")  # a single-split folder: every row
    assert train.features["label"].names == list(MATCHING_CLASSES)
    assert len(train) == 6 * 2 * 2 and Counter(train["label"]) == {0: 12, 1: 12}  # two captions x (own, another)
    # training rows keep their photo's own captions (for retrieval beside the task); evaluation rows carry none
    assert all(row["captions"] == [f"photo {row['image_id'].split('.')[0]} first",
                                   f"photo {row['image_id'].split('.')[0]} second"] for row in train)
    for row in train:
        photo = row["image_id"].split(".")[0]  # the image id is the file name
        own = row["text"].startswith(f"photo {photo} ")
        assert own == (row["label"] == 1), row  # label 1 exactly when the caption is this photo's
    assert train[0]["image"].size == (20, 16)
    again = load_split(options, "train")
    assert again["text"] == train["text"]  # seeded
    other = load_split(data_options(**{**vars(options), "data_seed": 1}), "train")
    assert other["text"] != train["text"]
    one = caption_matching(load_imagefolder(str(tmp_path)), every_caption=False)
    assert len(one) == 12 and Counter(one["label"]) == {0: 6, 1: 6}  # one caption per photo, as evaluation takes
    assert one["captions"] == [[]] * 12
    batch = XAttnCollator(processor, targets="statement")([train[i] for i in range(4)])
    assert batch["labels"].tolist() == train["label"][:4] and "input_ids" in batch
    with pytest.raises(ValueError, match="at least two captioned photos"):
        caption_matching(load_imagefolder(str(tmp_path)).select([0]))


def test_csv_and_jsonl_tables(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "rows.csv").write_text('image,text,captions,label\na.png,hello,"one|two",negative\n')
    table = load_table(str(tmp_path / "rows.csv"))
    assert table[0]["captions"] == ["one", "two"] and table[0]["label"] == 2
    assert table[0]["image"] == str(tmp_path / "a.png")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "a.png", "captions": ["x"], "label": 1}) + "\n")
    assert load_table(str(tmp_path / "rows.jsonl"))[0]["label"] == 1


def test_coco_annotations_and_karpathy_splits(tmp_path):
    write_image(tmp_path / "000001.jpg")
    write_image(tmp_path / "000002.jpg")
    coco = {"images": [{"id": 1, "file_name": "000001.jpg"}, {"id": 2, "file_name": "000002.jpg"}],
            "annotations": [{"image_id": 1, "caption": "A dog."}, {"image_id": 1, "caption": " a  cat "},
                            {"image_id": 2, "caption": "A car."}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(coco))
    data = load_coco_captions(str(tmp_path / "captions_val2017.json"), str(tmp_path))
    assert data[0]["captions"] == ["A dog.", "a cat"] and data[1]["image_id"] == "2"
    karpathy = {"images": [
        {"filepath": "", "filename": "000001.jpg", "split": "train", "cocoid": 1, "sentences": [{"raw": "x"}]},
        {"filepath": "", "filename": "000002.jpg", "split": "restval", "cocoid": 2, "sentences": [{"raw": "y"}]},
        {"filepath": "", "filename": "000002.jpg", "split": "test", "cocoid": 3, "sentences": [{"raw": "z"}]}]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    assert len(load_karpathy(str(tmp_path / "dataset_coco.json"), str(tmp_path), "train")) == 2
    assert load_karpathy(str(tmp_path / "dataset_coco.json"), str(tmp_path), "test")[0]["captions"] == ["z"]


def test_mvsa_merge_rule():
    assert merge_sentiment_pair("positive", "positive") == "positive"
    assert merge_sentiment_pair("neutral", "negative") == "negative"
    assert merge_sentiment_pair("positive", "neutral") == "positive"
    assert merge_sentiment_pair("positive", "negative") is None


def test_mvsa_layout_single_and_multiple(tmp_path, processor):
    root = tmp_path / "MVSA"
    (root / "data").mkdir(parents=True)
    labels = ["ID\ttext,image"]
    for i in range(1, 21):
        write_image(root / "data" / f"{i}.jpg")
        (root / "data" / f"{i}.txt").write_bytes(f"tweet {i} ".encode() + (b"\xff\xfe caf\xe9" if i == 3 else b"ok"))
        labels.append(f"{i}\t{['positive', 'neutral', 'negative'][i % 3]},neutral")
    labels.append("21\tpositive,negative")  # conflicting pair: dropped
    (root / "data" / "5.jpg").write_bytes(b"corrupt")
    (root / "labelResultAll.txt").write_text("\n".join(labels))
    counter = BadRowCounter()
    splits = load_mvsa(str(root), seed=0, counter=counter)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [16, 2, 2]
    assert counter.counts["conflicting sentiment"] == 1
    again = load_mvsa(str(root), seed=0)
    assert splits["test"]["image_id"] == again["test"]["image_id"]
    assert load_mvsa(str(root), seed=1)["train"]["image_id"] != splits["train"]["image_id"]
    texts = {row["image_id"]: row["text"] for split in splits.values() for row in split}
    assert texts["3"].startswith("tweet 3")
    collate = XAttnCollator(processor, targets="statement", counter=counter)
    rows = [row for split in splits.values() for row in split]
    batch = collate(rows)
    assert batch["pixel_values"].shape[0] == 19 and "bad image" in counter.summary()

    multiple = root / "multi"
    (multiple / "data").mkdir(parents=True)
    write_image(multiple / "data" / "1.jpg")
    write_image(multiple / "data" / "2.jpg")
    (multiple / "labelResultAll.txt").write_text(
        "ID\ttext,image\ttext,image\ttext,image\n"
        "1\tpositive,positive\tneutral,positive\tnegative,negative\n"
        "2\tpositive,negative\tneutral,neutral\tnegative,negative\n")
    merged = load_mvsa(str(multiple), counter=BadRowCounter())
    rows = {row["image_id"]: row["label"] for split in merged.values() for row in split}
    assert rows == {"1": 0}  # 2 has no majority (one dropped pair, one neutral, one negative)


@pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason="shared COCO sample not present (a user's clone has none)")
def test_real_coco_sample_through_imagefolder(processor):
    data = load_imagefolder(str(SHARED_SAMPLE))
    assert len(data) == 32 and all(len(c) == 5 for c in data["captions"])
    batch = XAttnCollator(processor, targets="caption")([data[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 64, 64) and batch["caption_input_ids"].shape[0] == 4
