"""Writing any source's rows as WebDataset shards behind `scripts/make_shards.py` (its docstring has the commands)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modeling_xattn.training.data.schema import BadRowCounter
from modeling_xattn.training.data.shards import make_shards
from modeling_xattn.training.data.sources import source_splits
from modeling_xattn.training.options import DataArguments, option, parse_merged


@dataclass(kw_only=True)  # required options first is no constraint on the merged options
class ShardArguments:
    """Where the shards go and how many rows each holds."""

    _argument_group_name = "shards"

    output_dir: str = field(metadata={"help": "folder for the shards"})
    rows_per_shard: int = option(1000)
    splits: str | None = option(None, "comma-separated splits to write (default: every split the source has)")


@dataclass
class ShardOptions(ShardArguments, DataArguments):
    """Every option of writing shards: where, and what to read."""


def main(argv=None, description: str | None = None) -> dict:
    """Write the shards the command line asks for; returns the shards and rows per split and the bad-row summary."""
    args = parse_merged(ShardOptions, (ShardArguments, DataArguments), argv, description or __doc__)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    try:
        counter = BadRowCounter()
        result = make_shards(source_splits(args, counter), args.output_dir, args.rows_per_shard, splits,
                             args.max_samples, counter)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    for split, paths in result["shards"].items():
        print(f"{split}: {result['rows'][split]} rows in {len(paths)} shard(s) in {args.output_dir}")
    print(result["summary"])
    return result
