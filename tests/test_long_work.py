"""Long work on a small machine: progress bars with estimates, the default shortlist that fits a time budget, results
kept as files, no trained model replaced by surprise, the summary a run ends with, the curves' axes."""

import hashlib
import json
import shutil

import pytest
from conftest import TINY_DATA, TINY_RUN, load_script

from modeling_xattn.training.data.synthetic import synthetic_dataset
from modeling_xattn.training.evaluation import PREDICTION_FILES, evaluate_model, image_id
from modeling_xattn.training.inference import SHORTLIST_SIZES, choose_shortlist, load_model, rerank_pairs
from modeling_xattn.training.plots import curve_panels, plot_ablation_curves

train = load_script("train")
evaluation = load_script("evaluate")
DATA, TINY = TINY_DATA, TINY_RUN


@pytest.fixture(scope="module")
def trained(trained_copy):
    return trained_copy


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- progress and k


def test_every_long_step_shows_a_bar_and_the_estimate_comes_first(trained, capsys):
    model, processor = load_model(str(trained))
    rows = synthetic_dataset(6, seed=3)
    results = evaluate_model(model, processor, rows, num_beams=1, max_new_tokens=4, java=False, progress=True,
                             top_k="auto")
    captured = capsys.readouterr()
    for bar in ("captioning", "caption metrics", "retrieval: reading photos", "encoding images", "encoding texts",
                "re-ranking i2t", "re-ranking t2i"):
        assert f"{bar}: 100%" in captured.err, bar  # each bar ran to its end, with its rate and time left
    assert "pair/s" in captured.err and "<00:00" in captured.err
    estimate = captured.out.index("two-stage retrieval: k=")
    assert "pairs/s measured" in captured.out[estimate:]
    retrieval = results["retrieval"]
    assert retrieval["top_k_rule"].startswith("auto") and retrieval["top_k"] in SHORTLIST_SIZES
    assert retrieval["i2t_pairs_per_second"] > 0 and retrieval["t2i_pairs_per_second"] > 0
    assert retrieval["i2t_pair_evaluations"] == 6 * min(retrieval["top_k"], 30)


def test_quiet_evaluation_prints_nothing(trained, capsys):
    model, processor = load_model(str(trained))
    rows = synthetic_dataset(4, seed=3)
    capsys.readouterr()  # transformers' own weight-loading bar
    evaluate_model(model, processor, rows, ("retrieval",), progress=False, top_k=2)
    captured = capsys.readouterr()
    assert captured.out == "" and "%|" not in captured.err


def test_default_shortlist_is_the_largest_that_fits_the_budget():
    # 1,000 photos x 5,000 captions: k pairs per query in each direction, 6,000 k pairs in all
    assert rerank_pairs(1000, 5000, 16) == 96_000
    assert rerank_pairs(4, 20, 128) == 4 * 20 + 20 * 4  # a shortlist never exceeds the gallery
    assert rerank_pairs(1000, 5000, {"i2t": 64, "t2i": 16}) == 64_000 + 80_000
    assert choose_shortlist(1000, 5000, pairs_per_second=10_000, budget_seconds=90) == 128  # a GPU's rate
    assert choose_shortlist(1000, 5000, pairs_per_second=1_500, budget_seconds=90) == 16  # 22.5 affordable
    assert choose_shortlist(1000, 5000, pairs_per_second=1_000, budget_seconds=90) == 8
    assert choose_shortlist(1000, 5000, pairs_per_second=10, budget_seconds=90) == 0  # the embeddings alone
    for rate in (37.0, 900.0, 4_000.0, 55_000.0):
        k = choose_shortlist(1000, 5000, rate, 90)
        assert rerank_pairs(1000, 5000, k) / rate <= 90
        larger = [s for s in SHORTLIST_SIZES if s > k]
        assert not larger or rerank_pairs(1000, 5000, min(larger)) / rate > 90


# --------------------------------------------------------------------------------------------- results as files


def test_evaluation_writes_its_predictions_as_files(trained, tmp_path):
    out = tmp_path / "eval"
    payload = evaluation.main(["--model", str(trained), "--split", "test", "--no_progress", "--num_beams", "1",
                               "--max_new_tokens", "5", "--no_java", "--output_dir", str(out), *DATA])
    captions = json.loads((out / PREDICTION_FILES["captions"]).read_text())
    references = json.loads((out / PREDICTION_FILES["references"]).read_text())
    ranked = json.loads((out / PREDICTION_FILES["retrieval"]).read_text())
    photos = 12
    assert len(captions) == photos and all(set(c) == {"image_id", "caption"} for c in captions)
    ids = [c["image_id"] for c in captions]
    assert len(set(ids)) == photos and [image["id"] for image in references["images"]] == ids
    assert {a["image_id"] for a in references["annotations"]} == set(ids) and len(references["annotations"]) == 60
    assert len(ranked["i2t"]) == photos and len(ranked["t2i"]) == 60
    assert all(len(query["captions"]) == 10 and len(query["caption_image_ids"]) == 10 for query in ranked["i2t"])
    assert all(len(query["image_ids"]) == 10 and query["image_id"] in ids for query in ranked["t2i"])
    # the files reproduce the scores: R@1 from the lists, CIDEr from pycocoevalcap run on the files directly
    hits = [query["hit"] == 1 for query in ranked["i2t"]]
    assert 100 * sum(hits) / photos == pytest.approx(payload["results"]["retrieval"]["i2t_R@1"])
    from pycocoevalcap.cider.cider import Cider

    from modeling_xattn.training.metrics import _simple_tokenize

    gts = {i: [] for i in ids}
    for annotation in references["annotations"]:
        gts[annotation["image_id"]].append(_simple_tokenize(annotation["caption"]))
    res = {c["image_id"]: [_simple_tokenize(c["caption"])] for c in captions}
    cider, _ = Cider().compute_score(gts, res)
    assert cider == pytest.approx(payload["results"]["captioning"]["CIDEr"])


def test_results_files_keep_integer_ids_as_integers():
    # COCO's ids are integers: the captions file then matches COCO's own annotation files
    assert image_id({"image_id": "16439"}, 0) == 16439
    assert image_id({"image_id": "2090545563_a4e66ec76b"}, 0) == "2090545563_a4e66ec76b"
    assert image_id({"image_id": None}, 3) == 3


def test_an_evaluation_replaces_only_its_own_results(trained, tmp_path):
    out = tmp_path / "eval"
    common = ["--no_progress", "--split", "test", "--num_beams", "1", "--max_new_tokens", "4", "--no_java",
              "--output_dir", str(out), *DATA]
    evaluation.main(["--model", str(trained)] + common)
    # every task's files (a VQA model's vqa_results.json: tests/test_vqa.py)
    assert all((out / PREDICTION_FILES[key]).exists() for key in ("captions", "references", "retrieval"))
    assert not (out / PREDICTION_FILES["vqa_results"]).exists()
    other = tmp_path / "other-model"
    shutil.copytree(trained, other)
    with pytest.raises(SystemExit, match="another evaluation.*model"):
        evaluation.main(["--model", str(other)] + common)
    # the same model again, fewer tasks: the files of the tasks not evaluated now go, the others are rewritten
    evaluation.main(["--model", str(trained), "--tasks", "captioning"] + common)
    assert (out / PREDICTION_FILES["captions"]).exists() and not (out / PREDICTION_FILES["retrieval"]).exists()


def test_evaluation_keeps_another_splits_results(trained, tmp_path):
    out = tmp_path / "eval"
    common = ["--model", str(trained), "--no_progress", "--tasks", "classification", "--output_dir", str(out), *DATA]
    evaluation.main(common + ["--split", "test"])
    before = digest(out / "eval_results.json")
    with pytest.raises(SystemExit, match="another evaluation.*--output_dir.*--overwrite_output_dir"):
        evaluation.main(common + ["--split", "validation"])
    assert digest(out / "eval_results.json") == before
    evaluation.main(common + ["--split", "test"])  # the same split again brings its results up to date
    evaluation.main(common + ["--split", "validation", "--overwrite_output_dir"])
    assert json.loads((out / "eval_results.json").read_text())["split"] == "validation"


# --------------------------------------------------------------------------------------------- overwriting


def test_training_never_replaces_a_model_by_surprise(trained, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    before = digest(folder / "model.safetensors")
    with pytest.raises(SystemExit, match="already holds a trained model.*--resume_from_checkpoint latest.*"
                                         "--overwrite_output_dir"):
        train.main(TINY + ["--output_dir", str(folder), "--seed", "7"])
    assert digest(folder / "model.safetensors") == before
    # starting over clears the old checkpoints, so that `latest` is the new run's; the old weights' evaluation is
    # set aside, so that neither the folder nor a push shows it as the new model's
    (folder / "checkpoints" / "step_999").mkdir(parents=True)
    (folder / "eval_results.json").write_text('{"results": "of the old weights"}')
    train.main(TINY + ["--output_dir", str(folder), "--seed", "7", "--overwrite_output_dir"])
    assert digest(folder / "model.safetensors") != before
    assert not (folder / "checkpoints" / "step_999").exists()
    assert not (folder / "eval_results.json").exists()
    assert "old weights" in (folder / "earlier_evaluation" / "eval_results.json").read_text()
    # continuing is resuming: allowed without the flag
    result = train.main(TINY + ["--output_dir", str(folder), "--max_steps", "3", "--resume_from_checkpoint",
                                "latest"])
    assert result["global_step"] == 3


def test_a_run_ends_by_saying_what_it_made(tmp_path, capsys):
    folder = tmp_path / "model"
    train.main(TINY + ["--output_dir", str(folder)])
    out = capsys.readouterr().out
    summary = out[out.index("done: 2 steps"):]
    assert str(folder) in summary.splitlines()[0]
    assert "final validation:" in summary and "loss" in summary
    assert f"python scripts/evaluate.py --model {folder}" in summary
    assert f'pipeline("image-to-text", model="{folder}"' in summary
    assert f"python scripts/demo.py --model {folder}" in summary


def test_the_summary_names_the_pipeline_that_serves_the_trained_tasks():
    from types import SimpleNamespace

    from modeling_xattn.training.publishing import run_summary

    args = SimpleNamespace(output_dir="out", report_to="none", logging_dir=None)
    done = {"global_step": 1, "metrics": {}}
    expected = {("retrieval", "captioning"): "image-to-text", ("vqa",): "image-text-classification",
                ("classification", "retrieval"): "image-text-classification",
                ("retrieval",): "zero-shot-image-classification"}
    for tasks, pipeline in expected.items():
        assert f'pipeline("{pipeline}", model="out"' in run_summary(args, done, set(tasks)), tasks
    assert "candidate_labels=" in run_summary(args, done, {"retrieval"})


def test_tracker_logs_go_to_runs_beside_the_model(tmp_path):
    folder = tmp_path / "model"
    train.main(TINY[:-3] + ["--output_dir", str(folder)])  # with the default tracker (tensorboard)
    events = list((folder / "runs").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard events under runs/"
    assert not [p for p in folder.rglob("events.out.tfevents.*") if "runs" not in p.relative_to(folder).parts]


def test_curves_put_ranks_on_their_own_axis():
    history = [{"step": 1, "train_loss": 2.0, "lr": 1e-3, "val_i2t_R@10": 40.0, "val_i2t_mean_rank": 90.0,
                "val_i2t_median_rank": 30.0, "val_accuracy": 0.8, "train_samples_per_s": 120.0}]
    panels = dict((title, keys) for keys, title in curve_panels(history))
    metrics = panels["validation metrics"]
    ranks = panels["validation ranks (lower is better)"]
    assert set(ranks) == {"val_i2t_mean_rank", "val_i2t_median_rank"}
    assert set(metrics) == {"val_i2t_R@10", "val_accuracy"}
    assert panels["training samples/s"] == ["train_samples_per_s"]


def test_ablation_curves_draw_validation_metrics_and_gates_of_every_run(tmp_path):
    run = [{"step": 10, "train_loss": 2.0, "val_loss": 1.5, "gate_text_from_image_0": 0.0},
           {"step": 20, "train_loss": 1.8, "val_loss": 1.2, "val_i2t_R@10": 5.0, "gate_text_from_image_0": 0.1}]
    path = tmp_path / "curves.png"
    drawn = plot_ablation_curves({"full model": [(0, run), (1, run)], "w/o CBAM": [(0, run[:1])]}, str(path))
    assert drawn == ["gate_text_from_image_0", "val_i2t_R@10", "val_loss"]  # training losses are not compared
    assert path.stat().st_size > 1000
    assert plot_ablation_curves({"full model": [(0, run)]}, str(path), metrics=["val_loss", "val_CIDEr"]) == ["val_loss"]
    assert plot_ablation_curves({"full model": [(0, [{"step": 1, "train_loss": 2.0}])]}, str(tmp_path / "no.png")) == []
    assert not (tmp_path / "no.png").exists()


def test_ablation_keeps_finished_configurations(tmp_path, capsys):
    ablation = load_script("ablation")
    own = ["--max_steps", "2", "--configurations", "full model", "--test_samples", "8", "--tasks", "classification",
           "--no_progress", "--no_java", "--top_k", "0", "--output_dir", str(tmp_path)]
    training = ["--", "--synthetic_samples", "60", "--vocab_size", "120", "--batch_size", "8"]
    first = ablation.main(own + training)
    weights = tmp_path / "full_model-seed0" / "model.safetensors"
    before = digest(weights)
    assert ablation.main(own + training) == first
    assert "kept the finished run" in capsys.readouterr().out
    assert digest(weights) == before
    ablation.main(own + ["--overwrite_output_dir"] + training)
    assert "kept the finished run" not in capsys.readouterr().out
