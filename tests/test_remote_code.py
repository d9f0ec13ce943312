"""Saved folders load with `trust_remote_code=True` in a fresh, offline process where this package cannot be
imported, and reproduce the outputs exactly."""

import os
import subprocess
import sys
import textwrap

import torch
from conftest import make_batch, slow
from safetensors.torch import save_file

from modeling_xattn import XAttnConfig, XAttnForConditionalGeneration, XAttnForMultiTask

CHILD = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_xattn"] = None  # the package must not be importable: only the folder's code may load
    try:
        import modeling_xattn
    except ImportError:
        pass
    else:
        raise SystemExit("package importable")
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import (AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForPreTraining,
                              AutoModelForSequenceClassification, AutoProcessor)

    folder, inputs_file, out_file = sys.argv[1:4]
    inputs = load_file(inputs_file)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
    results = {}
    with torch.no_grad():
        multi = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
        results["multi_logits"] = multi(**inputs).logits
        base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        results["pooled"] = base(**inputs).pooler_output
        cls = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        results["cls_logits"] = cls(**inputs).logits
        captioner = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        results["captions"] = captioner.generate(inputs["pixel_values"], max_new_tokens=6, num_beams=2)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    processed = processor(images=[Image.new("RGB", (40, 30), (200, 10, 10))], text=["a red square"])
    results.update({"proc_" + k: v for k, v in processed.items()})
    save_file({k: v.contiguous() for k, v in results.items()}, out_file)
    """
)


@slow
def test_remote_code_round_trip_in_a_fresh_offline_process(tmp_path, processor):
    from PIL import Image

    config = XAttnConfig.from_preset("tiny", text_config={"vocab_size": len(processor.tokenizer)})
    torch.manual_seed(0)
    model = XAttnForMultiTask(config).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert {"configuration_xattn.py", "modeling_xattn.py", "processing_xattn.py", "model.safetensors"} <= set(
        os.listdir(folder))

    batch = make_batch(config, batch_size=2)
    batch["input_ids"].clamp_(max=len(processor.tokenizer) - 1)
    save_file(batch, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        expected = {
            "multi_logits": model(**batch).logits,
            "pooled": model.xattn(**batch).pooler_output,
            "cls_logits": model(**batch).logits,
            "captions": model.generate(batch["pixel_values"], max_new_tokens=6, num_beams=2),
        }
    processed = processor(images=[Image.new("RGB", (40, 30), (200, 10, 10))], text=["a red square"])
    expected.update({"proc_" + k: v for k, v in processed.items()})

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    (workdir / "child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "child.py", str(folder), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "out.safetensors"))
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_captioning_folder_has_image_text_to_text_auto_map(tmp_path, tiny_config):
    XAttnForConditionalGeneration(tiny_config).save_pretrained(tmp_path)
    import json

    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_xattn.XAttnForConditionalGeneration"
    assert auto_map["AutoModel"] == "modeling_xattn.XAttnModel"
