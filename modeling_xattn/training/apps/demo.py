"""The browser demo behind `scripts/demo.py` and `app.py` (a Hugging Face Space): a Gradio app over one saved model
with four tabs, each also an API endpoint that `gradio_client` calls by name:

    /caption    a photo -> its caption (greedy or beam search)
    /classify   a photo + a statement -> the classifier's labels with probabilities
    /rank       uploaded photos + a caption -> the photos ranked by the matching score plus the embeddings' cosine
    /attention  a photo + a text -> each word's cross-attention over the image regions, per fusion layer

An upload that is not a readable image is refused with a message in the page (`gr.Error`), never a traceback;
in a gallery, unreadable files are left out and named. Gradio is an optional dependency (`pip install .[demo]`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import torch

from modeling_xattn.pipeline_xattn import label_probabilities
from modeling_xattn.processing_xattn import to_rgb
from modeling_xattn.training.apps.visualize import attention_maps, render
from modeling_xattn.training.data.schema import load_image
from modeling_xattn.training.inference import load_model, rank_gallery
from modeling_xattn.training.options import option, parse_options

MAX_GALLERY = 64  # photos ranked at once: each is encoded on every request
# The server's limits (`serve`): an upload above MAX_UPLOAD_MB is refused by Gradio before it is read; CONCURRENCY
# requests run at once (the model's own threads share the cores); up to QUEUE_SIZE more wait, and beyond that a
# request is refused with "queue full" instead of piling up.
MAX_UPLOAD_MB = 20
CONCURRENCY = 2
QUEUE_SIZE = 64


def _gradio():
    try:
        import gradio
    except ImportError:
        raise SystemExit("the demo needs Gradio: pip install 'modeling-xattn[demo]' (or pip install gradio)") from None
    return gradio


def _upload(value) -> tuple[str | None, str]:
    """(the file's path on the server, the name it was uploaded under) of an upload: a path, or Gradio's unprocessed
    file data (`{"path": ..., "orig_name": ...}`)."""
    if isinstance(value, dict):
        path = value.get("path")
        return path, value.get("orig_name") or os.path.basename(str(path or ""))
    path = getattr(value, "path", None) or getattr(value, "name", None) or value
    return (str(path) if path else None), os.path.basename(str(path or ""))


def _photo(upload):
    """A readable RGB photo from an upload, or a `gr.Error` (shown in the page) that names the file."""
    gr = _gradio()
    path, name = _upload(upload)
    if not path:
        raise gr.Error("Upload a photo first.")
    try:
        return to_rgb(load_image(path))
    except Exception as error:  # not an image, truncated, too large: a message, not a traceback
        raise gr.Error(f"{name} is not a readable image ({type(error).__name__}); upload a JPEG, PNG or WebP "
                       "photo.") from None


class XAttnDemo:
    """The four tasks of the demo as plain methods over one model (what the Gradio handlers call, and what the
    tests call without a browser)."""

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor
        config = model.config
        self.classifier_trained = bool(config.lambda_ce)  # a VQA model's answer classifier trains with it too
        self.default_beams = max(int(model.generation_config.num_beams or 1), 2)

    @torch.inference_mode()
    def caption(self, image, decoding: str = "beam", num_beams: int | None = None) -> str:
        gr = _gradio()
        photo = _photo(image)
        beams = 1 if decoding == "greedy" else (self.default_beams if num_beams in (None, "") else num_beams)
        if decoding not in ("greedy", "beam") or float(beams) != int(float(beams)) or not 1 <= int(float(beams)) <= 16:
            raise gr.Error(f"decoding must be 'greedy' or 'beam' with a whole number of beams from 1 to 16; got "
                           f"{decoding!r}, {num_beams!r}")
        beams = int(float(beams))
        pixel_values = self.processor(images=photo)["pixel_values"].to(self.model.device)
        ids = self.model.generate(pixel_values, num_beams=beams)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0]

    @torch.inference_mode()
    def classify(self, image, statement: str) -> dict[str, float]:
        gr = _gradio()
        photo = _photo(image)
        if not (statement or "").strip():
            raise gr.Error("Write a statement about the photo to score it against.")
        inputs = self.processor(images=photo, text=[statement])
        logits = self.model(**{k: v.to(self.model.device) for k, v in inputs.items()}).logits[0]
        probabilities = label_probabilities(logits, self.model.config)  # as the classification pipeline gives them
        labels = self.model.config.id2label
        top = probabilities.argsort(descending=True)[:10].tolist()
        return {labels[i]: round(float(probabilities[i]), 4) for i in top}

    @torch.inference_mode()
    def rank(self, files, caption: str) -> tuple[list[tuple], str]:
        """`files` ranked by how well each matches `caption`: `([(photo, "score"), ...] best first, a note naming
        any file left out)`."""
        gr = _gradio()
        if not (caption or "").strip():
            raise gr.Error("Write a caption to rank the photos by.")
        files = list(files or [])
        if not files:
            raise gr.Error("Upload at least one photo to rank.")
        if len(files) > MAX_GALLERY:
            raise gr.Error(f"{len(files)} photos: rank at most {MAX_GALLERY} at once.")
        photos, names, skipped = [], [], []
        for upload in files:
            name = _upload(upload)[1]
            try:
                photos.append(_photo(upload))
                names.append(name)
            except gr.Error:
                skipped.append(name)
        if not photos:
            raise gr.Error(f"None of the {len(files)} uploads is a readable image: {', '.join(skipped)}.")
        pixel_values = self.processor(images=photos)["pixel_values"]
        scores, _, _ = rank_gallery(self.model, self.processor, pixel_values, [caption], direction="t2i",
                                    exhaustive=True)
        order = scores[:, 0].argsort(descending=True).tolist()
        ranked = [(photos[i], f"{rank + 1}. {names[i]}: {scores[i, 0].item():.3f}") for rank, i in enumerate(order)]
        note = f"Left out {len(skipped)} unreadable file(s): {', '.join(skipped)}." if skipped else ""
        return ranked, note

    @torch.inference_mode()
    def attention(self, image, text: str, max_words: int = 12):
        """The word -> region maps drawn as one picture (as `scripts/visualize.py` draws them), as a PIL image."""
        gr = _gradio()
        photo = _photo(image)
        if not (text or "").strip():
            raise gr.Error("Write a text whose words' attention to show.")
        try:
            tokens, maps, cbam = attention_maps(self.model, self.processor, photo, text)
        except ValueError as error:  # a model without cross-attention
            raise gr.Error(str(error)) from None
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="xattn-attention-") as folder:  # removed once read back
            path = os.path.join(folder, "attention.png")
            render(photo, tokens, maps, cbam, path, max_words)
            with Image.open(path) as drawn:
                return drawn.convert("RGB")


# The handlers take the uploads as Gradio receives them (file data with the user's file name): Gradio's own image
# preprocessing would stop an unreadable upload first, with a bare "Error" in the page and a traceback on the server,
# where the handler refuses it with a message that names the file.
RAW = {"preprocess": False}


def build_demo(model, processor, title: str | None = None):
    """The Gradio app (`gr.Blocks`) over a loaded model and processor."""
    gr = _gradio()
    demo_tasks = XAttnDemo(model, processor)
    title = title or "Cross-attention visual-language fusion"
    with gr.Blocks(title=title, analytics_enabled=False) as demo:  # nothing is sent anywhere
        gr.Markdown(f"# {title}\nDenseNet121 + CBAM image features and ALBERT text features fused by bidirectional "
                    "cross-attention. Upload a photo in any tab.")
        with gr.Tab("Caption"):
            with gr.Row():
                photo = gr.Image(type="filepath", label="Photo", elem_id="caption-photo")
                with gr.Column():
                    decoding = gr.Radio(["greedy", "beam"], value="beam", label="Decoding")
                    beams = gr.Slider(2, 8, value=demo_tasks.default_beams, step=1, label="Beams (beam search)")
                    button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                    caption = gr.Textbox(label="Caption", elem_id="caption-output", interactive=False)
            button.click(demo_tasks.caption, [photo, decoding, beams], caption, api_name="caption", **RAW)
        with gr.Tab("Classify"):
            if not demo_tasks.classifier_trained:
                gr.Markdown("**Note:** this model's classifier was not trained (its classification weight "
                            "`lambda_ce` is 0): its probabilities mean nothing.")
            with gr.Row():
                photo = gr.Image(type="filepath", label="Photo")
                with gr.Column():
                    statement = gr.Textbox(label="Statement", placeholder="what the photo is said to show")
                    button = gr.Button("Classify", variant="primary")
                    labels = gr.Label(label="Labels")
            button.click(demo_tasks.classify, [photo, statement], labels, api_name="classify", **RAW)
        with gr.Tab("Rank photos"):
            with gr.Row():
                files = gr.File(file_count="multiple", file_types=["image"], label=f"Photos (up to {MAX_GALLERY})")
                with gr.Column():
                    query = gr.Textbox(label="Caption", placeholder="a dog running on the beach")
                    button = gr.Button("Rank", variant="primary")
                    note = gr.Markdown(label="note")
            gallery = gr.Gallery(label="Best match first", columns=4)
            button.click(demo_tasks.rank, [files, query], [gallery, note], api_name="rank", **RAW)
        with gr.Tab("Attention maps"):
            with gr.Row():
                photo = gr.Image(type="filepath", label="Photo")
                with gr.Column():
                    text = gr.Textbox(label="Text", placeholder="a dog on the beach")
                    button = gr.Button("Show attention", variant="primary")
            maps = gr.Image(label="Each word's attention over the regions, per fusion layer (CBAM's map first)")
            button.click(demo_tasks.attention, [photo, text], maps, api_name="attention", **RAW)
    return demo


def load_demo(model: str, revision: str | None = None, title: str | None = None, device: str | None = None):
    """`build_demo` over a saved folder or Hub id (custom code and safetensors only, as everywhere), the model on
    `device` (default: CUDA where available)."""
    looks_like_path = model.startswith((".", "/", "~")) or os.sep in model.strip(os.sep).replace("/", "", 1)
    if looks_like_path and not os.path.isdir(model):
        raise SystemExit(f"--model {model}: no such folder (give a saved model folder or a Hub id user/name)")
    try:
        loaded, processor = load_model(model, revision, device)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--model {model}: cannot load a model from it ({type(error).__name__}: {error})") from None
    name = os.path.basename(os.path.normpath(model)) if os.path.isdir(model) else model
    return build_demo(loaded, processor, title=title or f"XAttn: {name}")


@dataclass(kw_only=True)
class DemoArguments:
    """The model to serve, and where."""

    _argument_group_name = "demo"

    model: str = field(metadata={"help": "a saved folder or a Hub id"})
    revision: str | None = option(None, "Hub commit, branch or tag to pin")
    host: str = option("127.0.0.1", "address to serve on (0.0.0.0: every interface)")
    port: int = option(7860)
    max_upload_mb: float = option(MAX_UPLOAD_MB, "uploads above this size are refused before they are read")
    concurrency: int = option(CONCURRENCY, "requests served at once; the others wait in the queue")
    queue_size: int = option(QUEUE_SIZE, "requests that may wait; beyond, a request is refused (queue full)")
    device: str | None = option(None, "cuda, cuda:N, mps or cpu (default: CUDA where available, else MPS, else CPU)")


def serve(demo, host: str | None = None, port: int | None = None, max_upload_mb: float = MAX_UPLOAD_MB,
          concurrency: int = CONCURRENCY, queue_size: int = QUEUE_SIZE, **launch):
    """Launch `demo` with the server's limits (see MAX_UPLOAD_MB); `host`/`port` None leave them to Gradio (and to
    a Space's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT). `launch`: further `Blocks.launch` options."""
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    where = {k: v for k, v in dict(server_name=host, server_port=port).items() if v is not None}
    return demo.launch(max_file_size=int(max_upload_mb * 1024 * 1024), **where, **launch)


def main(argv=None, description: str | None = None):
    """Serve the demo the command line asks for (blocks while it serves); returns the Gradio app."""
    (args,) = parse_options((DemoArguments,), argv, description or __doc__)
    demo = load_demo(args.model, args.revision, device=args.device)
    serve(demo, args.host, args.port, args.max_upload_mb, args.concurrency, args.queue_size)
    return demo


__all__ = ["CONCURRENCY", "MAX_GALLERY", "MAX_UPLOAD_MB", "QUEUE_SIZE", "DemoArguments", "XAttnDemo", "build_demo",
           "load_demo", "main", "serve"]
