"""evaluate.py, ablation.py, visualize.py and predict.py on a tiny model trained for a few steps."""

import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_SAMPLE, load_script, slow
from modeling_xattn.training.gallery import encode_gallery_images, encode_gallery_texts, pair_scores, rank

ablation = load_script("ablation")
evaluation = load_script("evaluate")
predict = load_script("predict")
visualize = load_script("visualize")

DATA = ["--synthetic_samples", "80", "--synthetic_test_samples", "24"]


@pytest.fixture(scope="module")
def trained(trained_copy):
    return trained_copy


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from modeling_xattn.training.data.synthetic import synthetic_dataset

    folder = tmp_path_factory.mktemp("images")
    for i, row in enumerate(synthetic_dataset(5, seed=9)):
        row["image"].save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


@slow
def test_evaluate_writes_json_and_markdown(trained, tmp_path):
    payload = evaluation.main(["--model", str(trained), "--split", "test", "--no_progress", "--output_dir",
                               str(tmp_path), "--num_beams", "2", "--max_new_tokens", "8", "--top_k", "5", *DATA])
    results = payload["results"]
    assert set(results) == {"classification", "captioning", "retrieval"}
    assert {"accuracy", "macro_f1"} <= set(results["classification"])
    assert {"BLEU-4", "CIDEr", "ROUGE-L"} <= set(results["captioning"])
    assert results["retrieval"]["i2t_pair_evaluations"] == 24 * 5  # k=5 shortlist per image
    assert results["retrieval"]["t2i_pair_evaluations"] == 24 * 5 * 5  # 5 captions per image, k=5
    assert results["retrieval"]["rerank_score"] == "itm+similarity" and results["retrieval"]["itm_pairs"] == 2 * 24
    assert 0.0 <= results["retrieval"]["itm_auc"] <= 1.0 and 0.0 <= results["retrieval"]["itm_accuracy"] <= 100.0
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved["results"] == json.loads(json.dumps(results))
    assert "| retrieval | i2t_R@1 |" in (tmp_path / "eval_results.md").read_text()


def test_shortlist_size_per_direction(trained):
    payload = evaluation.main(["--model", str(trained), "--split", "test", "--no_progress", "--tasks", "retrieval",
                               "--top_k", "i2t=3,t2i=2", *DATA])
    retrieval = payload["results"]["retrieval"]
    assert retrieval["i2t_pair_evaluations"] == 24 * 3 and retrieval["t2i_pair_evaluations"] == 24 * 5 * 2
    with pytest.raises(SystemExit):
        evaluation.main(["--model", str(trained), "--top_k", "i2t=3", *DATA])


def test_two_stage_equals_exhaustive_when_k_covers_the_gallery(trained):
    from modeling_xattn.training.inference import load_model
    from modeling_xattn.training.metrics import recall_at_1_by_k
    from modeling_xattn.training.metrics import retrieval_metrics

    model, processor = load_model(str(trained))
    from modeling_xattn.training.data.synthetic import synthetic_dataset

    data = synthetic_dataset(6, seed=5)
    batch = processor(images=list(data["image"]), captions=[c for cs in data["captions"] for c in cs])
    images = encode_gallery_images(model, batch["pixel_values"], batch_size=4)
    texts = encode_gallery_texts(model, batch["caption_input_ids"], batch["caption_attention_mask"], batch_size=5)
    for direction in ("i2t", "t2i"):
        exhaustive, pairs = rank(model, images, texts, direction=direction, exhaustive=True)
        covered, covered_pairs = rank(model, images, texts, direction=direction, k=30)
        assert pairs == covered_pairs == 6 * 30
        assert torch.equal(exhaustive, covered)
        short, short_pairs = rank(model, images, texts, direction=direction, k=2)
        assert short_pairs == 2 * (6 if direction == "i2t" else 30)
        # the re-ranked pairs score as they do in the exhaustive matrix
        reranked = short > -5e3
        assert int(reranked.sum()) == short_pairs
        torch.testing.assert_close(short[reranked], exhaustive[reranked], rtol=1e-5, atol=1e-5)
        # R@1 for each smaller k, read off one longer ranking, is what ranking with that k gives
        owner = torch.arange(6).repeat_interleave(5)
        similarity = model.retrieval.similarity(images[1], texts[2])
        curve = recall_at_1_by_k(exhaustive, similarity, owner, direction, ks=(1, 2, 4))
        for k, value in curve.items():
            ranked, _ = rank(model, images, texts, direction=direction, k=k)
            assert value == retrieval_metrics(ranked, owner, ks=(1,))[f"{direction}_R@1"]
        embeddings_only, none_scored = rank(model, images, texts, direction=direction, k=0)  # evaluate --top_k 0
        assert none_scored == 0
        similarity = model.retrieval.similarity(images[1], texts[2])
        torch.testing.assert_close(embeddings_only, similarity - 1e4)
    # the first fusion layer's projections, computed once per image and caption and gathered per pair, in image
    # order, give the scores of projecting every pair afresh (pairs given out of order, in uneven batches)
    pairs = torch.randperm(6 * 30, generator=torch.Generator().manual_seed(0))[:50]
    image_index, text_index = pairs // 30, pairs % 30
    reused = pair_scores(model, images[0], texts[0], texts[1], image_index, text_index, batch_size=7, reuse=True)
    afresh = pair_scores(model, images[0], texts[0], texts[1], image_index, text_index, batch_size=7, reuse=False)
    torch.testing.assert_close(reused, afresh, rtol=1e-5, atol=1e-5)
    assert reused.std() > 0  # fifty different pairs, not one score repeated
    # batched gallery encoding equals one big batch
    one = encode_gallery_images(model, batch["pixel_values"], batch_size=64)
    torch.testing.assert_close(images[1], one[1])


@slow
def test_ablation_runs_every_configuration(tmp_path):
    summary = ablation.main(["--output_dir", str(tmp_path), "--max_steps", "2", "--test_samples", "12",
                             "--num_beams", "1", "--no_progress", "--synthetic_samples", "80", "--",
                             "--batch_size", "8", "--vocab_size", "150"])
    assert set(summary) == set(ablation.CONFIGURATIONS)
    assert "accuracy" in summary["text features only"] and "CIDEr" not in summary["text features only"]
    assert "i→t R@1" not in summary["visual features only"] and "t→i R@1" in summary["full model"] and "CIDEr" in summary["visual features only"]
    table = (tmp_path / "ablation.md").read_text()
    assert table.count("\n|") >= 6 and (tmp_path / "ablation.png").stat().st_size > 1000
    assert (tmp_path / "ablation_curves.png").stat().st_size > 1000  # a panel per validation metric, a line per run


def test_visualize_renders_a_grid(trained, images, tmp_path, capsys):
    out = visualize.main(["--model", str(trained), "--image", str(images / "0.png"), "--text",
                          "there is a red shape and a blue shape", "--output", str(tmp_path / "attention.png")])
    layers = json.loads((trained / "config.json").read_text())["num_fusion_layers"]
    assert f"{layers} layers x" in capsys.readouterr().out and Path(out).exists()


def test_a_known_attention_map_is_drawn_where_it_attends(tmp_path):
    """One word attending only to the top-left region of an 8x8 grid: in the rendered picture that word's panel is
    red at its top-left and blue at its bottom-right (jet colour map), on a grey photo."""
    import numpy as np
    from PIL import Image

    from modeling_xattn.training.apps.visualize import overlay, render

    grid = torch.zeros(8, 8)
    grid[0, 0] = 1.0
    grey = np.full((224, 224, 3), 128, dtype=np.uint8)
    blended = overlay(grey, grid).astype(int)
    assert blended[5, 5, 0] > blended[5, 5, 2] + 60 and blended[-5, -5, 2] > blended[-5, -5, 0] + 60

    maps = torch.zeros(1, 3, 8, 8)  # (layers, tokens, grid, grid): [CLS] dog [SEP]
    maps[0, 1] = grid
    path = render(Image.fromarray(grey), ["[CLS]", "▁dog", "[SEP]"], maps, None, str(tmp_path / "a.png"))
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    height, width, _ = picture.shape
    panel = picture[height // 2:, width // 2:]  # layer 1 x the word "dog": the bottom-right cell of a 2x2 grid
    drawn = np.abs(panel - 255).sum(-1) > 30  # not the white background
    rows, columns = drawn.sum(1), drawn.sum(0)  # the heatmap's rows and columns are mostly drawn; the title's not
    rows, columns = np.flatnonzero(rows > rows.max() / 2), np.flatnonzero(columns > columns.max() / 2)
    top, bottom, left, right = rows.min(), rows.max(), columns.min(), columns.max()
    inset = (bottom - top) // 40  # well inside the first of the 8x8 regions
    top_left, bottom_right = panel[top + inset, left + inset], panel[bottom - inset, right - inset]
    assert top_left[0] > top_left[2] + 60, top_left  # red where the word attends
    assert bottom_right[2] > bottom_right[0] + 60, bottom_right  # blue elsewhere


@pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason="shared COCO sample not present (a user's clone has none)")
def test_visualize_on_a_real_photo(trained, tmp_path):
    photo = sorted(SHARED_SAMPLE.glob("*.jpg"))[0]
    out = visualize.main(["--model", str(trained), "--image", str(photo), "--text", "a laptop on a desk",
                          "--output", str(tmp_path / "photo.png")])
    assert Path(out).stat().st_size > 10_000


def test_predict_every_command(trained, images, capsys):
    model = ["--model", str(trained)]
    captions = predict.main(["caption", *model, "--images", str(images), "--num_beams", "2", "--max_new_tokens", "5"])
    assert len(captions) == 5 and all(isinstance(r["caption"], str) for r in captions)
    assert "skipped" in capsys.readouterr().err  # the broken file is reported, not fatal
    classified = predict.main(["classify", *model, "--images", str(images / "0.png"), "--text", "there is a red shape and a blue shape"])
    assert set(classified[0]["probabilities"]) == {"positive", "neutral", "negative"}
    assert sum(classified[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    capsys.readouterr()
    ranked = predict.main(["rank-images", *model, "--images", str(images), "--text", "a red circle", "--top_k", "3"])
    assert len(ranked) == 3 and ranked[0]["score"] >= ranked[-1]["score"]
    capsys.readouterr()
    options = predict.main(["rank-captions", *model, "--images", str(images / "1.png"), "--captions", "a red circle",
                            "a blue square", "a green cross", "--json"])
    assert len(options[0]["captions"]) == 3
    assert json.loads(capsys.readouterr().out)["command"] == "rank-captions"


@slow
def test_readme_evaluation_from_python_runs_as_written(trained, tmp_path, monkeypatch, capsys):
    """The notebook evaluation of docs/evaluation.md, on an imagefolder of labelled, captioned rows the test writes."""
    import re

    from modeling_xattn.training.data.synthetic import synthetic_dataset

    page = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text(encoding="utf-8")
    code = next(b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "evaluate_model(" in b)
    folder = tmp_path / "photos" / "validation"
    folder.mkdir(parents=True)
    with open(folder / "metadata.jsonl", "w") as metadata:
        for i, row in enumerate(synthetic_dataset(6, seed=11)):
            row["image"].save(folder / f"{i}.png")
            metadata.write(json.dumps({"file_name": f"{i}.png", "text": row["text"], "label": row["label"],
                                       "captions": list(row["captions"])}) + "\n")
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("outputs/xattn", str(trained)), "README.md", "exec"), {})
    table = capsys.readouterr().out
    for row in ("| classification | accuracy |", "| captioning | CIDEr |", "| retrieval | i2t_R@1 |"):
        assert row in table


def test_attention_maps_from_any_model_class(trained, images):
    from PIL import Image

    from modeling_xattn.training.apps.visualize import attention_maps
    from modeling_xattn.training.inference import load_model

    model, processor = load_model(str(trained))  # the multi-task model: its fused encoder gives the maps
    tokens, maps, cbam = attention_maps(model, processor, Image.open(images / "0.png"), "a red circle")
    assert maps.shape[:2] == (model.config.num_fusion_layers, len(tokens)) and cbam.shape == maps.shape[2:]


def test_ablation_passes_every_data_option_to_training():
    from modeling_xattn.training.apps.ablation import data_arguments, parse_args

    args, extra = parse_args(["--synthetic_colours", "3", "--synthetic_min_objects", "1", "--", "--model_size", "tiny"])
    passed = data_arguments(args)
    assert passed[passed.index("--synthetic_colours") + 1] == "3"
    assert passed[passed.index("--synthetic_min_objects") + 1] == "1" and extra == ["--model_size", "tiny"]
    assert "--synthetic_test_samples" not in passed


def test_a_missing_card_template_is_a_clear_error(trained, tmp_path):
    from modeling_xattn.training.publishing import build_card

    with pytest.raises(FileNotFoundError, match="model card template .* not found"):
        build_card(trained, "user/x", template=tmp_path / "absent.md")


def test_inference_commands_take_a_device(trained, images, tmp_path):
    """predict.py, visualize.py, evaluate.py and the demo take --device (default: CUDA where available)."""
    import torch

    from modeling_xattn.training.hub import inference_device

    model = ["--model", str(trained), "--device", "cpu"]
    assert len(predict.main(["caption", *model, "--images", str(images / "0.png"), "--max_new_tokens", "3"])) == 1
    visualize.main([*model, "--image", str(images / "0.png"), "--text", "a red circle", "--output",
                    str(tmp_path / "attention.png")])
    assert (tmp_path / "attention.png").exists()
    assert inference_device(None).type == ("cuda" if torch.cuda.is_available() else
                                           "mps" if torch.backends.mps.is_available() else "cpu")
    with pytest.raises(SystemExit, match="--device nowhere: not a device"):
        inference_device("nowhere")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: this machine has no such device"):
            predict.main(["caption", "--model", str(trained), "--images", str(images / "0.png"), "--device", "cuda"])
