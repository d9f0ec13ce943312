"""Push a trained folder to the Hugging Face Hub with its custom code, processor and a real model card.

    python scripts/push_to_hub.py --folder outputs/xattn --repo_id user/xattn-tiny
    python scripts/push_to_hub.py --folder outputs/xattn --repo_id user/xattn-tiny --revision dev --create_pr

It loads the folder (safetensors only), saves a clean copy (weights, config with `auto_map`, code files, processor),
reloads that copy and checks its outputs equal the original's before anything is pushed. The model card is rendered
from model_card.md with YAML metadata and `model-index` results from scripts/evaluate.py's `eval_results.json`.
Prints the commit hash and the line that loads exactly that revision.
"""

from modeling_xattn.training.apps.push_to_hub import main as run


def main(argv=None) -> dict:
    return run(argv, description=__doc__)


if __name__ == "__main__":
    main()
