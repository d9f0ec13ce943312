"""The model card as the Hub reads it (huggingface_hub's `ModelCard`): valid Hub ids for the towers and the data, a
real pipeline tag, the model-index of the evaluation; the template ships in the wheel, which writes the same card."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script, slow
from huggingface_hub import ModelCard

from modeling_xattn.training.data.sources import dataset_identity
from modeling_xattn.training.options import data_options, parse_training_options
from modeling_xattn.training.publishing import MODEL_CARD_TEMPLATE, build_card, card_metadata
from modeling_xattn.training.tasks import pipeline_tag
from modeling_xattn.training.towers import DENSENET121_HUB_ID, hub_base_models

REPO = Path(__file__).resolve().parents[1]
evaluate = load_script("evaluate")
export_densenet = load_script("export_densenet")
DATA = ["--synthetic_samples", "60", "--synthetic_test_samples", "12"]


@pytest.fixture(scope="module")
def evaluated(trained_copy):
    folder = trained_copy
    evaluate.main(["--model", str(folder), *DATA, "--split", "test", "--no_progress", "--no_java", "--top_k", "0",
                   "--num_beams", "1", "--max_new_tokens", "4"])
    return folder


def test_the_card_of_an_evaluated_model_loads_with_its_model_index(evaluated):
    results = json.loads((evaluated / "eval_results.json").read_text())
    (evaluated / "card.md").write_text(build_card(evaluated, "user/xattn-tiny", results))
    card = ModelCard.load(evaluated / "card.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-to-text" and data.license == "apache-2.0"
    assert data.base_model is None and data.datasets is None  # towers from scratch, the embedded dataset
    entries = {(entry.task_type, entry.metric_name): entry for entry in data.eval_results}
    assert entries[("image-to-text", "CIDEr")].metric_value == round(results["results"]["captioning"]["CIDEr"], 4)
    assert ("visual-question-answering", "accuracy") in entries  # the image-statement classifier
    assert entries[("zero-shot-image-classification", "i2t_R@1")].dataset_split == "test"
    assert all(entry.dataset_type == "synthetic" for entry in data.eval_results)
    names = {entry.metric_name for entry in data.eval_results}
    assert names <= {"accuracy", "macro_f1", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10",
                     "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}  # no timings, k or counts
    assert all(re.fullmatch(r"[a-z0-9_]+", entry.metric_type) for entry in data.eval_results)
    assert "user/xattn-tiny" in card.text and "$" not in card.text.split("```")[0]


def test_the_cards_code_runs_as_written(evaluated, tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (80, 60), (30, 120, 200)).save(tmp_path / "photo.jpg")
    text = build_card(evaluated, str(evaluated))
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2 and "generate" in blocks[0] and "image-text-classification" in blocks[1]
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block.replace('revision="<commit>"', "revision=None"), "card", "exec"), {})


def test_hub_ids_for_the_towers_and_the_data(tmp_path):
    export_densenet.main(["--weights", "random", "--output", str(tmp_path / "random.safetensors")])
    (tmp_path / "albert").mkdir()
    options = parse_training_options(["--recipe", "finetune"])
    assert hub_base_models(options) == ["albert/albert-base-v2", DENSENET121_HUB_ID]
    local = parse_training_options(["--text_backbone", str(tmp_path / "albert"), "--vision_backbone",
                                    str(tmp_path / "random.safetensors")])
    assert hub_base_models(local) == []  # a local folder and random weights name no Hub model
    karpathy_hub = dataset_identity(data_options(dataset="karpathy_hub"))
    assert karpathy_hub == {"dataset_id": "yerevann/coco-karpathy", "dataset_hub_id": "yerevann/coco-karpathy",
                            "dataset_title": "COCO Karpathy"}
    local_json = dataset_identity(data_options(dataset="karpathy", data_file="dataset_flickr30k.json"))
    assert local_json["dataset_hub_id"] == "nlphuji/flickr30k" and local_json["dataset_title"] == "Flickr30k Karpathy"
    assert dataset_identity(data_options(dataset="vqa"))["dataset_hub_id"] == "HuggingFaceM4/VQAv2"
    assert dataset_identity(data_options(dataset="imagefolder", data_dir="photos"))["dataset_hub_id"] is None
    metadata = card_metadata({"hub_base_models": hub_base_models(options), "hub_datasets": ["yerevann/coco-karpathy"],
                              "tasks": "retrieval,captioning"}, "x")
    assert metadata.base_model == ["albert/albert-base-v2", DENSENET121_HUB_ID]
    assert metadata.datasets == ["yerevann/coco-karpathy"] and metadata.pipeline_tag == "image-to-text"
    assert pipeline_tag("vqa") == "visual-question-answering" and pipeline_tag("retrieval") == \
        "zero-shot-image-classification"


def test_a_local_albert_base_v2_folder_is_named_by_its_hub_id(tmp_path):
    """The folder `hf download albert/albert-base-v2 --local-dir` writes records no Hub id: its published
    configuration and 30,000-piece vocabulary name it; another folder (a trained tokenizer, another shape) is not."""
    from test_finetune import ALBERT_BASE_V2
    from transformers import AlbertTokenizer

    folder = tmp_path / "albert-base-v2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(ALBERT_BASE_V2))
    vocab = [(token, 0.0) for token in ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")]
    vocab += [(f"\u2581w{i}", -float(i)) for i in range(30000 - len(vocab))]
    AlbertTokenizer(vocab=vocab).save_pretrained(folder)
    options = parse_training_options(["--text_backbone", str(folder)])
    assert hub_base_models(options) == ["albert/albert-base-v2"]
    (folder / "config.json").write_text(json.dumps({**ALBERT_BASE_V2, "hidden_size": 1024}))
    assert hub_base_models(options) == []


@slow
def test_an_installed_wheel_writes_the_same_card(evaluated, tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "wheel"), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                              str(tmp_path / "site"), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    code = ("import sys; from modeling_xattn.training import publishing as p; "
            "assert p.__file__.startswith(sys.argv[2]), p.__file__; print(p.build_card(sys.argv[1], 'user/x'), end='')")
    child = subprocess.run([sys.executable, "-c", code, str(evaluated), str(tmp_path / "site")], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout == build_card(evaluated, "user/x")
    assert (REPO / "model_card.md").resolve() == MODEL_CARD_TEMPLATE  # the checkout's top-level file is the template
