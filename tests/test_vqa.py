"""VQA accuracy exactly as the official VQA evaluation computes it (GT-Vision-Lab/VQA vqaEval.py), on hand-worked
cases, and `evaluate.py --tasks vqa` on VQAv2's official files: the accuracy and the official results file."""

import json
import sys

import pytest
from conftest import load_script, slow
from test_sources import vqa_files, write_jpeg

from modeling_xattn.training.data.vqa import (
    accuracy_of_matches,
    answer_accuracies,
    normalize_answer,
    overall_accuracy,
    process_punctuation,
    vqa_accuracy,
)

train = load_script("train")
evaluate = load_script("evaluate")


def test_normalisation_of_a_predicted_answer():
    assert normalize_answer("  A Dog.\n") == "dog"  # articles, case, the final period, whitespace
    assert normalize_answer("two") == "2" and normalize_answer("None") == "0"  # number words
    assert normalize_answer("dont") == "don't" and normalize_answer("isnt it") == "isn't it"  # contractions
    assert normalize_answer("1,000") == "1000"  # a digit,digit comma: every mark is deleted, not spaced
    assert normalize_answer("black/white") == "black white"  # a mark between words becomes a space
    assert normalize_answer("black / white") == "black white"  # a mark beside a space is deleted
    assert normalize_answer("3.5") == "3.5"  # a period between digits stays
    assert process_punctuation("Red.") == "Red"  # (human answers get punctuation only: no lower case)


def test_accuracy_is_the_average_over_the_ten_choose_nine_subsets():
    # k of 10 annotators gave the answer: each left-out annotator who did not give it leaves k matches, each who did
    # leaves k - 1; acc = mean of min(1, matches / 3)
    assert [round(accuracy_of_matches(k), 6) for k in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert accuracy_of_matches(3) == pytest.approx((7 * 1 + 3 * (2 / 3)) / 10)
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("a cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("dog", ["cat"] * 3 + ["dog"] * 7) == 1.0
    assert vqa_accuracy("cow", ["cat"] * 3 + ["dog"] * 7) == 0.0


def test_human_answers_get_punctuation_only_and_only_when_they_disagree():
    answers = ["red"] * 6 + ["Red."] * 2 + ["dark red", "two"]
    assert vqa_accuracy("red", answers) == 1.0  # 6 exact matches; "Red." becomes "Red", which "red" does not match
    assert vqa_accuracy("Red", answers) == 1.0  # the prediction is lower-cased, the human answers are not
    assert vqa_accuracy("dark red", answers) == pytest.approx(0.3)
    assert vqa_accuracy("two", answers) == 0.0  # the prediction becomes "2"; the human "two" stays a word
    assert vqa_accuracy("yes.", ["yes"] * 10) == 1.0
    assert vqa_accuracy("dont", ["don't"] * 4 + ["no"] * 6) == 1.0
    assert vqa_accuracy("1,000", ["1000"] * 5 + ["1,000"] * 5) == 1.0  # both punctuation-processed to "1000"
    assert answer_accuracies(answers) == {"red": 1.0, "Red": pytest.approx(0.6), "dark red": pytest.approx(0.3),
                                          "two": pytest.approx(0.3)}
    assert overall_accuracy([1.0, 0.3, 0.9]) == 73.33
    # the human answers as given: not stripped (a trailing space or newline is another answer), not lower-cased
    assert vqa_accuracy("2", ["2", "2", "2 ", "two"] + ["3"] * 6) == pytest.approx(0.6)
    assert vqa_accuracy("red", ["red\n"] * 3 + ["blue"] * 7) == 0.0
    assert vqa_accuracy("yes", ["yes", "yes", " yes"] + ["no"] * 7) == pytest.approx(0.6)


def test_evaluate_vqa_on_the_official_files_writes_the_official_results_file(tmp_path):
    vqa_files(tmp_path / "vqa", "train2014", 40, [9, 25, 31, 47])
    vqa_files(tmp_path / "vqa", "val2014", 12, [42, 73])
    data = ["--dataset", "vqa", "--data_dir", str(tmp_path / "vqa")]
    model = tmp_path / "model"
    train.main([*data, "--tasks", "vqa", "--max_steps", "3", "--batch_size", "4", "--vocab_size", "120",
                "--report_to", "none", "--no_progress", "--output_dir", str(model)])
    payload = evaluate.main(["--model", str(model), *data, "--split", "validation", "--tasks", "vqa",
                             "--no_progress"])
    results = json.loads((model / "vqa_results.json").read_text())
    assert len(results) == 12 and all(isinstance(r["question_id"], int) for r in results)
    questions = json.loads((tmp_path / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    assert {r["question_id"] for r in results} == {q["question_id"] for q in questions["questions"]}
    annotations = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in json.loads(
        (tmp_path / "vqa" / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]}
    expected = overall_accuracy([vqa_accuracy(r["answer"], annotations[r["question_id"]]) for r in results])
    assert payload["results"]["vqa"]["vqa_accuracy"] == expected
    assert payload["results"]["vqa"]["vqa_accuracy_other"] == expected  # every fixture question is of type "other"
    assert "| vqa | vqa_accuracy |" in (model / "eval_results.md").read_text()


@slow
def test_the_best_checkpoint_by_the_tasks_own_metric(tmp_path):
    """--metric_for_best_model cider captions --caption_eval_samples validation photos at each evaluation (the COCO
    toolkit scores them); vqa_accuracy is the official accuracy; a name the run does not report stops it at once."""
    common = ["--synthetic_samples", "60", "--batch_size", "8", "--vocab_size", "150", "--report_to", "none",
              "--no_progress", "--max_steps", "4", "--eval_steps", "2"]
    out = tmp_path / "cider"
    train.main([*common, "--metric_for_best_model", "cider", "--caption_eval_samples", "4", "--output_dir", str(out)])
    evaluations = [row for row in json.loads((out / "history.json").read_text()) if "val_loss" in row]
    assert len(evaluations) == 2 and all("val_CIDEr" in row and "val_BLEU-4" in row for row in evaluations)
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["val_CIDEr"] == max(row["val_CIDEr"] for row in evaluations)
    assert json.loads((out / "train_results.json").read_text())["best_metric"] == best["val_CIDEr"]

    vqa_files(tmp_path / "vqa", "train2014", 40, [9, 25, 31, 47])
    vqa_files(tmp_path / "vqa", "val2014", 12, [42, 73])
    out = tmp_path / "vqa_model"
    train.main(["--dataset", "vqa", "--data_dir", str(tmp_path / "vqa"), "--tasks", "vqa", "--batch_size", "4",
                "--vocab_size", "120", "--report_to", "none", "--no_progress", "--max_steps", "4", "--eval_steps", "2",
                "--metric_for_best_model", "vqa_accuracy", "--output_dir", str(out)])
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert 0 <= best["val_vqa_accuracy"] <= 100

    with pytest.raises(SystemExit, match="--metric_for_best_model bleu_9: no validation reports it"):
        train.main([*common, "--metric_for_best_model", "bleu_9", "--output_dir", str(tmp_path / "bad")])


def test_test_dev_questions_get_a_results_file_every_question_answered(tmp_path):
    """The test-dev questions have no answers: evaluate.py writes the official results file (every question, a
    missing photo's answered with the most frequent training answer) and no accuracy."""
    vqa_files(tmp_path / "vqa", "train2014", 40, [9, 25, 31, 47])
    vqa_files(tmp_path / "vqa", "val2014", 4, [42])
    questions = [{"image_id": image, "question": f"what colour is thing {n}?", "question_id": image * 1000 + n}
                 for n, image in enumerate([5, 5, 6, 8])]
    (tmp_path / "vqa" / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(
        {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "test-dev2015",
         "questions": questions}))
    for image in (5, 6):  # photo 8 is missing
        write_jpeg(tmp_path / "vqa" / "test2015" / f"COCO_test2015_{image:012d}.jpg")
    data = ["--dataset", "vqa", "--data_dir", str(tmp_path / "vqa")]
    model = tmp_path / "model"
    train.main([*data, "--tasks", "vqa", "--max_steps", "2", "--batch_size", "4", "--vocab_size", "120",
                "--report_to", "none", "--no_progress", "--output_dir", str(model)])
    payload = evaluate.main(["--model", str(model), *data, "--split", "test", "--tasks", "vqa", "--no_progress",
                             "--output_dir", str(tmp_path / "test-dev")])
    results = json.loads((tmp_path / "test-dev" / "vqa_results.json").read_text())
    assert [r["question_id"] for r in results] == [q["question_id"] for q in questions]
    assert payload["results"]["vqa"] == {"questions": 4, "questions_with_answers": 0, "questions_without_image": 1}
    vocabulary = json.loads((model / "config.json").read_text())["id2label"]
    assert results[-1]["answer"] == vocabulary["0"]  # the most frequent training answer, for the missing photo


def test_what_a_best_metric_needs_is_checked_before_the_data(tmp_path, monkeypatch):
    common = ["--report_to", "none", "--no_progress", "--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="--caption_eval_samples validation photos: give 1 or more"):
        train.main([*common, "--metric_for_best_model", "cider", "--caption_eval_samples", "0"])
    monkeypatch.setattr(sys.modules["modeling_xattn.training.main"].shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="meteor needs Java"):
        train.main([*common, "--metric_for_best_model", "meteor"])
    with pytest.raises(SystemExit, match="--metric_for_best_model nonsense: no validation reports it"):
        train.main([*common, "--metric_for_best_model", "nonsense"])
    with pytest.raises(SystemExit, match=r"val_accuracy: this run's validation \(tasks captioning\) reports"):
        train.main([*common, "--synthetic_samples", "40", "--tasks", "captioning", "--metric_for_best_model",
                    "val_accuracy"])
