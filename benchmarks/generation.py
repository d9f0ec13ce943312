"""generation: `generate()` with the KV cache against without (greedy and beam 3, exactly --new_tokens new tokens,
the tokens compared), the decoder's own speed-up with the image encoding timed alone and subtracted, and
transformers' static cache (compiled decoding on a GPU)."""

from __future__ import annotations

import torch

from benchmarks import common
from modeling_xattn.configuration_xattn import XAttnConfig
from modeling_xattn.modeling_xattn import XAttnForConditionalGeneration

TARGET = ">= 3x tokens/s with the cache"
TARGET_STATIC = ">= 3x vs none, >= 2x vs dynamic"


def bench(args, device) -> dict:
    config = XAttnConfig.from_preset(args.model_size)
    torch.manual_seed(0)
    model = XAttnForConditionalGeneration(config).to(device).eval()
    pixels = torch.randn(args.generation_batch, 3, config.image_size, config.image_size, device=device)
    new = args.new_tokens
    result = {"config": f"{args.model_size} preset, {args.generation_batch} images, {new} new tokens "
                        f"(min_new_tokens = max_new_tokens), whole generate() call incl. image encoding"}

    def encode():
        with torch.inference_mode(), common.autocast(device, args.precision):
            model._caption_memory(model.xattn.encode_image(pixels)[0])

    # encoding the images (DenseNet, ALBERT on the prompt, fusion) is the same with and without the cache; timed
    # alone so that the decoder's own speed-up can be given beside the whole call's
    encode_s = common.measure(encode, device, args.repeats, args.warmup)["median_s"]
    result["encode_s"] = encode_s
    for beams in (1, 3):
        outputs, timings = {}, {}
        for use_cache in (True, False):
            def run():
                with torch.inference_mode(), common.autocast(device, args.precision):
                    outputs[use_cache] = model.generate(pixels, num_beams=beams, max_new_tokens=new,
                                                        min_new_tokens=new, use_cache=use_cache)

            timings[use_cache] = common.measure(run, device, args.repeats, args.warmup)
        tokens = args.generation_batch * new
        name = "greedy" if beams == 1 else f"beam{beams}"
        result[name] = {
            "tokens_per_s_cache": tokens / timings[True]["median_s"],
            "tokens_per_s_no_cache": tokens / timings[False]["median_s"],
            "speedup": timings[False]["median_s"] / timings[True]["median_s"],
            "decoder_speedup": (timings[False]["median_s"] - encode_s) / (timings[True]["median_s"] - encode_s),
            "identical_outputs": bool(torch.equal(outputs[True], outputs[False])),
            "new_tokens": int(outputs[True].shape[1] - 1),
            "times_cache_s": timings[True]["times_s"],
            "times_no_cache_s": timings[False]["times_s"],
        }

        # transformers' StaticCache; on a GPU transformers compiles the decoding step (CUDA graphs), and the
        # warm-up calls absorb the compilation and the graph capture
        def run_static():
            with torch.inference_mode(), common.autocast(device, args.precision):
                outputs["static"] = model.generate(pixels, num_beams=beams, max_new_tokens=new, min_new_tokens=new,
                                                   cache_implementation="static")

        static = common.measure(run_static, device, args.repeats, max(args.warmup, 3))
        result[name].update({
            "tokens_per_s_static": tokens / static["median_s"],
            # observed, not assumed: transformers keeps the compiled step on the decoder once it has compiled it
            "static_compiled": hasattr(model.captioner.text_decoder, "_compiled_call"),
            "static_vs_dynamic": timings[True]["median_s"] / static["median_s"],
            "static_vs_none": timings[False]["median_s"] / static["median_s"],
            "identical_static": bool(torch.equal(outputs["static"], outputs[True])),
            "times_static_s": static["times_s"],
        })
    return result


def rows(section: dict) -> list[tuple]:
    rows = []
    for name in ("greedy", "beam3"):
        g = section[name]
        rows.append((f"generate {name}, cache vs none", f"{g['tokens_per_s_cache']:.1f} vs "
                     f"{g['tokens_per_s_no_cache']:.1f} tok/s, identical: {g['identical_outputs']}; decoding "
                     f"alone (minus {section['encode_s']:.2f} s of image encoding): "
                     f"{g['decoder_speedup']:.1f}x", f"{g['speedup']:.1f}x", TARGET))
        if "tokens_per_s_static" in g:
            compiled = "static cache, compiled decoding" if g["static_compiled"] else "static cache (not compiled: CPU)"
            rows.append((f"generate {name}, {compiled}", f"{g['tokens_per_s_static']:.1f} tok/s, identical: "
                         f"{g['identical_static']}; vs dynamic cache {g['static_vs_dynamic']:.2f}x",
                         f"{g['static_vs_none']:.1f}x", TARGET_STATIC))
    return rows
