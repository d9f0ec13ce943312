"""Pretrained towers in a training run: the checks that turn a mismatch between the tower files and the options into
one plain message naming the option to change (before the data is read or the model built), and the locks the
options ask for (`--freeze_text`, `--freeze_vision`, `--freeze_bn_stats`)."""

from __future__ import annotations

from transformers import AutoTokenizer, PretrainedConfig

from modeling_xattn.configuration_xattn import PRESETS, XAttnConfig
from modeling_xattn.training.backbones import densenet_fields, densenet_shape, load_densenet_features

# The shape torchvision's DenseNet121 (its ImageNet weights, `--vision_backbone imagenet`) has.
DENSENET121 = dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4)


OFFLINE_HINT = ("A Hub id needs the Hub or its local cache (HF_HUB_OFFLINE=1 skips the retries where there is none); "
                "elsewhere download it where the Hub is reachable (hf download albert/albert-base-v2 --local-dir "
                "albert-base-v2) and give the folder")


def check_towers(args) -> tuple:
    """Every check of the towers against the options, before the data is read: the towers the modalities have,
    the DenseNet file's shape, the text checkpoint's type, the tokenizer's size. Returns the tokenizer that
    `--tokenizer` or `--text_backbone` names (None: the run trains one on its data) and the notes a user should
    read (a tokenizer smaller than the tower, pretrained towers at the new layers' rate)."""
    for option, given, missing in (("--text_backbone", args.text_backbone, "image"),
                                   ("--vision_backbone", args.vision_backbone, "text")):
        if given and args.modalities == missing:
            raise SystemExit(f"{option} {given} is given, but --modalities {missing} has no such tower: leave out "
                             f"{option} (under --recipe finetune: {option} none)")
    check_vision_backbone(args)
    text_config = text_backbone_config(args)
    tokenizer = load_tokenizer(args)
    notes = [check_tokenizer_fits(args, tokenizer, text_config) if tokenizer is not None else None,
             backbone_rate_warning(args)]
    return tokenizer, [note for note in notes if note]


def load_tokenizer(args):
    """The tokenizer of `--tokenizer` (else of `--text_backbone`), or None when neither is given; one that does not
    load, or that transformers builds empty from a folder without tokenizer files (its special tokens only, every
    word <unk>), stops the run naming the option."""
    source = args.tokenizer or args.text_backbone
    if not source:
        return None
    option = "--tokenizer" if args.tokenizer else "--text_backbone"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as error:
        problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    else:
        if len(tokenizer) > len(tokenizer.all_special_ids):
            return tokenizer
        problem = f"a vocabulary of its {len(tokenizer)} special tokens only"
    raise SystemExit(f"{option} {source} holds no tokenizer that loads ({problem}): give --tokenizer "
                     "(albert/albert-base-v2, or a folder with its tokenizer files)")


def describe_densenet(shape: dict) -> str:
    name = "DenseNet121" if shape == DENSENET121 else "a DenseNet"
    return (f"{name} (growth {shape['growth_rate']}, blocks {'-'.join(map(str, shape['block_config']))}, "
            f"{shape['num_init_features']} stem channels)")


def check_vision_backbone(args) -> None:
    """The DenseNet of `--vision_backbone` must be the one `--model_size` builds."""
    if not args.vision_backbone:
        return
    if args.vision_backbone == "imagenet":
        found = DENSENET121
    else:
        try:
            found = densenet_shape(load_densenet_features(args.vision_backbone))
        except (ValueError, OSError) as error:
            raise SystemExit(f"--vision_backbone {args.vision_backbone}: {error}. Give 'imagenet' or a .safetensors "
                             "file that scripts/export_densenet.py wrote") from None
    wanted = densenet_fields(XAttnConfig.from_preset(args.model_size))
    if found != wanted:
        fits = [name for name in PRESETS if densenet_fields(XAttnConfig.from_preset(name)) == found]
        raise SystemExit(
            f"--vision_backbone {args.vision_backbone} holds {describe_densenet(found)}, but --model_size "
            f"{args.model_size} builds {describe_densenet(wanted)}: "
            + (f"use --model_size {fits[0]}" + (" (or --recipe finetune)" if fits[0] == "base" else "")
               if fits else "no preset builds that DenseNet; export a DenseNet121 with scripts/export_densenet.py"))


def text_backbone_config(args) -> dict | None:
    """`--text_backbone`'s config (a dict), refused with a message when it cannot be read or is not ALBERT."""
    if not args.text_backbone:
        return None
    try:
        config, _ = PretrainedConfig.get_config_dict(args.text_backbone)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SystemExit(f"--text_backbone {args.text_backbone} could not be read ({first_line}). {OFFLINE_HINT}") from None
    if config.get("model_type") != "albert":
        raise SystemExit(
            f"--text_backbone {args.text_backbone} is a {config.get('model_type') or 'model of unknown type'} "
            "checkpoint, not ALBERT: the text tower is ALBERT (the paper's); give an ALBERT checkpoint such as "
            "albert/albert-base-v2")
    return config


def check_tokenizer_fits(args, tokenizer, text_config: dict | None) -> str | None:
    """A tokenizer must not emit ids the pretrained text tower has no embedding for; one smaller than the tower's
    vocabulary is said (the caption decoder, which shares the tower's vocabulary, is then kept from the ids the
    tokenizer cannot decode: `suppressed_caption_ids`)."""
    if text_config is None:
        return None
    embeddings = text_config.get("vocab_size")
    source = f"--tokenizer {args.tokenizer}" if args.tokenizer else f"the tokenizer of {args.text_backbone}"
    if embeddings is not None and len(tokenizer) > embeddings:
        raise SystemExit(
            f"{source} has {len(tokenizer):,} tokens, but --text_backbone {args.text_backbone} embeds "
            f"{embeddings:,}: ids past {embeddings - 1} would index no embedding. Use the tower's own tokenizer (leave "
            "out --tokenizer) or a tokenizer of at most that many tokens")
    if embeddings is not None and len(tokenizer) < embeddings:
        return (f"note: {source} has {len(tokenizer):,} tokens and --text_backbone {args.text_backbone} embeds "
                f"{embeddings:,}: generation never emits the {embeddings - len(tokenizer):,} ids the tokenizer cannot "
                "decode (generation_config.suppress_tokens); the tower's own tokenizer uses them all")
    return None


def suppressed_caption_ids(tokenizer, vocab_size: int) -> list[int]:
    """The decoder's ids past the tokenizer's vocabulary: captions that held them would decode to nothing."""
    return list(range(len(tokenizer), vocab_size))


def backbone_rate_warning(args) -> str | None:
    """A warning when pretrained towers that train would do so at the new layers' rate (legitimate, rarely meant)."""
    training = [name for name, given, frozen in (("ALBERT", args.text_backbone, args.freeze_text),
                                                 ("DenseNet", args.vision_backbone, args.freeze_vision))
                if given and not frozen]
    if not training or args.backbone_learning_rate is not None:
        return None
    verb = "trains" if len(training) == 1 else "train"
    return (f"warning: the pretrained {' and '.join(training)} {verb} at --learning_rate {args.learning_rate:g}, the "
            "rate of the layers trained from scratch; fine-tuning usually gives pretrained towers about 1e-5 (BLIP, "
            "ALBEF): set --backbone_learning_rate (--recipe finetune does) or --freeze_text / --freeze_vision")


def lock_towers(model, args) -> None:
    """Apply `--freeze_text`, `--freeze_vision` (DenseNet's weights and BatchNorm statistics) and
    `--freeze_bn_stats` to a built model."""
    try:
        if args.freeze_text:
            model.lock_text_tower()
        if args.freeze_vision:
            model.lock_image_tower(freeze_bn_stats=True)
        elif args.freeze_bn_stats:
            model.freeze_image_batch_norm(True)
    except ValueError as error:
        raise SystemExit(f"{error}: leave out --freeze_text / --freeze_vision / --freeze_bn_stats for the missing "
                         "tower, or change --modalities") from None


# torchvision's DenseNet121 ImageNet weights as the Hub hosts them (timm's copy of IMAGENET1K_V1)
DENSENET121_HUB_ID = "timm/densenet121.tv_in1k"


def hub_base_models(args) -> list[str]:
    """The Hub ids of the pretrained towers, for the card's `base_model`: `--text_backbone` when it is a Hub id
    (a local folder names none), DenseNet121's for `--vision_backbone imagenet` or a file scripts/export_densenet.py
    wrote from those weights."""
    import os

    ids = []
    if args.text_backbone and not os.path.isdir(args.text_backbone):
        ids.append(args.text_backbone)
    elif args.text_backbone and is_albert_base_v2(args.text_backbone):
        ids.append("albert/albert-base-v2")
    if args.vision_backbone == "imagenet":
        ids.append(DENSENET121_HUB_ID)
    elif args.vision_backbone and os.path.isfile(args.vision_backbone):
        from safetensors import safe_open

        with safe_open(args.vision_backbone, "pt") as handle:
            source = (handle.metadata() or {}).get("source", "")
        if source.startswith("torchvision DenseNet121_Weights.IMAGENET1K_V1"):
            ids.append(DENSENET121_HUB_ID)
    return ids


# albert-base-v2's published configuration, the fields that define the model
ALBERT_BASE_V2 = dict(model_type="albert", vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072, num_hidden_groups=1, inner_group_num=1,
                      hidden_act="gelu_new")


def is_albert_base_v2(folder: str) -> bool:
    """A local folder holds albert-base-v2 (as `hf download albert/albert-base-v2 --local-dir` writes it, or a copy
    fine-tuned from it) when its configuration is the published one and its tokenizer has the published 30,000
    pieces: then the card can name its Hub id, which the folder itself does not record."""
    import json
    import os

    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return False
    if any(config.get(key) != value for key, value in ALBERT_BASE_V2.items()):
        return False
    try:
        return len(AutoTokenizer.from_pretrained(folder)) == ALBERT_BASE_V2["vocab_size"]
    except (OSError, ValueError, TypeError):
        return False


def describe_towers(args) -> str:
    """Where the towers came from and how they trained, for the model card: "ALBERT from albert/albert-base-v2
    (locked), DenseNet121 from imagenet (at lr 1e-05, BatchNorm statistics frozen)", or that both started from
    random weights."""
    parts = []
    for name, source, locked in (("ALBERT", args.text_backbone, args.freeze_text),
                                 ("DenseNet", args.vision_backbone, args.freeze_vision)):
        if not source:
            continue
        if locked:
            how = "locked" + (", BatchNorm statistics included" if name == "DenseNet" else "")
        else:
            how = f"at lr {args.backbone_learning_rate or args.learning_rate}"
            if name == "DenseNet" and args.freeze_bn_stats:
                how += ", BatchNorm statistics frozen"
        parts.append(f"{name} from {source} ({how})")
    return "; ".join(parts) if parts else "both towers from random weights"
