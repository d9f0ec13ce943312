"""Every real source on a fixture of its exact published schema (field names, nesting, id types, split handling),
written by the test: the Karpathy files of COCO and Flickr30k, the Hub's COCO Karpathy metadata joined with local
images, the Hub's parquet copy of Flickr30k with its `split` column, VQAv2's official files and its Hub parquet copy.
The Hub copies are read from a local folder laid out as the Hub repository is, through the same `datasets` call."""

import json
import typing

import datasets
import pytest
from PIL import Image

from modeling_xattn.training.data.schema import BadRowCounter
from modeling_xattn.training.data.sources import SOURCES, load_split
from modeling_xattn.training.options import DataArguments, data_options


def write_jpeg(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), colour).save(path, quality=90)


def sentences(image_index, count=5):
    return [{"tokens": ["a", "photo", str(n)], "raw": f"A photo {image_index}, caption {n}.", "imgid": image_index,
             "sentid": 10 * image_index + n} for n in range(count)]


def test_the_sources_table_is_the_options_list():
    choices = typing.get_args(typing.get_type_hints(DataArguments)["dataset"])
    assert set(choices) == set(SOURCES) and all(source.needs for source in SOURCES.values())


def test_coco_karpathy_json(tmp_path):
    """dataset_coco.json: images with filepath ("train2014"/"val2014"), filename, cocoid, split (train, restval, val,
    test) and sentences of {tokens, raw, imgid, sentid}; COCO has images with more than five captions."""
    splits = ["train", "restval", "val", "test", "test"]
    images = []
    for index, split in enumerate(splits):
        folder = "train2014" if split == "train" else "val2014"
        name = f"COCO_{folder}_{100 + index:012d}.jpg"
        write_jpeg(tmp_path / "coco" / folder / name)
        images.append({"filepath": folder, "sentids": [10 * index + n for n in range(5)], "filename": name,
                       "imgid": index, "split": split, "sentences": sentences(index, 7 if index == 3 else 5),
                       "cocoid": 100 + index})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    options = data_options(dataset="karpathy", data_file=str(tmp_path / "dataset_coco.json"),
                           data_dir=str(tmp_path / "coco"))
    train, validation, test = (load_split(options, split) for split in ("train", "validation", "test"))
    assert (len(train), len(validation), len(test)) == (2, 1, 2)  # train + restval, val, test
    assert train[0]["image_id"] == "100" and train[0]["captions"][0] == "A photo 0, caption 0."
    assert test[0]["image"].endswith("val2014/COCO_val2014_000000000103.jpg") and len(test[0]["captions"]) == 7
    assert all(Image.open(row["image"]).size == (48, 40) for row in test)


def test_flickr30k_karpathy_json(tmp_path):
    """dataset_flickr30k.json: no filepath and no cocoid: filename in flickr30k-images/, imgid as the id."""
    images = []
    for index, split in enumerate(["train", "train", "val", "test"]):
        write_jpeg(tmp_path / "flickr30k-images" / f"{1000 + index}.jpg")
        images.append({"sentids": list(range(5 * index, 5 * index + 5)), "imgid": index, "sentences": sentences(index),
                       "split": split, "filename": f"{1000 + index}.jpg"})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    options = data_options(dataset="karpathy", data_file=str(tmp_path / "dataset_flickr30k.json"),
                           data_dir=str(tmp_path / "flickr30k-images"))
    train, test = load_split(options, "train"), load_split(options, "test")
    assert len(train) == 2 and test[0]["image_id"] == "3" and len(test[0]["captions"]) == 5
    assert test[0]["image"] == str(tmp_path / "flickr30k-images" / "1003.jpg")


def test_coco_karpathy_hub_metadata_joined_with_local_images(tmp_path):
    """yerevann/coco-karpathy (its parquet conversion, refs/convert/parquet: default/{train,restval,validation,test}/
    0000.parquet): filepath, sentids, filename, imgid, split, sentences (the raw captions), cocoid, url; no image
    column. The images come from --image_root; training reads train and restval."""
    repo = tmp_path / "coco-karpathy"
    for hub_split, count in (("train", 2), ("restval", 1), ("validation", 1), ("test", 1)):
        rows = []
        for n in range(count):
            index = n + {"train": 0, "restval": 5, "validation": 10, "test": 20}[hub_split]
            folder = "train2014" if hub_split == "train" else "val2014"
            name = f"COCO_{folder}_{index:012d}.jpg"
            write_jpeg(tmp_path / "coco" / folder / name)
            rows.append({"filepath": folder, "sentids": [5 * index + k for k in range(5)], "filename": name,
                         "imgid": index, "split": {"validation": "val"}.get(hub_split, hub_split),
                         "sentences": [f"photo {index} caption {k}" for k in range(5)], "cocoid": index,
                         "url": f"http://images.cocodataset.org/{folder}/{name}"})
        (repo / "default" / hub_split).mkdir(parents=True)
        datasets.Dataset.from_list(rows).to_parquet(str(repo / "default" / hub_split / "0000.parquet"))
    options = data_options(dataset="karpathy_hub", dataset_name=str(repo), image_root=str(tmp_path / "coco"))
    train, validation = load_split(options, "train"), load_split(options, "validation")
    assert len(train) == 3 and set(train["image_id"]) == {"0", "1", "5"}  # train + restval
    assert len(validation) == 1
    assert validation[0]["image"] == str(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000010.jpg")
    assert validation[0]["captions"] == [f"photo 10 caption {k}" for k in range(5)]
    assert Image.open(validation[0]["image"]).size == (48, 40)
    with pytest.raises(ValueError, match="give --image_root"):
        load_split(data_options(dataset="karpathy_hub", dataset_name=str(repo)), "train")


def test_flickr30k_hub_parquet_copy_honours_its_split_column(tmp_path):
    """nlphuji/flickr30k's parquet copy (refs/convert/parquet, TEST/test/0000.parquet): one `test` split of every
    photo, with image, caption (the five), sentids, split (train/val/test), img_id, filename."""
    repo = tmp_path / "flickr30k"
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string")),
                                  "sentids": datasets.Sequence(datasets.Value("string")),
                                  "split": datasets.Value("string"), "img_id": datasets.Value("string"),
                                  "filename": datasets.Value("string")})
    rows = []
    for index, split in enumerate(["train", "train", "train", "val", "test", "test"]):
        write_jpeg(tmp_path / "jpg" / f"{index}.jpg", colour=(20 * index, 80, 160))
        rows.append({"image": str(tmp_path / "jpg" / f"{index}.jpg"),
                     "caption": [f"photo {index} caption {k}" for k in range(5)],
                     "sentids": [str(5 * index + k) for k in range(5)], "split": split, "img_id": str(index),
                     "filename": f"{index}.jpg"})
    (repo / "TEST" / "test").mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(repo / "TEST" / "test" / "0000.parquet"))
    options = data_options(dataset="flickr30k_hub", dataset_name=str(repo))
    train, validation, test = (load_split(options, split) for split in ("train", "validation", "test"))
    assert (len(train), len(validation), len(test)) == (3, 1, 2)  # not every row three times
    assert set(test["image_id"]) == {"4", "5"} and test[0]["captions"][0] == "photo 4 caption 0"
    assert isinstance(test.features["image"], datasets.Image)


def vqa_files(root, subtype, count, image_ids):
    """The official VQAv2 files of one split: questions, annotations (ten answers each) and the images."""
    root.mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for n in range(count):
        image_id = image_ids[n % len(image_ids)]
        question_id = image_id * 1000 + n
        questions.append({"image_id": image_id, "question": f"what colour is thing {n}?", "question_id": question_id})
        answers = ["red"] * 6 + ["Red."] * 2 + ["dark red", "two"]
        annotations.append({"question_type": "what color is the", "multiple_choice_answer": "red",
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                        for k, a in enumerate(answers)],
                            "image_id": image_id, "answer_type": "other", "question_id": question_id})
    info = {"description": "fixture", "version": "2.0"}
    (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(json.dumps(
        {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": subtype,
         "questions": questions}))
    (root / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps(
        {"info": info, "license": {}, "data_subtype": subtype, "annotations": annotations}))
    for image_id in image_ids:
        write_jpeg(root / subtype / f"COCO_{subtype}_{image_id:012d}.jpg")


def test_vqav2_official_files(tmp_path):
    vqa_files(tmp_path, "train2014", 6, [9, 25])
    vqa_files(tmp_path, "val2014", 4, [42, 73])
    options = data_options(dataset="vqa", data_dir=str(tmp_path))
    train, validation = load_split(options, "train"), load_split(options, "validation")
    assert len(train) == 6 and len(validation) == 4  # every question (a missing image is the collator's to count)
    row = validation[0]
    assert row["image"].endswith("val2014/COCO_val2014_000000000042.jpg") and row["question_id"] == "42000"
    assert len(row["answers"]) == 10 and row["question"] == "what colour is thing 0?"
    assert row["answer_type"] == "other"
    with pytest.raises(ValueError, match=r"has no 'test' split; it has \['train', 'validation'\]"):
        load_split(options, "test")
    # the test-dev questions (no annotations), their photos in test2015/
    questions = [{"image_id": 7, "question": "is it red?", "question_id": 7001}]
    (tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(
        {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "test-dev2015",
         "questions": questions}))
    test = load_split(options, "test")
    assert len(test) == 1 and test[0]["answers"] == [] and test[0]["image"].endswith(
        "test2015/COCO_test2015_000000000007.jpg")


def test_vqav2_hub_parquet_copy(tmp_path):
    """lmms-lab/VQAv2: question_type, multiple_choice_answer, answers [{answer, answer_confidence, answer_id}],
    image_id, answer_type, question_id, question, image; a validation split."""
    repo = tmp_path / "VQAv2"
    rows = []
    for n in range(3):
        write_jpeg(tmp_path / "jpg" / f"{n}.jpg")
        rows.append({"question_type": "what color", "multiple_choice_answer": "red",
                     "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
                     "image_id": 42 + n, "answer_type": "other", "question_id": 42000 + n,
                     "question": f"what colour is thing {n}?", "image": str(tmp_path / "jpg" / f"{n}.jpg")})
    features = datasets.Features({
        "question_type": datasets.Value("string"), "multiple_choice_answer": datasets.Value("string"),
        "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                     "answer_id": datasets.Value("int64")}],
        "image_id": datasets.Value("int64"), "answer_type": datasets.Value("string"),
        "question_id": datasets.Value("int64"), "question": datasets.Value("string"), "image": datasets.Image()})
    (repo / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(
        str(repo / "data" / "validation-00000-of-00001.parquet"))
    validation = load_split(data_options(dataset="vqa_hub", dataset_name=str(repo)), "validation")
    assert len(validation) == 3 and str(validation[1]["question_id"]) == "42001"
    assert validation[1]["answers"][0] == "red" and validation[1]["answer_type"] == "other"
    assert validation[0]["question"] == "what colour is thing 0?" and validation[0]["image_id"] == "42"
