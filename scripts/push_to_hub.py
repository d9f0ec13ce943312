"""Push a trained folder to the Hugging Face Hub with its custom code, processor and a real model card.

    python scripts/push_to_hub.py --folder outputs/xattn --repo_id user/xattn-tiny
    python scripts/push_to_hub.py --folder outputs/xattn --repo_id user/xattn-tiny --revision dev --create_pr

It loads the folder (safetensors only), saves a clean copy (weights, config with `auto_map`, code files, processor),
reloads that copy and checks its outputs equal the original's before anything is pushed. The model card is rendered
from model_card.md with YAML metadata and `model-index` results from scripts/evaluate.py's `eval_results.json`.
Prints the commit hash and the line that loads exactly that revision.
"""

from __future__ import annotations

import argparse
import os

from modeling_xattn.training.publishing import push_folder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", required=True, help="a folder written by scripts/train.py")
    p.add_argument("--repo_id", required=True, help="user/name on the Hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default="main", help="branch to push to (created from main if missing)")
    p.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing to the branch")
    p.add_argument("--commit_message", default="Upload XAttn model")
    p.add_argument("--eval_results", help="scripts/evaluate.py JSON (default: <folder>/eval_results.json)")
    p.add_argument("--token", help="Hub token (default: the logged-in one)")
    p.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT"), help="Hub endpoint (default: HF_ENDPOINT)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return push_folder(args.folder, args.repo_id, args.private, args.revision, args.create_pr, args.commit_message,
                       args.eval_results, args.token, args.endpoint)


if __name__ == "__main__":
    main()
