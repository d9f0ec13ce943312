"""The demo as a Hugging Face Space (README's front matter names this file): the model comes from the Space's
variables XATTN_MODEL (a Hub id or folder; default outputs/xattn) and XATTN_REVISION (a commit to pin).
Locally, `python scripts/demo.py --model ...` runs the same app."""
import os

from modeling_xattn.training.apps.demo import load_demo, serve


def main():
    model = os.environ.get("XATTN_MODEL", "outputs/xattn")
    if not os.environ.get("XATTN_MODEL") and not os.path.isdir(model):
        raise SystemExit("set XATTN_MODEL to a Hub model id (Space settings -> Variables) or train one first: "
                         "python scripts/train.py writes outputs/xattn")
    # Spaces set GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; launch() reads them. The upload, concurrency and queue
    # limits are the demo's (modeling_xattn/training/apps/demo.py)
    serve(load_demo(model, os.environ.get("XATTN_REVISION")))


if __name__ == "__main__":
    main()
