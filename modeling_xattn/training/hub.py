"""Safe loading from folders and the Hub, and the model card's Hub metadata.

- Weights load only as safetensors. A folder or repository that offers only pickled weights (.bin/.pt/.pth/.pkl/
  .ckpt) is refused unless the caller passes `allow_pickle=True`: unpickling runs code from the file.
- An `auto_map` entry that points into another repository (`"other/repo--modeling.Class"`) is refused: remote code
  would then come from a repository the caller did not name or pin.
- `accelerate`'s `load_state` (which unpickles optimiser state) is only ever used by scripts/train.py on the local
  checkpoints it wrote itself.
"""

from __future__ import annotations

import json
import os

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
CONFIG_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


class UnsafeCheckpointError(ValueError):
    pass


def list_files(name: str, revision: str | None = None, token=None) -> list[str]:
    """Files of a local folder (recursively) or of a Hub repository at `revision`."""
    if os.path.isdir(name):
        return [os.path.relpath(os.path.join(root, f), name) for root, _, files in os.walk(name) for f in files]
    from huggingface_hub import HfApi

    return HfApi(token=token).list_repo_files(name, revision=revision)


def _read_json(name: str, filename: str, revision: str | None, token=None) -> dict | None:
    if os.path.isdir(name):
        path = os.path.join(name, filename)
        if not os.path.exists(path):
            return None
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name, filename, revision=revision, token=token)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def check_safe(name: str, revision: str | None = None, allow_pickle: bool = False, token=None) -> None:
    """Raise `UnsafeCheckpointError` (saying why) for pickled-only weights or a cross-repository `auto_map`."""
    files = list_files(name, revision, token)
    safetensors = [f for f in files if f.endswith(".safetensors")]
    pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickled and not safetensors and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{name}: refusing to load pickled weights {pickled}: unpickling a file runs code from it. Convert them "
            "to safetensors, or pass allow_pickle=True only for a file you trust.")
    for filename in CONFIG_FILES:
        if filename not in files:
            continue
        data = _read_json(name, filename, revision, token) or {}
        for section in [data, *[v for v in data.values() if isinstance(v, dict)]]:
            for auto_class, reference in (section.get("auto_map") or {}).items():
                references = reference if isinstance(reference, (list, tuple)) else [reference]
                if any(isinstance(r, str) and "--" in r for r in references):
                    raise UnsafeCheckpointError(
                        f"{name}: {filename} maps {auto_class} to {reference!r}, code from another repository; "
                        "refusing to run it. Load that repository by its own name and revision instead.")


def load_pretrained(name: str, revision: str | None = None, auto_class=None, allow_pickle: bool = False, token=None,
                    **kwargs):
    """`auto_class.from_pretrained(name, trust_remote_code=True)` after `check_safe`, safetensors only."""
    from transformers import AutoModelForPreTraining

    check_safe(name, revision, allow_pickle, token)
    auto_class = auto_class or AutoModelForPreTraining
    return auto_class.from_pretrained(name, revision=revision, trust_remote_code=True, token=token,
                                      use_safetensors=None if allow_pickle else True, **kwargs)


def inference_device(name: str | None = None):
    """The device an inference command runs on: `name` (cuda, cuda:1, mps, cpu), else CUDA where available, else
    MPS, else the CPU. An unknown or absent device stops the command with its name."""
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"--device {name}: not a device (cuda, cuda:N, mps or cpu)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False) or (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()):
        raise SystemExit(f"--device {name}: this machine has no such device")
    return device


def load_processor(name: str, revision: str | None = None, token=None):
    from transformers import AutoProcessor

    check_safe(name, revision, allow_pickle=False, token=token)
    return AutoProcessor.from_pretrained(name, revision=revision, trust_remote_code=True, token=token)


__all__ = ["UnsafeCheckpointError", "check_safe", "inference_device", "load_pretrained", "load_processor",
           "list_files"]
