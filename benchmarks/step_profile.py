"""step_profile: where a multi-task training step's time goes: making the batch from the rows, then each part's
forward and backward timed alone, and the optimiser's step, beside the whole step."""

from __future__ import annotations

import torch

from benchmarks import common
from modeling_xattn import XAttnProcessor, train_albert_tokenizer
from modeling_xattn.configuration_xattn import XAttnConfig
from modeling_xattn.modeling_xattn import XAttnForMultiTask
from modeling_xattn.processing_xattn import make_image_processor
from modeling_xattn.training.data.synthetic import synthetic_dataset


def bench(args, device) -> dict:
    """Where a multi-task training step's time goes (the default recipe's model, --profile_preset at its image size,
    --batch_size image-caption pairs): making the batch from the rows (reading and decoding the photos, resizing and
    normalising, tokenising), then each part's forward and backward timed alone on that batch (the image tower, the
    caption encoder, the 3B matching pairs through the fusion layers, the captioning memory's fusion and the decoder)
    and the optimiser's step, beside the whole step. Shares are of the whole step plus the batch making."""
    from modeling_xattn.modeling_xattn import caption_labels, default_prompt
    from modeling_xattn.training.collate import XAttnCollator
    from modeling_xattn.training.data.views import CaptionPairs
    from modeling_xattn.training.data.schema import undecoded
    from modeling_xattn.training.data.sources import load_imagefolder
    from modeling_xattn.training.options import RECIPES

    rows = (undecoded(load_imagefolder(args.profile_data, "train")) if args.profile_data
            else synthetic_dataset(4 * args.batch_size, seed=0))
    corpus = [c for cs in rows["captions"] for c in cs]
    tokenizer = train_albert_tokenizer(corpus, vocab_size=None, min_word_count=5)  # train.py's default
    recipe = RECIPES["default"]
    config = XAttnConfig.from_preset(
        args.profile_preset, text_config={"vocab_size": len(tokenizer)}, fusion_gate=True,
        contrastive_loss=recipe["contrastive_loss"], learnable_temperature=True,
        retrieval_pooling=recipe["retrieval_pooling"], lambda_ce=0.0)
    processor = XAttnProcessor(make_image_processor(config.image_size), tokenizer)
    collate = XAttnCollator(processor, targets="caption")
    examples = CaptionPairs(rows)
    take = [examples[i] for i in range(args.batch_size)]
    make_batch = common.measure(lambda: collate(take), device, args.repeats, args.warmup)
    batch = {k: v.to(device) for k, v in collate(take).items()}
    torch.manual_seed(0)
    model = XAttnForMultiTask(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels, ids, mask = batch["pixel_values"], batch["caption_input_ids"], batch["caption_attention_mask"]

    def backward(output):
        output.float().sum().backward()
        model.zero_grad(set_to_none=True)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with torch.no_grad():
        image_tokens = model.xattn.encode_image(pixels)[0]
        text_tokens = model.xattn.encode_text(ids, mask)
    size = len(pixels)
    pairs = torch.arange(size, device=device).repeat(3)  # the 3B matching pairs' shapes
    prompt, prompt_mask = default_prompt(config, size, device)

    def decoder():
        memory, memory_mask = model._caption_memory(image_tokens.detach())
        return model.captioner(memory, memory_mask, ids, mask, caption_labels(ids, mask, config.pad_token_id)).loss

    parts = {
        "image tower (DenseNet + CBAM + projection)": lambda: backward(model.xattn.encode_image(pixels)[0]),
        "caption encoder (ALBERT)": lambda: backward(model.xattn.encode_text(ids, mask)),
        "matching pairs: 3B pairs through the fusion + ITM head": lambda: backward(model.retrieval.itm(model.xattn.fuse(
            text_tokens[pairs].detach(), mask[pairs], image_tokens[pairs].detach()).pooler_output)),
        "captioning memory (fusion with the empty prompt) + decoder": lambda: backward(decoder()),
        "prompt encoder for the captioning memory": lambda: backward(model.xattn.encode_text(prompt, prompt_mask)),
    }
    timings = {name: common.measure(fn, device, args.repeats, args.warmup)["median_s"] for name, fn in parts.items()}
    whole = common.measure(step, device, args.repeats, args.warmup)["median_s"]
    model(**batch).loss.backward()  # the gradients the optimiser steps with (a parameter without one is skipped)
    optimizer_step = common.measure(lambda: optimizer.step(), device, args.repeats, args.warmup)["median_s"]
    timings["optimizer step (AdamW)"] = optimizer_step
    total = whole + make_batch["median_s"]
    return {"config": f"{args.profile_preset} preset, {config.image_size} px, batch {size}, captions only (retrieval + "
                      f"matching + captioning), data: {args.profile_data or 'embedded'}",
            "making the batch": make_batch["median_s"], "whole step": whole, "parts": timings,
            "shares": {"making the batch": make_batch["median_s"] / total,
                       **{name: value / total for name, value in timings.items()}},
            "steps_per_minute": 60.0 / total}


def rows(profile: dict) -> list[tuple]:
    rows = [(f"training step ({profile['config']})", f"whole step {1000 * profile['whole step']:.0f} ms, "
             f"making the batch {1000 * profile['making the batch']:.0f} ms "
             f"({100 * profile['shares']['making the batch']:.0f}%): {profile['steps_per_minute']:.0f} "
             "steps/min", "", "")]
    for name, value in profile["parts"].items():
        rows.append((f"  {name}", f"{1000 * value:.0f} ms", f"{100 * profile['shares'][name]:.0f}%", ""))
    return rows
