"""The training script: a few steps in-process, exact resume after SIGKILL, two processes, and a NaN stop."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining, AutoProcessor

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train.py"
from conftest import free_port, kill_after_checkpoint, load_script, slow

train = load_script("train")

FAST = ["--synthetic_samples", "120", "--batch_size", "8", "--vocab_size", "150", "--report_to", "none",
        "--no_progress", "--learning_rate", "3e-4"]


def test_main_trains_evaluates_and_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "run"
    result = train.main(FAST + ["--max_steps", "4", "--eval_steps", "2", "--logging_steps", "1", "--output_dir",
                                str(out), "--report_to", "tensorboard"])
    assert result["global_step"] == 4 and result["num_processes"] == 1
    for name in ("model.safetensors", "config.json", "modeling_xattn.py", "processor_config.json", "README.md",
                 "training_curves.png", "train_results.json"):
        assert (out / name).exists(), name
    assert list((out / "runs").rglob("events.out.tfevents*")), "tensorboard events under runs/"
    results = json.loads((out / "train_results.json").read_text())
    assert {"val_loss", "val_accuracy", "val_i2t_R@1"} <= set(results["metrics"])
    assert "AdamW" in results["card"]["training"]  # decoupled weight decay by default
    card = (out / "README.md").read_text()
    assert "val_accuracy" in card and "$" + "metrics_table" not in card
    model = AutoModelForPreTraining.from_pretrained(out, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    from modeling_xattn.training.data.synthetic import synthetic_dataset

    row = synthetic_dataset(1)[0]
    inputs = processor(images=[row["image"]], text=[row["text"]])
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 3)
    assert (out / "best" / "model.safetensors").exists()
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4] and "lr" in history[0]
    assert abs(history[0]["gate_text_from_image_0"]) < 1e-2  # the default recipe's gates (closed at 0), logged


def run_script(args, env=None, cwd=REPO):
    # One thread per process: the tests run several processes at once on few cores (tests/test_reproducibility.py
    # checks that a multi-threaded step is bitwise repeatable).
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=600)


@slow
@pytest.mark.parametrize("augmentation", [["--random_crop_scale", "0.5"], []], ids=["seeded crops", "cached photos"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, augmentation):
    # the default recipe's warm-up and cosine schedule; with seeded random crops, or without them, where the photos
    # come from the photo cache after their first read: the uninterrupted run reads every photo afresh (no cache), the
    # killed and resumed one caches them (and starts its cache empty again on resuming)
    common = FAST + ["--max_steps", "10", "--save_steps", "4", "--eval_steps", "5", "--synthetic_samples", "64",
                     "--warmup_steps", "3", *augmentation]
    straight = run_script(common + ["--output_dir", str(tmp_path / "straight"), "--photo_cache_gb", "0"])
    assert straight.returncode == 0, straight.stderr[-2000:]

    # Killed mid-epoch (7 steps an epoch), after the step-4 checkpoint and before step 8's.
    killed_dir = tmp_path / "killed"
    last = kill_after_checkpoint([sys.executable, str(SCRIPT), *common, "--output_dir", str(killed_dir)], killed_dir,
                                 4, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    assert 4 <= last < 10

    resumed = run_script(common + ["--output_dir", str(killed_dir), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and f"at step {last}" in resumed.stdout
    expected = load_file(str(tmp_path / "straight" / "model.safetensors"))
    got = load_file(str(killed_dir / "model.safetensors"))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_interrupted_save_never_hides_the_last_complete_checkpoint(tmp_path):
    from modeling_xattn.training.checkpoints import latest_checkpoint

    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step_4").mkdir(parents=True)
    (checkpoints / "tmp-step_8").mkdir()  # what a kill during save_state leaves behind
    (checkpoints / "step_12_broken").mkdir()
    assert latest_checkpoint(str(checkpoints)) == str(checkpoints / "step_4")


@slow
def test_two_processes_really_run(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()),
               str(SCRIPT), *FAST, "--max_steps", "3", "--eval_steps", "3", "--output_dir", str(out)]
    # the labels of one task are dropped on purpose in no batch here; find_unused_parameters covers task subsets
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stdout
    assert json.loads((out / "train_results.json").read_text())["num_processes"] == 2


@slow
def test_two_nodes_end_with_identical_weights(tmp_path):
    """`torchrun --nnodes 2`: two "machines" on 127.0.0.1, one process each, gloo; the run checks at the end that both
    replicas hold the same weights (and would stop if they did not)."""
    out = tmp_path / "nodes"
    launches, port = [], str(free_port())  # one rendezvous for both nodes
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", port,
                   str(SCRIPT), *FAST, "--max_steps", "3", "--eval_steps", "3", "--output_dir", str(out)]
        launches.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    outputs = [launch.communicate(timeout=600) for launch in launches]
    for launch, (stdout, stderr) in zip(launches, outputs):
        assert launch.returncode == 0, stderr[-3000:]
    main_stdout = outputs[0][0]
    assert "processes: 2" in main_stdout and "weights identical on all 2 processes" in main_stdout
    assert json.loads((out / "train_results.json").read_text())["num_processes"] == 2


@slow
def test_compiled_channels_last_steps_match_eager(tmp_path, capsys):
    """`--torch_compile` (Accelerate's dynamo plugin; aot_eager here: inductor's C++ build takes minutes on two cores)
    with `--channels_last`: the same losses as eager, step by step. A compiled run pads to the maximum lengths, which
    changes how many numbers dropout draws: the eager run pads too."""
    common = FAST + ["--max_steps", "3", "--eval_steps", "3", "--synthetic_samples", "48"]
    train.main(common + ["--output_dir", str(tmp_path / "eager"), "--pad_to_max_length"])
    train.main(common + ["--output_dir", str(tmp_path / "compiled"), "--torch_compile", "--torch_compile_backend",
                         "aot_eager", "--channels_last"])
    assert "torch.compile: aot_eager" in capsys.readouterr().out
    eager, compiled = (json.loads((tmp_path / name / "history.json").read_text()) for name in ("eager", "compiled"))
    for a, b in zip(eager, compiled, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert compiled[-1]["val_loss"] == pytest.approx(eager[-1]["val_loss"], rel=1e-4)
    # the saved folder is the plain model (no torch.compile wrapper in the weight names)
    assert not any("_orig_mod" in key for key in load_file(str(tmp_path / "compiled" / "model.safetensors")))
    with pytest.raises(SystemExit, match="--memory_saving and --torch_compile cannot be combined"):
        train.main(common + ["--output_dir", str(tmp_path / "both"), "--torch_compile", "--memory_saving"])


def test_classification_only_task_subset(tmp_path):
    result = train.main(FAST + ["--max_steps", "2", "--tasks", "classification", "--output_dir", str(tmp_path)])
    assert set(result["metrics"]) >= {"val_loss", "val_accuracy"} and "val_loss_seq" not in result["metrics"]


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    """The check runs where the losses are read (every --logging_steps, and before each evaluation and checkpoint):
    it names the first non-finite step, and no checkpoint or model holds the diverged weights."""
    with pytest.raises(FloatingPointError, match="non-finite loss at step 1 .*The last checkpoint is in"):
        train.main(FAST + ["--max_steps", "3", "--lambda_ce", "nan", "--output_dir", str(tmp_path)])
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "best").exists()
    assert not (tmp_path / "model.safetensors").exists()


def test_vqa_task_trains_on_soft_scores(tmp_path):
    result = train.main(FAST + ["--max_steps", "2", "--tasks", "vqa,captioning", "--output_dir", str(tmp_path)])
    assert "val_vqa_accuracy" in result["metrics"] and "val_loss_seq" in result["metrics"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert set(config["id2label"].values()) <= {"circle", "square", "triangle", "cross"}
