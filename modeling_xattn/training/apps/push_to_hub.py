"""Pushing a trained folder to the Hub behind `scripts/push_to_hub.py` (its docstring has the commands)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from modeling_xattn.training.options import option, parse_options
from modeling_xattn.training.publishing import push_folder


@dataclass(kw_only=True)
class PushArguments:
    """What to push, where, and how."""

    _argument_group_name = "push"

    folder: str = field(metadata={"help": "a folder written by scripts/train.py"})
    repo_id: str = field(metadata={"help": "user/name on the Hub"})
    private: bool = option(False)
    revision: str = option("main", "branch to push to (created from main if missing)")
    create_pr: bool = option(False, "open a pull request instead of committing to the branch")
    commit_message: str = option("Upload XAttn model")
    eval_results: str | None = option(None, "scripts/evaluate.py JSON (default: <folder>/eval_results.json)")
    token: str | None = option(None, "Hub token (default: the logged-in one)")
    endpoint: str | None = option(None, "Hub endpoint (default: HF_ENDPOINT)")
    include_logs: bool = option(False, "push the tracker's runs/ too (the Hub shows tensorboard logs as metrics)")


def main(argv=None, description: str | None = None) -> dict:
    """Push as the command line says; returns the push's commit and the line that loads it."""
    (args,) = parse_options((PushArguments,), argv, description or __doc__)
    return push_folder(args.folder, args.repo_id, args.private, args.revision, args.create_pr, args.commit_message,
                       args.eval_results, args.token, args.endpoint or os.environ.get("HF_ENDPOINT"),
                       include_logs=args.include_logs)
