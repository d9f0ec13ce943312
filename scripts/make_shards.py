"""Write any source's rows as WebDataset tar shards, for `--streaming` training (locally, or pushed to a Hub dataset
repo and streamed from there).

Shards of your captioned photos:   python scripts/make_shards.py --dataset imagefolder --data_dir photos/ --output_dir shards/
Shards of the embedded dataset:    python scripts/make_shards.py --output_dir shards/
Train from them as a stream:       python scripts/train.py --dataset webdataset --data_dir shards/ --streaming --max_steps 2000

Each split becomes `{split}-000000.tar`, ... with `--rows_per_shard` samples each; a sample is `<key>.jpg` (the
image as JPEG bytes: JPEG files are copied unchanged) and `<key>.json` (captions, text, label name, answers,
question, image_id). Rows whose image cannot be read are skipped and counted.
"""

from modeling_xattn.training.apps.make_shards import main as run


def main(argv=None) -> dict:
    return run(argv, description=__doc__)


if __name__ == "__main__":
    main()
