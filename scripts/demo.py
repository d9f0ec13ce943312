"""A browser demo of a saved model (Gradio): caption a photo, score it against a statement, rank uploaded photos
against a caption, and show each word's attention over the image.

    pip install -e ".[demo]"
    python scripts/demo.py --model outputs/xattn                   # then open http://127.0.0.1:7860
    python scripts/demo.py --model user/xattn-flickr8k --revision <commit>

It serves on 127.0.0.1 (this machine only) unless --host says otherwise. Uploads above --max_upload_mb (20) are
refused before they are read; --concurrency (2) requests run at once and up to --queue_size (64) wait. The same app
runs as a Hugging Face Space from `app.py` (see README).
"""

from modeling_xattn.training.apps.demo import main as run


def main(argv=None):
    return run(argv, description=__doc__)


if __name__ == "__main__":
    main()
