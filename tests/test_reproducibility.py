"""A seeded run is the same run every time on one machine, with every thread the machine has: the matching pairs are
gathered with index_select, whose backward sums a repeated row in a fixed order (tensor[index]'s backward,
index_put_ with accumulate, adds them across threads in no fixed order)."""

import torch
from conftest import make_batch

from modeling_xattn import XAttnConfig, XAttnForMultiTask


def gradients(model, batch):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same negatives drawn each time
    model(**batch).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_a_multi_threaded_step_gives_bitwise_equal_gradients_every_time():
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        config = XAttnConfig.from_preset("tiny", fusion_gate=True, fusion_gate_init=0.5, lambda_itm=1.0)
        torch.manual_seed(0)
        model = XAttnForMultiTask(config).train()
        batch = make_batch(config, batch_size=32, text_length=12)
        batch = {"pixel_values": batch["pixel_values"], "caption_input_ids": batch["input_ids"],
                 "caption_attention_mask": batch["attention_mask"]}
        first = gradients(model, batch)
        assert any(name.startswith("xattn.layers") and "cross_attention" in name for name in first)
        for _ in range(4):
            again = gradients(model, batch)
            assert again.keys() == first.keys()
            different = [name for name in first if not torch.equal(first[name], again[name])]
            assert not different, different[:5]
    finally:
        torch.set_num_threads(threads)
