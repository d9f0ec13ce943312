"""Typed options: every option of the commands as dataclasses, grouped as `--help` lists them, parsed by
transformers' `HfArgumentParser` (as transformers' example scripts do). The library takes these objects:
`train(TrainingOptions(...))`, `load_split(DataOptions(dataset="imagefolder", data_dir="photos/"), "validation")`.

The recipes live here too: `--recipe default` is what measured best on real held-out photos (docs/flickr8k.md),
`--recipe paper` the paper's text, choice by choice, `--recipe finetune` the paper's model fine-tuned from pretrained
towers (albert-base-v2, ImageNet DenseNet121) as BLIP and ALBEF fine-tune theirs; an option left unset (None) takes
its recipe's value, an option given explicitly wins. Launcher settings (mixed precision, gradient accumulation,
torch.compile) left unset are Accelerate's: what `accelerate launch` or its config file says.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, make_dataclass
from typing import Literal

from transformers import HfArgumentParser

# The data options are the data layer's own; they are named here too, where every command's options are found.
from modeling_xattn.training.data.options import (  # noqa: F401
    DataArguments,
    DataOptions,
    StreamingArguments,
    data_options,
    option,
)
from modeling_xattn.training.tasks import loss_weight_specs


@dataclass
class ModelArguments:
    """The model: preset, image size, ablation switches, pretrained towers."""

    _argument_group_name = "model"

    tokenizer: str | None = option(
        None,
        "tokenizer folder or Hub id (albert/albert-base-v2); default: the --text_backbone's own, else one trained on "
        "the data")
    vocab_size: int | None = option(
        None,
        "pieces of a tokenizer trained on the data: the most frequent words up to this many (default: every word seen "
        "at least --min_word_count times, as captioning vocabularies are built, so that words stay whole)")
    min_word_count: int = option(
        5, "without --vocab_size, the words the trained tokenizer keeps whole: those seen at least this many times")
    model_size: Literal["tiny", "small", "base"] | None = option(
        None,
        "preset: tiny, small, base (the paper's: DenseNet121, albert-base-v2's shape)")
    image_size: int | None = option(None, "image side in pixels (default: the preset's: tiny and small 64, base 224)")
    fusion_type: Literal["cross_attention", "concat"] = option("cross_attention")
    modalities: Literal["both", "image", "text"] = option("both")
    no_cbam: bool = option(False)
    text_backbone: str | None = option(
        None,
        "pretrained ALBERT: Hub id or folder (albert/albert-base-v2), or none (a tower from random weights)")
    vision_backbone: str | None = option(
        None,
        "'imagenet' (torchvision's DenseNet121 download) or a .safetensors DenseNet state dict (scripts/"
        "export_densenet.py writes one; DenseNet121 needs --model_size base), or none (random weights)")
    freeze_text: bool = option(False, "lock ALBERT's weights (its projection still trains)")
    freeze_vision: bool = option(
        False,
        "lock DenseNet's weights and its BatchNorm statistics (CBAM and the projection still train)")
    freeze_bn_stats: bool = option(
        False,
        "DenseNet's BatchNorm layers normalise with their running statistics and never update them while the tower "
        "trains (always so with --freeze_vision; open_clip's lock_image_freeze_bn_stats)")
    memory_saving: bool = option(
        False,
        "DenseNet memory_efficient + activation checkpointing of ALBERT, fusion and decoder layers",
        aliases=["--gradient_checkpointing"])


@dataclass
class _TasksAndLosses:
    """Tasks, losses and the optimisation; an option left unset (None) takes `--recipe`'s value."""

    _argument_group_name = "optimisation (an option left unset takes --recipe's value)"

    tasks: str = option(
        "auto",
        "comma-separated subset of classification, retrieval, captioning; or vqa (answers as classes, soft scores "
        "min(n/3, 1)), alone or with retrieval/captioning. auto (default): every task whose targets the training rows"
        " carry")
    num_answers: int = option(3129, "VQA answer vocabulary size (most frequent)")
    recipe: Literal["default", "paper", "finetune"] = option(
        "default",
        "default: the choices that measured best on real held-out photos (docs/flickr8k.md); paper: the paper's "
        "literal choices (Formula 2 as written, Adam with its coupled weight decay on every weight, Formula 5, no "
        "augmentation, plain cross-attention, mean pooling); finetune: the base preset from albert-base-v2 and ImageNet "
        "DenseNet121 with albert-base-v2's tokenizer, the towers slower than the new layers, after a warm-up, cosine "
        "decay (README, Fine-tuning on a GPU). Each option a recipe sets lists the recipes' values in its help; an "
        "option given explicitly overrides the recipe's value")
    contrastive_loss: Literal["margin", "margin_squared", "infonce", "sigmoid"] | None = option(
        None,
        "retrieval loss: margin (the paper's Formula 2 as written), margin_squared (Hadsell's squared form), infonce "
        "(CLIP's) or sigmoid (SigLIP's pairwise loss)")
    contrastive_margin: float = option(1.0, "m of Formula 2")
    contrastive_temperature: float = option(0.07, "InfoNCE temperature (its initial value when learned)")
    learnable_temperature: bool | None = option(
        None,
        "learn InfoNCE's temperature (CLIP: logit scale from ln(1/0.07), clamped at ln 100, no weight decay)",
        nargs="?", const=True)
    fusion_gate: bool | None = option(
        None,
        "tanh-gated cross-attention initialised closed (Flamingo): the full model starts as the concatenation model",
        nargs="?", const=True)
    fusion_gate_init: float = option(
        0.0,
        "initial g of the gates (0: closed, exactly the concatenation model at the start)")
    retrieval_pooling: Literal["mean", "attention"] | None = option(
        None,
        "pooling of the retrieval embeddings")


# Formula 4's weights, one option per weight of the task registry (`--lambda_ce`, ...): a task's `LossWeight`s are its
# options, so a new task needs no line here.
_LossWeights = make_dataclass(
    "_LossWeights",
    [(weight.name, float if weight.default is not None else float | None, option(weight.default, weight.help))
     for weight in loss_weight_specs()],
    bases=(_TasksAndLosses,))


@dataclass
class OptimisationArguments(_LossWeights):
    """Tasks, losses (Formula 4's weights from the task registry) and the optimisation; an option left unset (None)
    takes `--recipe`'s value."""

    itm_negatives: Literal["hard", "random"] = option(
        "hard",
        "the matching loss's in-batch negatives: hard (drawn by contrastive similarity, ALBEF's and BLIP's) or random "
        "(uniform among the real negatives)")
    caption_label_smoothing: float | None = option(
        None,
        "label smoothing of the caption loss (0: Formula 3 as written; finetune's is BLIP's)")
    caption_dropout: float | None = option(
        None,
        "dropout of the caption decoder (its hidden and attention dropout; the preset's: 0.1, BERT's and BLIP's "
        "decoder's)")
    num_beams: int = option(3, "beams in the saved generation_config.json (evaluate, predict and the pipelines use it)")
    optimizer: Literal["adamw", "adam"] | None = option(
        None,
        "adamw: Adam with decoupled weight decay; adam: torch's Adam, which adds the decay to the gradient, so that "
        "Adam's normalisation drives weights with small gradients to zero at the learning rate per step "
        "(docs/flickr8k.md)")
    learning_rate: float | None = option(
        None,
        "peak learning rate of the layers the run trains from scratch (and of the towers without "
        "--backbone_learning_rate)")
    backbone_learning_rate: float | None = option(
        None,
        "peak learning rate of ALBERT and DenseNet (default: --learning_rate; finetune's is BLIP's and ALBEF's "
        "fine-tuning rate)")
    weight_decay: float | None = option(None, "weight decay (decoupled under --optimizer adamw)")
    decay_exclusions: bool | None = option(
        None,
        "no weight decay on biases, norms, embeddings, gates, the logit scale and pooling queries (off: decay on every "
        "weight)", nargs="?", const=True)
    random_crop_scale: float | None = option(
        None,
        "training photos are cropped to a random area in [scale, 1] of the photo and aspect 3/4-4/3, then resized "
        "(RandomResizedCrop, seeded per example and epoch; no flips: captions say left and right; not applied to "
        "streamed data); 1 = no augmentation (docs/flickr8k.md says why the default recipe does not crop; finetune's "
        "crops are BLIP's and ALBEF's)")
    caption_sampling: Literal["pairs", "one_per_photo"] = option(
        "pairs",
        "pairs: an epoch is every image-caption pair (5 examples for a photo with 5 captions); one_per_photo: an "
        "epoch is every photo once, with one of its captions drawn per epoch (seeded, so a resumed run draws the "
        "same)")
    batch_size: int = option(32, "per process")
    gradient_accumulation_steps: int | None = option(
        None,
        "batches per optimiser step (default: Accelerate's, 1 unless ACCELERATE_GRADIENT_ACCUMULATION_STEPS or a "
        "DeepSpeed config says otherwise)")
    num_epochs: int | None = option(
        None,
        "an epoch is one pass over every image-caption pair (finetune's epochs are BLIP's COCO captioning's)")
    max_steps: int | None = option(None, "stop after this many optimiser steps")
    max_train_minutes: float | None = option(None, "stop (and evaluate, save) after this many minutes")
    lr_decay_beta: float | None = option(
        None,
        "Formula 5: lr *= beta after an evaluation whose loss is not below the previous one's (1 = off); it "
        "multiplies the schedule's rate")
    lr_scheduler: Literal["constant", "cosine"] | None = option(
        None,
        "cosine: from the peak to 0 over --max_steps, or over --max_train_minutes of training when that ends first. "
        "constant: the peak after the warm-up (docs/flickr8k.md compares the two; finetune's cosine is BLIP's and "
        "ALBEF's)")
    warmup_steps: int | None = option(
        None, "linear warm-up of the learning rate")
    max_grad_norm: float | None = option(
        None,
        "clip the gradients' global norm (0: off)")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = option(
        None,
        "autocast precision (default: what `accelerate launch --mixed_precision` or its config file says; without a "
        "launcher, no, except bf16 for the base preset on a CPU with native bf16, where it measured faster, and the "
        "small preset slower: docs/performance.md)")
    seed: int = option(42)
    cpu: bool = option(False, "train on the CPU even where a GPU is present")
    fsdp: bool = option(
        False,
        "shard parameters, gradients and optimiser state over the processes with FSDP2 (torch's fully_shard; "
        "each fusion, ALBERT and decoder layer and the vision tower a unit, as scripts/accelerate/fsdp.yaml). For "
        "torchrun, on CPU processes too, where Accelerate's FSDP config falls back to DDP. Not with --torch_compile")


@dataclass
class SpeedArguments:
    """Speed levers."""

    _argument_group_name = "speed (see docs/performance.md)"

    torch_compile: bool | None = option(
        None,
        "compile the model with torch.compile through Accelerate's dynamo plugin (default: what `accelerate launch "
        "--dynamo_backend` or its config file says, else no; --no-torch_compile overrides the launcher)",
        nargs="?", const=True)
    torch_compile_backend: str = option("inductor", "torch.compile backend")
    torch_compile_mode: str | None = option(
        None,
        "torch.compile mode: default, reduce-overhead, max-autotune (default: torch's)")
    pad_to_max_length: bool | None = option(
        None,
        "pad every text and caption to the processor's maximum length, so that every batch has one shape (default: "
        "on when the model is compiled, where each new length would trace the step again; off otherwise, where "
        "padding costs time). It changes how many random numbers dropout draws, so a run with it and one without "
        "differ step by step", nargs="?", const=True)
    channels_last: bool = option(
        False,
        "channels-last memory format for the images and the convolution weights (faster DenseNet convolutions on "
        "tensor cores)")


@dataclass
class RunArguments:
    """Evaluation, checkpoints, trackers and the Hub push."""

    _argument_group_name = "evaluation and checkpoints"

    output_dir: str = option("outputs/xattn")
    overwrite_output_dir: bool = option(
        False,
        "train into an --output_dir that already holds a model or checkpoints: its checkpoints/, best/ and runs/ are "
        "removed first and its model files replaced at the end (without it, such a folder stops the run; "
        "--resume_from_checkpoint latest continues it instead)")
    eval_steps: int = option(0, "evaluate every N steps (0: every epoch; with --streaming, every 1000 steps)")
    save_steps: int = option(0, "save_state every N steps (0: every epoch; with --streaming, every 1000 steps)")
    save_total_limit: int = option(2)
    metric_for_best_model: str = option(
        "val_loss",
        "validation metric that picks the best checkpoint (best/): val_loss (lower is better), val_accuracy, "
        "val_i2t_R@1, vqa_accuracy (the official VQA accuracy), cider or another caption metric (bleu_4, meteor, "
        "rouge_l: the COCO toolkit's, on --caption_eval_samples validation photos captioned at each evaluation); "
        "without 'val_', the validation metric of that name")
    caption_eval_samples: int = option(
        500,
        "validation photos captioned (greedy) at each evaluation when --metric_for_best_model is a caption metric: "
        "the first N with captions")
    resume_from_checkpoint: str | None = option(None, "'latest' or a checkpoint folder")
    report_to: str = option("tensorboard", "Accelerate tracker, or 'none'")
    logging_dir: str | None = option(
        None, "where the tracker writes (default: OUTPUT_DIR/runs, which the Hub push leaves out unless asked)")
    logging_steps: int = option(
        50,
        "every N optimiser steps the losses, averaged over those steps on the device, reach the log, the progress bar "
        "and history.json, and are checked for a non-finite value (transformers' meaning); between them a step never "
        "waits for the device")
    no_progress: bool = option(False)
    push_to_hub: bool = option(False, "push the final folder with scripts/push_to_hub.py")
    hub_model_id: str | None = option(None, "user/name to push to")
    hub_private: bool = option(False)


# The training recipes: every option a recipe sets, and its value. docs/training.md says where each finetune value
# comes from (the paper, BLIP, ALBEF, open_clip).
RECIPES = {
    "default": dict(model_size="tiny", learning_rate=1e-3, num_epochs=2, contrastive_loss="infonce",
                    learnable_temperature=True, fusion_gate=True, retrieval_pooling="attention", optimizer="adamw",
                    weight_decay=0.05, decay_exclusions=True, random_crop_scale=1.0, lr_decay_beta=1.0,
                    lr_scheduler="constant", warmup_steps=100, lambda_itm=1.0, max_grad_norm=1.0,
                    caption_label_smoothing=0.0),
    "paper": dict(model_size="tiny", learning_rate=1e-3, num_epochs=2, contrastive_loss="margin",
                  learnable_temperature=False, fusion_gate=False, retrieval_pooling="mean", optimizer="adam",
                  weight_decay=1e-4, decay_exclusions=False, random_crop_scale=1.0, lr_decay_beta=0.5,
                  lr_scheduler="constant", warmup_steps=0, lambda_itm=0.0, max_grad_norm=0.0,
                  caption_label_smoothing=0.0),
    "finetune": dict(model_size="base", text_backbone="albert/albert-base-v2", vision_backbone="imagenet",
                     learning_rate=1e-4, backbone_learning_rate=1e-5, num_epochs=5, contrastive_loss="infonce",
                     learnable_temperature=True, fusion_gate=True, retrieval_pooling="attention", optimizer="adamw",
                     weight_decay=0.05, decay_exclusions=True, random_crop_scale=0.5, lr_decay_beta=1.0,
                     lr_scheduler="cosine", warmup_steps=1000, lambda_itm=1.0, max_grad_norm=1.0,
                     caption_label_smoothing=0.1),
}
# Switches a recipe or the launcher sets that a command line can turn either way (--fusion_gate / --no-fusion_gate).
NEGATABLE = ("learnable_temperature", "fusion_gate", "decay_exclusions", "torch_compile")


@dataclass
class TrainingOptions(DataArguments, StreamingArguments, ModelArguments, OptimisationArguments, SpeedArguments,
                      RunArguments):
    """Every option of a training run: what `train` takes. An option left None takes `recipe`'s value."""

    def __post_init__(self):
        apply_recipe(self)
        for name in ("text_backbone", "vision_backbone", "tokenizer"):  # "none" turns a recipe's tower off
            if isinstance(getattr(self, name), str) and getattr(self, name).strip().lower() in ("none", ""):
                setattr(self, name, None)


TRAINING_GROUPS = (DataArguments, StreamingArguments, ModelArguments, OptimisationArguments, SpeedArguments,
                   RunArguments)


def apply_recipe(options):
    """Fill every option left unset (None) from `options.recipe`; explicit options win."""
    if options.recipe not in RECIPES:
        raise ValueError(f"recipe {options.recipe!r}: choose one of {sorted(RECIPES)}")
    for name, value in RECIPES[options.recipe].items():
        if getattr(options, name, None) is None:
            setattr(options, name, value)
    return options


def parser_for(groups, description: str | None = None) -> HfArgumentParser:
    """An `HfArgumentParser` for option groups (dataclasses), `--help` grouped as they are; the recipe switches
    get their `--no-` forms."""
    parser = HfArgumentParser(groups, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    recipe_options = {f.name for group in groups if group in TRAINING_GROUPS for f in fields(group)}
    for group in parser._action_groups:
        for action in group._group_actions:
            if action.dest in recipe_options and action.dest != "recipe":
                action.help = recipe_help(action.dest, action.help)
        for name in NEGATABLE:
            if any(action.dest == name for action in group._group_actions):
                group.add_argument(f"--no-{name}", f"--no_{name}", dest=name, action="store_false", default=None,
                                   help=f"the opposite of --{name}")
    return parser


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def recipe_help(name: str, help_text: str | None) -> str | None:
    """An option's help with the value each recipe gives it, read from `RECIPES` (nothing where no recipe sets it)."""
    values = [f"{recipe} {_shown(values[name])}" for recipe, values in RECIPES.items() if name in values]
    if not values:
        return help_text
    return f"{help_text + '. ' if help_text else ''}Recipes: {', '.join(values)}"


def parse_options(groups, argv=None, description: str | None = None):
    """Parse `argv` with `parser_for(groups)` into one instance of each group; argparse's own errors (an unknown or
    malformed option) stop the command with its usage, as any command line does."""
    namespace = vars(parser_for(groups, description).parse_args(argv))
    return tuple(group(**{f.name: namespace.pop(f.name) for f in fields(group) if f.name in namespace})
                 for group in groups)


def parse_merged(options_class, groups, argv=None, description: str | None = None):
    """Parse `argv` with `groups` into one `options_class` (a dataclass that inherits every group)."""
    parts = parse_options(groups, argv, description)
    return options_class(**{name: value for part in parts for name, value in vars(part).items()})


def parse_training_options(argv=None, description: str | None = None) -> TrainingOptions:
    """The training command line as one `TrainingOptions`, its recipe applied."""
    return parse_merged(TrainingOptions, TRAINING_GROUPS, argv, description)


def logging_dir(args) -> str:
    """Where the tracker writes: `--logging_dir`, else `runs/` in the output folder (the push leaves it out)."""
    return args.logging_dir or os.path.join(args.output_dir, "runs")
