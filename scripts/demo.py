"""A browser demo of a saved model (Gradio): caption a photo, score it against a statement, rank uploaded photos
against a caption, and show each word's attention over the image.

    pip install -e ".[demo]"
    python scripts/demo.py --model outputs/xattn                   # then open http://127.0.0.1:7860
    python scripts/demo.py --model user/xattn-flickr8k --revision <commit>

It serves on 127.0.0.1 (this machine only) unless --host says otherwise. The same app runs as a Hugging Face Space
from `app.py` (see README).
"""
import argparse

from modeling_xattn.training.apps.demo import load_demo


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a saved folder or a Hub id")
    p.add_argument("--revision", help="Hub commit, branch or tag to pin")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    args = p.parse_args(argv)
    demo = load_demo(args.model, args.revision)
    demo.launch(server_name=args.host, server_port=args.port)
    return demo


if __name__ == "__main__":
    main()
