"""transformers pipelines from a saved folder and from the Hub (test server), in fresh processes where this package
cannot be imported, and in-process with a model object. The pipeline's caption is `model.generate`'s."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hub_server import serve
from PIL import Image
from transformers import pipeline

from conftest import slow
from modeling_xattn import XAttnConfig, XAttnForMultiTask
from modeling_xattn.pipeline_xattn import CUSTOM_PIPELINES

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json, sys
    sys.modules["modeling_xattn"] = None  # only the folder's (or repository's) own code may load
    from transformers import pipeline
    model, revision, red, blue, out = sys.argv[1:6]
    kwargs = dict(model=model, trust_remote_code=True, revision=None if revision == "-" else revision)
    captioner = pipeline("image-to-text", **kwargs)
    classifier = pipeline("image-text-classification", **kwargs)
    ranker = pipeline("zero-shot-image-classification", **kwargs)
    results = {
        "caption": captioner(red),
        "captions_batched": captioner([red, blue], batch_size=2),
        "caption_short": captioner(red, max_new_tokens=2, num_beams=2),
        "classes": classifier(red, text="a red circle"),
        "classes_batched": classifier([red, blue], text=["a red circle", "a blue square"], batch_size=2),
        "ranking": ranker(red, candidate_labels=["a red circle", "two dogs play", "a plane"]),
    }
    json.dump(results, open(out, "w"))
""")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, processor):
    folder = tmp_path_factory.mktemp("pipeline_model")
    torch.manual_seed(0)
    model = XAttnForMultiTask(XAttnConfig.from_preset("tiny", text_config={"vocab_size": len(processor.tokenizer)}))
    model.generation_config.num_beams = 2  # the saved generation config is what the pipeline uses
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    Image.new("RGB", (80, 60), (200, 30, 30)).save(folder.parent / "red.png")
    Image.new("RGB", (50, 70), (30, 30, 200)).save(folder.parent / "blue.jpg")
    return folder


def expected_results(folder, processor):
    model = XAttnForMultiTask.from_pretrained(folder).eval()
    red, blue = (Image.open(folder.parent / name) for name in ("red.png", "blue.jpg"))

    def caption(images, **kwargs):
        ids = model.generate(processor(images=images)["pixel_values"], **kwargs)
        return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]

    with torch.no_grad():
        inputs = processor(images=[red], text=["a red circle"])
        probabilities = model(**inputs).logits.softmax(-1)[0]
        image_tokens, _ = model.xattn.encode_image(inputs["pixel_values"])
        candidates = ["a red circle", "two dogs play", "a plane"]
        texts = processor(text=candidates)
        matching = model.itm_score(texts["input_ids"], texts["attention_mask"],
                                   image_hidden_states=image_tokens.expand(3, -1, -1))
    return {
        "caption": caption([red])[0],
        "captions": caption([red]) + caption([blue]),
        "caption_short": caption([red], max_new_tokens=2)[0],
        "classes": sorted(((model.config.id2label[i], float(p)) for i, p in enumerate(probabilities)),
                          key=lambda item: -item[1]),
        "ranking": sorted(zip(candidates, matching.tolist()), key=lambda item: -item[1]),
    }


def check(results, expected):
    assert results["caption"] == [{"generated_text": expected["caption"]}]
    assert [r[0]["generated_text"] for r in results["captions_batched"]] == expected["captions"]
    assert results["caption_short"] == [{"generated_text": expected["caption_short"]}]
    assert [r["label"] for r in results["classes"]] == [label for label, _ in expected["classes"]]
    assert [r["score"] for r in results["classes"]] == pytest.approx([p for _, p in expected["classes"]], abs=1e-5)
    assert sum(r["score"] for r in results["classes"]) == pytest.approx(1.0, abs=1e-5)
    first = results["classes_batched"][0]  # batched with a longer text: padding must not change the scores
    assert len(results["classes_batched"]) == 2 and [r["label"] for r in first] == [r["label"] for r in results["classes"]]
    assert [r["score"] for r in first] == pytest.approx([r["score"] for r in results["classes"]], abs=1e-5)
    assert [r["label"] for r in results["ranking"]] == [label for label, _ in expected["ranking"]]
    assert [r["score"] for r in results["ranking"]] == pytest.approx([p for _, p in expected["ranking"]], abs=1e-5)


def run_child(tmp_path, model, revision, folder, env):
    (tmp_path / "child.py").write_text(CHILD)
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "child.py", model, revision, str(folder.parent / "red.png"),
                             str(folder.parent / "blue.jpg"), str(out)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stderr


def test_saved_config_lists_the_pipelines_and_the_folder_carries_their_code(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == json.loads(json.dumps(CUSTOM_PIPELINES))
    assert set(config["custom_pipelines"]) == {"image-to-text", "image-text-classification",
                                               "zero-shot-image-classification"}
    assert (folder / "pipeline_xattn.py").exists()


@slow
def test_pipelines_from_a_folder_in_a_fresh_process(folder, processor, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="warning")
    results, stderr = run_child(tmp_path, str(folder), "-", folder, env)
    check(results, expected_results(folder, processor))
    assert "MISSING" not in stderr and "UNEXPECTED" not in stderr  # each pipeline loads its head quietly


@slow
def test_pipelines_from_the_hub_at_a_pinned_revision(folder, processor, tmp_path):
    server, state, endpoint = serve()
    try:
        env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "push"),
               "HF_TOKEN": "hf_test_token", "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_VERBOSITY": "error"}
        pushed = subprocess.run([sys.executable, str(REPO / "scripts" / "push_to_hub.py"), "--folder", str(folder),
                                 "--repo_id", "user/xattn-pipelines"], capture_output=True, text=True, timeout=300,
                                env=env, cwd=REPO)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        commit = re.search(r"at commit ([0-9a-f]{40})", pushed.stdout).group(1)
        assert "pipeline_xattn.py" in state.repos["user/xattn-pipelines"].commits[commit].files
        env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        env["HF_HOME"] = str(tmp_path / "empty_home")
        results, _ = run_child(tmp_path, "user/xattn-pipelines", commit, folder, env)
    finally:
        server.shutdown()
    check(results, expected_results(folder, processor))


def test_in_process_pipelines_with_a_model_object(folder, processor):
    model = XAttnForMultiTask.from_pretrained(folder).eval()
    red = Image.open(folder.parent / "red.png")
    captioner = pipeline("xattn-image-to-text", model=model, processor=processor)
    expected = processor.batch_decode(model.generate(processor(images=[red])["pixel_values"]), skip_special_tokens=True)
    assert captioner(red) == [{"generated_text": expected[0].strip()}]
    classifier = pipeline("xattn-image-text-classification", model=model, processor=processor)
    assert len(classifier(red, text="a red circle", top_k=2)) == 2
    with pytest.raises(ValueError, match="text="):
        classifier(red)
    ranker = pipeline("xattn-zero-shot-image-classification", model=model, processor=processor)
    with pytest.raises(ValueError, match="candidate_labels"):
        ranker(red)
