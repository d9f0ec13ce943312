"""FSDP2 on two CPU processes (gloo), launched as README says (`torchrun --nproc_per_node 2 scripts/train.py
--fsdp`): a killed run resumes to the uninterrupted run's weights, the loss follows the DDP run's, and the final
folder loads with `from_pretrained` in a plain process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining

from conftest import free_port, kill_after_checkpoint, kill_tree, load_script, slow

pytestmark = slow  # every test here launches processes

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train.py"
# one thread per process: bitwise equality after a resume is only defined with single-threaded reductions
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# retrieval and captioning only: the classifier is a head this run never trains, so its parameters have no Adam
# state in the checkpoints (as a captions-only dataset's run); the learned logit scale trains
OPTIONS = ["--synthetic_samples", "64", "--batch_size", "4", "--vocab_size", "150", "--report_to", "none",
           "--no_progress", "--learning_rate", "3e-4", "--max_steps", "8", "--save_steps", "3", "--eval_steps", "4",
           "--warmup_steps", "2", "--tasks", "retrieval,captioning", "--logging_steps", "1"]
# the losses of a sharded run and of a DDP run differ only in the order of floating-point sums (measured: at most
# 1.2e-6 over these 8 steps and 2 evaluations)
LOSS_TOLERANCE = 1e-5

train = load_script("train")


def torchrun(output_dir: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(free_port()),
            str(SCRIPT), *OPTIONS, "--output_dir", str(output_dir), *extra]


def launch(command, timeout=300) -> str:
    """Run a torchrun launch to its end; on a timeout its workers are killed with it (they are its process group),
    so that a hung collective fails the test instead of outliving it."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f"the launch did not end within {timeout} s:\n{stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def test_fsdp_resumes_exactly_follows_ddp_and_loads_in_a_plain_process(tmp_path):
    straight = tmp_path / "fsdp"
    stdout = launch(torchrun(straight, "--fsdp"))
    assert "processes: 2" in stdout
    results = json.loads((straight / "train_results.json").read_text())
    assert results["num_processes"] == 2 and results["global_step"] == 8
    assert results["card"]["command"].startswith("torchrun --nproc_per_node 2 scripts/train.py --synthetic_samples")

    killed = tmp_path / "killed"
    last = kill_after_checkpoint(torchrun(killed, "--fsdp"), killed, 3, env=ENV, cwd=REPO)
    assert 3 <= last < 8
    assert {"fsdp_model.safetensors", "fsdp_optimizer.bin"} <= {p.name for p in (killed / "checkpoints" / f"step_{last}").iterdir()}
    with pytest.raises(SystemExit, match="saved by a run with --fsdp; resume with --fsdp under torchrun"):
        train.main(OPTIONS + ["--output_dir", str(killed), "--resume_from_checkpoint", "latest"])
    resumed = launch(torchrun(killed, "--fsdp", "--resume_from_checkpoint", "latest"))
    assert f"at step {last}" in resumed
    expected, got = load_file(str(straight / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key

    ddp = tmp_path / "ddp"
    launch(torchrun(ddp))
    sharded_history, ddp_history = (json.loads((folder / "history.json").read_text()) for folder in (straight, ddp))
    assert [h["step"] for h in sharded_history] == [h["step"] for h in ddp_history] == list(range(1, 9))
    for sharded_step, ddp_step in zip(sharded_history, ddp_history):  # every loss, trained and validated
        losses = [key for key in ddp_step if "loss" in key]
        assert [key for key in sharded_step if "loss" in key] == losses
        assert ("val_loss" in losses) == (sharded_step["step"] in (4, 8))
        for key in losses:
            assert sharded_step[key] == pytest.approx(ddp_step[key], abs=LOSS_TOLERANCE), (sharded_step["step"], key)
    ddp_weights = load_file(str(ddp / "model.safetensors"))
    assert ddp_weights.keys() == expected.keys()  # the same file: tied weights left out, scalars as scalars
    for key in expected:
        torch.testing.assert_close(expected[key], ddp_weights[key], atol=1e-4, rtol=1e-4, msg=key)

    # the folder is the plain model: its class in config.json, this package's code beside it, the saved shapes
    config = json.loads((straight / "config.json").read_text())
    assert config["architectures"] == ["XAttnForMultiTask"]
    assert {p.name for p in straight.glob("*.py")} == {"configuration_xattn.py", "modeling_xattn.py",
                                                        "processing_xattn.py", "pipeline_xattn.py"}
    model = AutoModelForPreTraining.from_pretrained(straight, trust_remote_code=True)
    for name, tensor in model.state_dict().items():
        if name in expected:
            assert torch.equal(tensor, expected[name]), name
    assert (straight / "best" / "model.safetensors").exists()


def test_fsdp_needs_a_multi_process_launch(tmp_path):
    with pytest.raises(SystemExit, match="torchrun --nproc_per_node N scripts/train.py --fsdp"):
        train.main(OPTIONS + ["--output_dir", str(tmp_path / "one"), "--fsdp"])
    with pytest.raises(SystemExit, match="--fsdp and --torch_compile are not combined"):
        train.main(OPTIONS + ["--output_dir", str(tmp_path / "both"), "--fsdp", "--torch_compile"])


def test_scalar_parameters_shard_as_vectors_and_save_as_scalars():
    """fully_shard refuses 0-d parameters (the default recipe's learned logit scale): they train as shape (1,), with
    the same similarities, and are saved with their own shape, so the file loads into an unsharded model."""
    from modeling_xattn import XAttnConfig, XAttnForMultiTask
    from modeling_xattn.training.sharding import scalar_shapes, vectorize_scalars

    torch.manual_seed(0)
    model = XAttnForMultiTask(XAttnConfig.from_preset("tiny", contrastive_loss="sigmoid"))
    images, texts = torch.nn.functional.normalize(torch.randn(2, 3, model.config.projection_dim), dim=-1)
    before = model.retrieval.similarity(images, texts)
    assert vectorize_scalars(model) == ["retrieval.logit_scale", "retrieval.logit_bias"]
    assert model.retrieval.logit_scale.shape == (1,)
    torch.testing.assert_close(model.retrieval.similarity(images, texts), before)
    weights = scalar_shapes(model, model.state_dict())
    assert weights["retrieval.logit_scale"].shape == () and weights["retrieval.logit_bias"].shape == ()
    XAttnForMultiTask(model.config).load_state_dict(weights)
