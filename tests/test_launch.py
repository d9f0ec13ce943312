"""The launcher is obeyed: what `accelerate launch` and its config file set (mixed precision, gradient accumulation,
dynamo, the processes) applies unless our own flag is given; and a training step never waits for the device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script, slow

pytestmark = slow  # every test here launches processes

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train.py"
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
FAST = ["--synthetic_samples", "60", "--batch_size", "4", "--vocab_size", "150", "--report_to", "none",
        "--no_progress", "--max_steps", "2", "--eval_steps", "2", "--logging_steps", "1"]

train = load_script("train")


def launch(launcher_args, script_args, out, env=None):
    result = subprocess.run([*ACCELERATE, *launcher_args, str(SCRIPT), *FAST, *script_args, "--output_dir", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "train_results.json").read_text())
    history = json.loads((out / "history.json").read_text())
    return result.stdout, results["launch"], history


def test_accelerate_launch_flags_apply_and_our_flags_override_them(tmp_path):
    flags = ["--num_processes", "1", "--mixed_precision", "bf16", "--cpu"]
    stdout, used, bf16 = launch(flags, [], tmp_path / "launcher")
    assert "mixed precision: bf16 (accelerate launch)" in stdout
    assert used["mixed_precision"] == "bf16" and used["sources"]["mixed_precision"] == "accelerate launch"
    stdout, used, fp32 = launch(flags, ["--mixed_precision", "no"], tmp_path / "ours")
    assert "mixed precision: no (--mixed_precision)" in stdout and used["mixed_precision"] == "no"
    # bf16 autocast really ran: the same seed and data give another loss than fp32's
    assert bf16[0]["train_loss"] != pytest.approx(fp32[0]["train_loss"], rel=1e-6)
    assert bf16[0]["train_loss"] == pytest.approx(fp32[0]["train_loss"], rel=0.05)


def test_a_config_file_and_the_environment_apply_and_our_flags_override_them(tmp_path):
    config = tmp_path / "cpu_bf16.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 1\nuse_cpu: true\n"
                      "mixed_precision: bf16\ndynamo_config:\n  dynamo_backend: EAGER\n")
    env = {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"}
    stdout, used, history = launch(["--config_file", str(config)], [], tmp_path / "file", env)
    assert used["mixed_precision"] == "bf16" and used["torch_compile"] == "eager"
    assert used["gradient_accumulation_steps"] == 2
    assert set(used["sources"].values()) == {"accelerate launch"}
    assert "gradient accumulation: 2 (accelerate launch), torch.compile: eager (accelerate launch)" in stdout
    stdout, used, _ = launch(["--config_file", str(config)],
                             ["--mixed_precision", "no", "--gradient_accumulation_steps", "1", "--no-torch_compile"],
                             tmp_path / "flags", env)
    assert (used["mixed_precision"], used["gradient_accumulation_steps"], used["torch_compile"]) == ("no", 1, "no")
    assert set(used["sources"].values()) == {"--mixed_precision", "--gradient_accumulation_steps", "--no-torch_compile"}


SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


def test_a_training_step_never_reads_a_tensor_back(tmp_path, monkeypatch):
    """Inside `train_one_step` (forward, backward, clipping, the schedule) no tensor is read by the host: on a GPU
    each such read waits for the whole queue. The optimiser's own step is left out (torch's CPU Adam reads its step
    counter; the fused CUDA Adam the loop uses there does not). The losses reach the log every --logging_steps."""
    loop = sys.modules["modeling_xattn.training.loop"]
    original_step, state = loop.train_one_step, {"inside": False, "reads": []}

    def guarded(name, method):
        def call(tensor, *args, **kwargs):
            if state["inside"]:
                state["reads"].append(name)
            return method(tensor, *args, **kwargs)
        return call

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, guarded(name, getattr(torch.Tensor, name)))

    def step(run, batch):
        optimizer_step = run.optimizer.step

        def unguarded_optimizer_step(*args, **kwargs):
            state["inside"] = False
            try:
                return optimizer_step(*args, **kwargs)
            finally:
                state["inside"] = True

        run.optimizer.step = unguarded_optimizer_step
        state["inside"] = True
        try:
            return original_step(run, batch)
        finally:
            state["inside"] = False
            run.optimizer.step = optimizer_step

    monkeypatch.setattr(loop, "train_one_step", step)
    train.main(["--synthetic_samples", "60", "--batch_size", "4", "--vocab_size", "150", "--report_to", "none",
                "--no_progress", "--max_steps", "6", "--logging_steps", "3", "--max_train_minutes", "60",
                "--output_dir", str(tmp_path)])
    assert state["reads"] == []
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["step"] for row in history] == [3, 6] and all("train_loss_seq" in row for row in history)
