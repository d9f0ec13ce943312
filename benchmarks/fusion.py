"""fusion: our fusion layer against transformers' `LxmertXLayer`, forward and backward, at matched sub-layers
(scripts/benchmark.py's docstring lists them), optionally both compiled."""

from __future__ import annotations

import torch

from benchmarks import common
from modeling_xattn.configuration_xattn import XAttnConfig
from modeling_xattn.modeling_xattn import XAttnFusionLayer

TARGET = "<= 0.6x LXMERT's time"


def bench(args, device) -> dict:
    from transformers import LxmertConfig
    from transformers.models.lxmert.modeling_lxmert import LxmertXLayer

    hidden, heads, batch = args.fusion_hidden, max(args.fusion_hidden // 64, 1), args.batch_size
    ours_config = XAttnConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
                              hidden_dropout_prob=0.1, attention_dropout_prob=0.0)
    lxmert_config = LxmertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
                                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, hidden_act="gelu")
    torch.manual_seed(0)
    layers = {"ours": XAttnFusionLayer(ours_config), "lxmert": LxmertXLayer(lxmert_config)}
    text = torch.randn(batch, 32, hidden, device=device, requires_grad=True)
    image = torch.randn(batch, 49, hidden, device=device, requires_grad=True)
    text_mask = torch.ones(batch, 32, dtype=torch.long, device=device)
    text_mask[: batch // 2, 24:] = 0  # half the statements are padded, as in real batches
    additive_mask = (1.0 - text_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min  # LXMERT's format

    def step(name, layer):
        def run():
            with common.autocast(device, args.precision):
                if name.startswith("ours"):
                    new_text, new_image, *_ = layer(text, text_mask, image)
                else:
                    new_text, new_image = layer(text, additive_mask, image, None)
                loss = new_text.float().sum() + new_image.float().sum()
            loss.backward()
            layer.zero_grad(set_to_none=True)
            text.grad = image.grad = None

        return run

    variants = {name: layer.to(device).train() for name, layer in layers.items()}
    if args.compile:
        variants.update({f"{name}+compile": torch.compile(layer) for name, layer in layers.items()})
    result = {"config": f"hidden {hidden}, {heads} heads, 32 text + 49 image tokens, batch {batch}, fwd+bwd",
              "parameters": {name: sum(p.numel() for p in layer.parameters()) for name, layer in layers.items()},
              "flops": {name: common.count_flops(step(name, layer)) for name, layer in layers.items()}}
    for name, layer in variants.items():
        result[name] = common.measure(step(name, layer), device, args.repeats, args.warmup)
    result["ratio"] = result["ours"]["median_s"] / result["lxmert"]["median_s"]
    if args.compile:
        result["ratio_compiled"] = result["ours+compile"]["median_s"] / result["lxmert+compile"]["median_s"]
        result["ratio_ours_compiled_vs_lxmert_eager"] = result["ours+compile"]["median_s"] / result["lxmert"]["median_s"]
    return result


def rows(f: dict) -> list[tuple]:
    rows = [("fusion fwd+bwd vs LxmertXLayer", f"{1000 * f['ours']['median_s']:.0f} ms vs "
             f"{1000 * f['lxmert']['median_s']:.0f} ms", f"{f['ratio']:.2f}x", TARGET)]
    if "ratio_compiled" in f:
        rows.append(("fusion, both torch.compile'd", f"{1000 * f['ours+compile']['median_s']:.0f} ms vs "
                     f"{1000 * f['lxmert+compile']['median_s']:.0f} ms", f"{f['ratio_compiled']:.2f}x", ""))
    return rows
