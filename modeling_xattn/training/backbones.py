"""Pretrained towers loaded from files: ALBERT from a Hub id or a folder, DenseNet from torchvision's ImageNet weights or
a safetensors state dict, each checked against the config before a model is built. Training code: a model published
to the Hub carries its towers in its own weights, so the Hub files do not need this."""

from __future__ import annotations

import contextlib
import os
import re

import torch
import torchvision
from transformers import AlbertModel
from transformers.utils import logging

from modeling_xattn.configuration_xattn import PRESETS, XAttnConfig


def from_pretrained_backbones(model_class, config: XAttnConfig | None = None, text: str | None = None,
                              vision: str | None = None, **text_kwargs):
    """Build a `model_class` (any XAttn model class) from `config` (default: the "base" preset) and load pretrained
    towers into it.

    Args:
        text: a transformers ALBERT checkpoint, a Hub id (`"albert/albert-base-v2"`) or a local folder (as
            published: `AlbertForMaskedLM` weights, whose pooler and masked-LM head the tower leaves out). Its
            config replaces `config.text_config`, so the tower's shape always matches the weights; a checkpoint of
            another model type is refused.
        vision: `"imagenet"` for torchvision's DenseNet121 ImageNet weights (downloaded by torchvision), or a
            local `.safetensors` file holding a torchvision DenseNet state dict (`features.*` keys; the
            classifier is ignored; `scripts/export_densenet.py` writes one). Its DenseNet shape must be the
            config's (DenseNet121 is the "base" preset's); a file of another shape is refused, naming both.
    This is the only place the package downloads weights; no model's `__init__` does.
    """
    config = XAttnConfig.from_preset("base") if config is None else config
    text_model = load_albert(text, **text_kwargs) if text is not None else None
    if text_model is not None:
        config.text_config = text_model.config
        config.decoder_config.vocab_size = text_model.config.vocab_size
    features = None
    if vision is not None:
        features = load_densenet_features(vision)
        check_densenet_shape(features, config, vision)
    model = model_class(config)
    base = model.base_model  # the XAttnModel, for the base model and every head
    if text_model is not None:
        if base.text_model is None:
            raise ValueError("text= was given but config.modalities='image' has no text tower")
        base.text_model.load_state_dict(text_model.state_dict())
    if features is not None:
        if base.vision_model is None:
            raise ValueError("vision= was given but config.modalities='text' has no image tower")
        base.vision_model.features.load_state_dict(features)
    return model


class _AlbertTower(AlbertModel):
    """ALBERT without its pooler, loaded from a published checkpoint (`AlbertForMaskedLM` / `AlbertForPreTraining`
    weights): the pooler, the masked-LM head and the sentence-order head are expected in the file and not used."""

    _keys_to_ignore_on_load_unexpected = [r"^pooler\.", r"^predictions\.", r"^sop_classifier\."]


def load_albert(source: str, **kwargs) -> AlbertModel:
    """ALBERT's encoder from a Hub id or a local folder, refusing a checkpoint of another model type (an ALBERT
    tower built from BERT weights would load without an error and compute nonsense) or one that lacks weights."""
    from transformers import PretrainedConfig

    config_dict, _ = PretrainedConfig.get_config_dict(source, **kwargs)
    model_type = config_dict.get("model_type")
    if model_type != "albert":
        raise ValueError(f"text={source!r} is a {model_type or 'model of unknown type'} checkpoint, not ALBERT: the "
                         "text tower is ALBERT (the paper's); use an ALBERT checkpoint such as albert/albert-base-v2")
    with _quiet_transformers():
        model, info = _AlbertTower.from_pretrained(source, add_pooling_layer=False, output_loading_info=True, **kwargs)
    if info["missing_keys"] or info["mismatched_keys"]:
        names = sorted(info["missing_keys"]) + sorted(str(key) for key in info["mismatched_keys"])
        raise ValueError(f"text={source!r} does not hold a whole ALBERT encoder: {len(names)} weight(s) missing or "
                         f"of another shape ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    return model


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' loading messages silenced (the load report lists the checkpoint's pretraining heads, which the
    tower leaves out by design); what matters is checked from the loading info instead."""
    previous, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(previous)
        if bars:
            logging.enable_progress_bar()


# torchvision's original DenseNet files name a dense layer's modules "norm.1", "conv.2" (torchvision renames them
# on load); a state dict saved from a torchvision model names them "norm1", "conv2".
_OLD_DENSE_LAYER_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                                  r"running_var|num_batches_tracked))$")


def load_densenet_features(source: str) -> dict[str, torch.Tensor]:
    """State dict of a DenseNet's `features` module, from `"imagenet"` or a local safetensors file."""
    if source == "imagenet":
        weights = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1
        state = torchvision.models.densenet121(weights=weights).state_dict()
    elif os.path.isfile(source) and source.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(source)
    else:
        raise ValueError(f"vision={source!r}: expected 'imagenet' or a path to a .safetensors DenseNet state dict")
    features = {}
    for key, value in state.items():
        if key.startswith("features."):
            match = _OLD_DENSE_LAYER_KEY.match(key)
            features[(match.group(1) + match.group(2) if match else key)[len("features."):]] = value
    if not features:
        raise ValueError(f"vision={source!r}: no 'features.*' keys found; is this a torchvision DenseNet state dict?")
    return features


def densenet_shape(features: dict[str, torch.Tensor]) -> dict:
    """The DenseNet a `features` state dict belongs to, in the config's terms: growth rate, layers per block, stem
    channels, bottleneck multiple (DenseNet121: 32, (6, 12, 24, 16), 64, 4)."""
    try:
        blocks = sorted({int(key.split(".")[0][len("denseblock"):]) for key in features if key.startswith("denseblock")})
        block_config = tuple(len({key.split(".")[1] for key in features if key.startswith(f"denseblock{block}.")})
                             for block in blocks)
        growth_rate, bottleneck = features["denseblock1.denselayer1.conv2.weight"].shape[:2]
        return dict(growth_rate=int(growth_rate), block_config=block_config,
                    num_init_features=int(features["conv0.weight"].shape[0]), bn_size=int(bottleneck // growth_rate))
    except (KeyError, ValueError, IndexError):
        raise ValueError("not a torchvision DenseNet state dict (no conv0 / denseblock1.denselayer1 weights)") from None


def densenet_fields(config: XAttnConfig) -> dict:
    """The DenseNet shape a config builds, as `densenet_shape` describes a state dict's."""
    return dict(growth_rate=config.growth_rate, block_config=tuple(config.block_config),
                num_init_features=config.num_init_features, bn_size=config.bn_size)


def check_densenet_shape(features: dict[str, torch.Tensor], config: XAttnConfig, source: str = "vision") -> None:
    """Refuse a DenseNet of another shape than the config builds, naming both (and the preset that builds it)."""
    try:
        found = densenet_shape(features)
    except ValueError as error:
        raise ValueError(f"vision={source!r}: {error}") from None
    wanted = densenet_fields(config)
    if found == wanted:
        return
    presets = [name for name in PRESETS if densenet_fields(XAttnConfig.from_preset(name)) == found]

    def describe(shape):
        return (f"growth {shape['growth_rate']}, blocks {'-'.join(map(str, shape['block_config']))}, "
                f"{shape['num_init_features']} stem channels, bottleneck x{shape['bn_size']}")

    raise ValueError(
        f"vision={source!r} holds a DenseNet ({describe(found)}) that the config does not build ({describe(wanted)})"
        + (f"; the {presets[0]!r} preset builds it" if presets else
           "; set growth_rate, block_config, num_init_features and bn_size to the file's"))


__all__ = ["check_densenet_shape", "densenet_fields", "densenet_shape", "from_pretrained_backbones", "load_albert",
           "load_densenet_features"]
