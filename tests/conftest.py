"""Shared fixtures: tiny configs, a tokenizer trained on the fly, random batches. Everything runs on two CPU cores."""

import os
from pathlib import Path

import pytest
import torch

from modeling_xattn import XAttnConfig, XAttnProcessor, train_albert_tokenizer
from modeling_xattn.processing_xattn import make_image_processor

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-val2017-sample"

CORPUS = [
    "a red circle is left of a blue square",
    "the small green triangle is above the yellow circle",
    "a man riding a horse on a beach",
    "two dogs play with a ball in the park",
    "a laptop computer sits on a wooden desk next to a lamp",
    "what colour is the square",
    "is there a cat on the sofa",
    "a plane is parked on the runway at the airport",
] * 20

torch.set_num_threads(min(2, os.cpu_count() or 1))
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

# Two tiers, as transformers has them: `pytest tests` runs the fast tier; a test marked `@slow` (it launches processes,
# builds a wheel, compiles, drives a browser or trains for long) runs only with RUN_SLOW=1
# (`RUN_SLOW=1 pytest -m slow tests` runs the slow tier alone).
RUN_SLOW = os.environ.get("RUN_SLOW", "").strip().lower() in ("1", "true", "yes", "on")
slow = pytest.mark.slow


def pytest_collection_modifyitems(config, items):
    if RUN_SLOW:
        return
    fast = [item for item in items if item.get_closest_marker("slow") is None]
    if len(fast) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("slow") is not None])
        items[:] = fast


def load_script(name: str):
    """Import scripts/<name>.py under a private module name: `scripts/evaluate.py` must not shadow the `evaluate`
    library, so scripts/ never goes on sys.path."""
    import importlib.util
    import sys

    module_name = f"xattn_script_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


# The shared tiny model's run: the main job's command at the smallest sizes (a few seconds).
TINY_DATA = ["--synthetic_samples", "60", "--synthetic_test_samples", "12"]
TINY_RUN = TINY_DATA + ["--vocab_size", "120", "--max_steps", "2", "--batch_size", "8", "--report_to", "none",
                        "--no_progress"]


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """The shared tiny model, trained once per test session. Read it, never write into it: a module that evaluates
    or changes a model takes its own copy (`trained_copy`)."""
    folder = tmp_path_factory.mktemp("tiny-trained")
    load_script("train").main([*TINY_RUN, "--output_dir", str(folder)])
    return folder


@pytest.fixture(scope="module")
def trained_copy(tiny_trained, tmp_path_factory):
    """The module's own copy of the shared tiny model's folder."""
    import shutil

    return Path(shutil.copytree(tiny_trained, tmp_path_factory.mktemp("trained") / "model"))


def free_port() -> int:
    """A TCP port that nothing on this machine listens on now, for a launch's rendezvous (`--master_port`). A fixed
    port fails the launch whenever anything else holds it (another clone's test run, a training job): its torchrun
    cannot bind and ends before training."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started: a launcher's workers too (torchrun starts each in a session
    of its own, so killing its process group would leave them training), as when a machine goes away."""
    import psutil

    root = psutil.Process(pid)
    for process in [*root.children(recursive=True), root]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def kill_after_checkpoint(command, output_dir: Path, step: int, env=None, cwd=None) -> int:
    """Start `command` (a training run writing to `output_dir`), SIGKILL it from outside as soon as its step-`step`
    checkpoint appears (the save renames a finished folder into place), as a crash or a pre-empted machine would;
    returns the last complete checkpoint's step."""
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    while not (output_dir / "checkpoints" / f"step_{step}").exists():
        assert process.poll() is None and time.monotonic() < deadline, f"the run ended before its step-{step} checkpoint"
        time.sleep(0.005)
    kill_tree(process.pid)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (output_dir / "model.safetensors").exists()  # it did not finish
    return max(int(p.name.split("_")[1]) for p in (output_dir / "checkpoints").iterdir() if p.name.startswith("step_"))


@pytest.fixture(scope="session")
def tokenizer():
    return train_albert_tokenizer(CORPUS, vocab_size=120)


@pytest.fixture(scope="session")
def processor(tokenizer):
    return XAttnProcessor(make_image_processor(64), tokenizer, max_length=16, max_caption_length=12)


@pytest.fixture
def tiny_config():
    return XAttnConfig.from_preset("tiny")


def make_batch(config, batch_size=3, text_length=7, seed=0, pad_last=0):
    """Random pixels and token ids; the last `pad_last` positions of row 0 are padding."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    input_ids = torch.randint(5, config.text_config.vocab_size, (batch_size, text_length), generator=generator)
    input_ids[:, 0] = config.bos_token_id
    input_ids[:, -1] = config.eos_token_id
    attention_mask = torch.ones_like(input_ids)
    if pad_last:
        input_ids[0, -pad_last - 1] = config.eos_token_id
        input_ids[0, -pad_last:] = config.pad_token_id
        attention_mask[0, -pad_last:] = 0
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
