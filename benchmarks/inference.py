"""inference: classification latency per image-text pair at batch 1 and --batch_size (the --model_size preset):
`torch.inference_mode` (the default) against `torch.no_grad`, and with channels-last images and DenseNet weights."""

from __future__ import annotations

import torch

from benchmarks import common, steps
from modeling_xattn.configuration_xattn import XAttnConfig
from modeling_xattn.modeling_xattn import XAttnForSequenceClassification


def bench(args, device) -> dict:
    config = XAttnConfig.from_preset(args.model_size)
    torch.manual_seed(0)
    model = XAttnForSequenceClassification(config).to(device).eval()
    batches = {size: steps.training_batch(config, size, device) for size in (1, args.batch_size)}
    result = {"config": f"{args.model_size} preset classification, torch.inference_mode, 32-token statements"}
    for size, batch in batches.items():
        inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
        for name in ("default", "no_grad", "channels_last"):
            grad_mode = torch.no_grad if name == "no_grad" else torch.inference_mode
            if name == "channels_last":
                run_model = model.to(memory_format=torch.channels_last)
                run_inputs = {**inputs, "pixel_values": inputs["pixel_values"].contiguous(memory_format=torch.channels_last)}
            else:
                run_model = model.to(memory_format=torch.contiguous_format)
                run_inputs = inputs

            def run():
                with grad_mode(), common.autocast(device, args.precision):
                    run_model(**run_inputs)

            timing = common.measure(run, device, args.repeats, args.warmup)
            result[f"batch{size}_{name}"] = {**timing, "ms_per_pair": 1000 * timing["median_s"] / size}
    return result


def rows(section: dict) -> list[tuple]:
    rows = []
    for key, value in section.items():
        if key.startswith("batch"):
            size, variant = key.split("_", 1)
            rows.append((f"classification latency, {size.replace('batch', 'batch ')}, {variant}",
                         f"{value['ms_per_pair']:.1f} ms/pair", "", ""))
    return rows
