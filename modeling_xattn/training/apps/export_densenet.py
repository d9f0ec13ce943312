"""Writing torchvision's DenseNet121 as the `.safetensors` state dict `--vision_backbone` reads, behind
`scripts/export_densenet.py` (its docstring has the commands)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
import torchvision
from safetensors.torch import save_file

from modeling_xattn.training.options import option, parse_options

SOURCES = {
    "imagenet": "torchvision DenseNet121_Weights.IMAGENET1K_V1 (ImageNet-1k top-1 74.4%)",
    "random": "torchvision densenet121(), randomly initialised (for tests and offline dry runs)",
}


@dataclass
class ExportDenseNetArguments:
    """Which weights to write, and where."""

    _argument_group_name = "export"

    output: str = option("densenet121.safetensors", "the file to write")
    weights: Literal["imagenet", "random"] = option(
        "imagenet",
        "imagenet: torchvision's ImageNet weights (downloaded once into torch's cache, so run this where the internet "
        "is reachable); random: a randomly initialised DenseNet121 of the same layout, for dry runs")
    seed: int = option(0, "seed of --weights random")


def export_densenet121(output: str, weights: str = "imagenet", seed: int = 0) -> dict:
    """Write DenseNet121's full state dict (features, classifier, BatchNorm statistics; torchvision's names, every
    tensor contiguous) as safetensors, with where it came from in the file's metadata. Returns what was written."""
    if weights not in SOURCES:
        raise ValueError(f"weights={weights!r}: choose one of {sorted(SOURCES)}")
    if weights == "imagenet":
        model = torchvision.models.densenet121(weights=torchvision.models.DenseNet121_Weights.IMAGENET1K_V1)
    else:
        torch.manual_seed(seed)
        model = torchvision.models.densenet121()
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    save_file(state, output, metadata={"format": "pt", "source": SOURCES[weights],
                                       "torchvision": torchvision.__version__})
    return {"output": output, "weights": weights, "tensors": len(state),
            "parameters": sum(t.numel() for name, t in state.items() if not name.endswith("num_batches_tracked"))}


def main(argv=None, description: str | None = None) -> dict:
    """Export as the command line says; returns what `export_densenet121` wrote."""
    (args,) = parse_options((ExportDenseNetArguments,), argv, description or __doc__)
    try:
        result = export_densenet121(args.output, args.weights, args.seed)
    except OSError as error:  # the download (URLError is an OSError)
        raise SystemExit(f"could not fetch torchvision's ImageNet weights ({error}): run this where the internet is "
                         "reachable, then copy the file") from None
    print(f"wrote {result['output']}: DenseNet121, {result['tensors']} tensors, {result['parameters']:,} numbers "
          f"({SOURCES[args.weights]}). Train from it: python scripts/train.py --recipe finetune --vision_backbone "
          f"{result['output']}")
    return result


__all__ = ["ExportDenseNetArguments", "export_densenet121", "main"]
