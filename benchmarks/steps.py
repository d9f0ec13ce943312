"""The training step every training figure times: a model of a preset, Adam, and one fixed batch of the multi-task
loss (statements with labels and captions), eager, channels-last or compiled as `train.py` runs them."""

from __future__ import annotations

import torch

from benchmarks import common
from modeling_xattn.configuration_xattn import XAttnConfig
from modeling_xattn.modeling_xattn import XAttnForMultiTask


def training_batch(config, batch_size, device, caption_length: int = 20, text_length: int = 32):
    generator = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size

    def ids(length):
        tokens = torch.randint(5, vocab, (batch_size, length), generator=generator)
        tokens[:, 0], tokens[:, -1] = config.bos_token_id, config.eos_token_id
        return tokens.to(device)

    return {
        "pixel_values": torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator).to(device),
        "input_ids": ids(text_length),
        "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long, device=device),
        "labels": torch.randint(0, 3, (batch_size,), generator=generator).to(device),
        "caption_input_ids": ids(caption_length),
        "caption_attention_mask": torch.ones(batch_size, caption_length, dtype=torch.long, device=device),
    }


def training_setup(args, device, memory_saving: bool, batch_size: int | None = None, compiled: bool = False,
                   model_size: str | None = None, precision: str | None = None, channels_last: bool = False):
    """A model, its optimiser and one batch; `compiled`: what `train.py --torch_compile --channels_last` does (and
    the fused Adam it takes on CUDA); `precision` ("fp32", "bf16"), given, applies on the CPU too; `channels_last`
    alone: what `--channels_last` does without compiling."""
    config = XAttnConfig.from_preset(model_size or args.model_size)
    forced = precision is not None
    precision = precision or args.precision
    torch.manual_seed(0)
    model = XAttnForMultiTask(config).to(device).train()
    model.set_memory_saving(memory_saving)
    fused = {"fused": True} if compiled and device.type == "cuda" else {}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4, **fused)
    batch = training_batch(config, batch_size or args.batch_size, device)
    run = model
    if compiled or channels_last:
        model = model.to(memory_format=torch.channels_last)
        batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
    if compiled:
        run = torch.compile(model, backend=args.compile_backend)

    def forward_backward():
        with common.autocast(device, precision, on_cpu=forced):
            loss = run(**batch).loss
        loss.backward()
        return loss

    def step():
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step, forward_backward
