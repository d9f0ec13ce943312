"""precision: the training step of each --precision_presets entry (preset:batch) in fp32 and under bf16 autocast,
with contiguous and channels-last images and convolution weights, on the CPU too."""

from __future__ import annotations

from benchmarks import common, steps
from modeling_xattn.configuration_xattn import XAttnConfig


def bench(args, device) -> dict:
    """The training step (multi-task, Adam) of each `--precision_presets` entry in fp32 and under bf16 autocast,
    with contiguous and channels-last images and convolution weights: the median step and its ratios."""
    result = {"config": "training step, multi-task loss (Formula 4), Adam; bf16 = torch.autocast(bfloat16)"}
    for entry in args.precision_presets.split(","):
        preset, _, size = entry.strip().partition(":")
        size = int(size or args.batch_size)
        timings = {}
        for precision in ("fp32", "bf16"):
            for layout in ("contiguous", "channels_last"):
                _, step, _ = steps.training_setup(args, device, False, batch_size=size, model_size=preset,
                                            precision=precision, channels_last=layout == "channels_last")
                timing = common.measure(step, device, args.repeats, max(args.warmup, 1))
                timings[f"{precision}_{layout}"] = {**timing, "samples_per_s": size / timing["median_s"]}
                step = None
                common.free(device)
        fp32 = timings["fp32_contiguous"]["median_s"]
        result[f"{preset}_batch{size}"] = {
            "preset": preset, "batch_size": size, "image_size": XAttnConfig.from_preset(preset).image_size,
            **timings,
            "bf16_vs_fp32": timings["bf16_contiguous"]["median_s"] / fp32,
            "bf16_channels_last_vs_fp32": timings["bf16_channels_last"]["median_s"] / fp32,
            "fp32_channels_last_vs_fp32": timings["fp32_channels_last"]["median_s"] / fp32,
        }
    return result


def rows(section: dict) -> list[tuple]:
    rows = []
    for value in section.values():
        if not isinstance(value, dict) or "preset" not in value:
            continue
        steps_ms = ", ".join(f"{name.replace('_', ' ')} {1000 * value[name]['median_s']:.0f} ms"
                             for name in ("fp32_contiguous", "fp32_channels_last", "bf16_contiguous",
                                          "bf16_channels_last"))
        rows.append((f"training step, {value['preset']} preset ({value['image_size']} px), batch "
                     f"{value['batch_size']}: fp32 vs bf16 autocast", steps_ms,
                     f"bf16 {value['bf16_vs_fp32']:.2f}x, bf16+channels-last "
                     f"{value['bf16_channels_last_vs_fp32']:.2f}x, fp32+channels-last "
                     f"{value['fp32_channels_last_vs_fp32']:.2f}x of fp32's time", "use bf16 where < 1x"))
    return rows
