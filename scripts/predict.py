"""Use a saved model from the command line.

    python scripts/predict.py caption  --model outputs/xattn --images photo.jpg [more.jpg | a_folder/] [--num_beams 3]
    python scripts/predict.py classify --model outputs/xattn --images photo.jpg --text "there is a red shape and a blue shape"
    python scripts/predict.py answer   --model outputs/xattn --images photo.jpg --text "what shape is the red one"
    python scripts/predict.py rank-images   --model outputs/xattn --images a_folder/ --text "a red circle"
    python scripts/predict.py rank-captions --model outputs/xattn --images photo.jpg --captions "a cat" "a dog"

`--model` is a folder or a Hub id (with `--revision`). `--json` prints JSON instead of text. A folder of images is
processed in batches with a progress bar; unreadable images are skipped and listed.

Ranking scores are two-stage (`model.rank`): the `--top_k` candidates the embeddings shortlist carry the matching
head's log-probability (0 is a sure match, higher is better); the others their embedding similarity minus 10,000.
"""

from modeling_xattn.training.apps.predict import main as run


def main(argv=None):
    return run(argv, description=__doc__)


if __name__ == "__main__":
    main()
