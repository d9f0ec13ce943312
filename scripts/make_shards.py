"""Write any source's rows as WebDataset tar shards, for `--streaming` training (locally, or pushed to a Hub dataset
repo and streamed from there).

Shards of your captioned photos:   python scripts/make_shards.py --dataset imagefolder --data_dir photos/ --output_dir shards/
Shards of the embedded dataset:    python scripts/make_shards.py --output_dir shards/
Train from them as a stream:       python scripts/train.py --dataset webdataset --data_dir shards/ --streaming --max_steps 2000

Each split becomes `{split}-000000.tar`, ... with `--rows_per_shard` samples each; a sample is `<key>.jpg` (the
image as JPEG bytes: JPEG files are copied unchanged) and `<key>.json` (captions, text, label name, answers,
question, image_id). Rows whose image cannot be read are skipped and counted.
"""
from modeling_xattn.training.data.streaming import make_shards
from modeling_xattn.training.options import DataArguments, parser_for


def main(argv=None):
    parser = parser_for((DataArguments,), __doc__)  # the data options, typed; this command's own below
    parser.add_argument("--output_dir", required=True, help="folder for the shards")
    parser.add_argument("--rows_per_shard", type=int, default=1000)
    parser.add_argument("--splits", help="comma-separated splits to write (default: every split the source has)")
    args = parser.parse_args(argv)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    try:
        result = make_shards(args, args.output_dir, args.rows_per_shard, splits)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    for split, paths in result["shards"].items():
        print(f"{split}: {result['rows'][split]} rows in {len(paths)} shard(s) in {args.output_dir}")
    print(result["summary"])
    return result


if __name__ == "__main__":
    main()
