"""Views of a dataset of the schema as training examples: one per image-caption pair (`CaptionPairs`), one caption
per photo per epoch (`CaptionPerPhoto`), seeded random-resized crops (`RandomResizedCrops`), and the crop they ask
`XAttnCollator` to cut (`crop_fraction`). A streamed source's twin of `CaptionPairs` is in `streaming.py`."""

from __future__ import annotations

import math

import torch
from PIL import Image

from modeling_xattn.training.data.schema import row_captions, stable_id


class CaptionPairs(torch.utils.data.Dataset):
    """One example per image-caption pair (a row with five captions is five examples per epoch, as COCO captioning
    and ALBEF/BLIP retrieval training iterate), so every caption trains in every epoch; rows without captions are
    one example each. An example is the row with `caption_index` set, which `XAttnCollator` reads.

    The pairs are a fixed list, so the DataLoader's seeded sampler shuffles them and a resumed run skips exactly
    the batches it had done."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.pairs = [(row, caption) for row, captions in enumerate(dataset["captions"])
                      for caption in range(max(len(row_captions({"captions": captions})), 1))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        row, caption = self.pairs[index]
        return {**self.dataset[row], "caption_index": caption}


class EpochSeeded(torch.utils.data.Dataset):
    """A view of `dataset` whose examples draw something from a generator seeded with (seed, epoch, index): the draw
    does not depend on the global random state, the loader's workers or an interruption, so a resumed run draws the
    same. `set_epoch` (passed on to a wrapped `EpochSeeded`) moves to the next pass; the epoch sits in shared memory,
    so workers see it."""

    def __init__(self, dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch
        if isinstance(self.dataset, EpochSeeded):
            self.dataset.set_epoch(epoch)

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(stable_id(f"{self.seed}/{int(self._epoch[0])}/{index}"))

    def __len__(self) -> int:
        return len(self.dataset)


class CaptionPerPhoto(EpochSeeded):
    """One example per photo and epoch, with one of its captions drawn from (seed, epoch, index): the alternative
    to `CaptionPairs` (every image-caption pair every epoch), as some captioning recipes sample. Rows without
    captions are one example each, unchanged."""

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        count = len(row_captions(row))
        if count < 2:
            return row
        return {**row, "caption_index": int(torch.randint(count, (1,), generator=self.generator(index)))}


class RandomResizedCrops(EpochSeeded):
    """Training examples with a random crop each (torchvision's RandomResizedCrop parameters: an area in
    [`scale`, 1] of the photo, aspect ratio in [3/4, 4/3]; no flips, since captions say "left" and "right"). The crop
    is a box in fractions of the photo, `row["crop_box"] = (left, top, right, bottom)`, which `XAttnCollator` cuts
    before the processor resizes, drawn from (seed, epoch, index) (`EpochSeeded`)."""

    def __init__(self, dataset, scale: float = 0.5, seed: int = 0, ratio=(3 / 4, 4 / 3)):
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"RandomResizedCrops: scale must lie in (0, 1], got {scale!r}")
        super().__init__(dataset, seed)
        self.scale, self.ratio = scale, ratio

    def crop_box(self, index: int) -> tuple[float, float, float, float]:
        generator = self.generator(index)
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):  # torchvision's rejection loop, on the unit square (the aspect is the photo's own)
            area = self.scale + (1.0 - self.scale) * torch.rand(1, generator=generator).item()
            aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=generator)).item()
            width, height = math.sqrt(area * aspect), math.sqrt(area / aspect)
            if width <= 1.0 and height <= 1.0:
                left = (1.0 - width) * torch.rand(1, generator=generator).item()
                top = (1.0 - height) * torch.rand(1, generator=generator).item()
                return left, top, left + width, top + height
        return 0.0, 0.0, 1.0, 1.0

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        return row if self.scale >= 1.0 else {**row, "crop_box": self.crop_box(index)}


def crop_fraction(image: Image.Image, box) -> Image.Image:
    """`image` cut to `box` = (left, top, right, bottom) in fractions of its width and height."""
    width, height = image.size
    left, top, right, bottom = box
    return image.crop((round(left * width), round(top * height), max(round(right * width), round(left * width) + 1),
                       max(round(bottom * height), round(top * height) + 1)))
