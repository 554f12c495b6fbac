"""COCO captions (and Flickr30k) in the Karpathy split JSON: training pairs and the
zero-shot retrieval protocol (every image with all of its captions).

Curated data gets errors, not skips: a broken JSON, record or field raises one ValueError
naming the file, the record and the field; a missing or undecodable image raises naming
the image and its record. Training order and augmentation are seeded from (seed, epoch,
position), and the datamodule checkpoints the position of the last consumed batch, so a
resumed run continues with exactly the batches of an uninterrupted one."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mammut_pl.data.epochs import (EpochSampler, ResumableTrainData, SampleRef, batch_position,  # noqa: F401
                                   item_index, seeded_item)
from mammut_pl.data.tokenizer import Tokenizer
from mammut_pl.data.transforms import ImageError, image_transform, load_image
from mammut_pl.model.packing import TextIndex

log = logging.getLogger(__name__)

# evaluate's data=NAME -> the Karpathy split file in its root
KARPATHY_FILES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}


@dataclass
class CaptionedImage:
    image_id: int
    path: str
    captions: list[str]
    split: str
    source: str = ""  # "FILE: images[i]", for error messages


def read_json(path: Path, what: str) -> Any:
    """Load a dataset JSON file; a missing or broken file names itself and what it should be."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({what}): {err}") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON ({what}): nested too deeply") from None


def field(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[key] with its type checked; errors name the file/record and the field."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: field {key!r} should be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def read_karpathy(root: str | Path, filename: str = "dataset_coco.json") -> list[CaptionedImage]:
    """Karpathy split file: images[{filepath?, filename, split, sentences[{raw}], cocoid|imgid}]."""
    root = Path(root)
    path = root / filename
    data = read_json(path, "Karpathy split file (dataset_coco.json / dataset_flickr30k.json)")
    images = field(data, "images", list, str(path))
    if not images:
        raise ValueError(f"{path}: field 'images' is empty")
    out = []
    seen: dict[int, int] = {}
    empty_captions = 0
    for i, rec in enumerate(images):
        where = f"{path}: images[{i}]"
        fname = field(rec, "filename", str, where)
        sub = rec.get("filepath", "")
        if not isinstance(sub, str):
            raise ValueError(f"{where}: field 'filepath' should be str")
        id_key = "cocoid" if "cocoid" in rec else "imgid"
        image_id = rec.get(id_key)
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise ValueError(f"{where}: needs an integer 'cocoid' or 'imgid', got {type(image_id).__name__}")
        if image_id in seen:
            raise ValueError(f"{where}: field {id_key!r}: image id {image_id} repeats images[{seen[image_id]}] "
                             "(ids must be unique)")
        seen[image_id] = i
        sentences = field(rec, "sentences", list, where)
        captions = [field(s, "raw", str, f"{where}.sentences[{j}]").strip() for j, s in enumerate(sentences)]
        empty_captions += sum(not c for c in captions)
        captions = [c for c in captions if c]
        if not captions:
            raise ValueError(f"{where}: no non-empty caption in 'sentences'")
        image_dir = root / sub if sub else root / ("images" if (root / "images").is_dir() else "")
        if not fname.strip():
            raise ValueError(f"{where}: field 'filename' is empty")
        split = field(rec, "split", str, where)
        if not split.strip():
            raise ValueError(f"{where}: field 'split' is empty")
        out.append(CaptionedImage(image_id, str(image_dir / fname), captions, split, where))
    if empty_captions:
        log.warning("%s: %d empty caption(s) left out (their images keep their other captions)", path, empty_captions)
    return out


def open_image(im: CaptionedImage):
    """The decoded image of a record; a missing or broken file names the image and the record."""
    try:
        return load_image(im.path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} (image {im.image_id}, {im.source})") from None
    except ImageError as err:
        raise ImageError(f"{err} (image {im.image_id}, {im.source})") from None


class CaptionPairs(Dataset):
    """Training: one (image, caption) pair per caption."""

    def __init__(self, images: list[CaptionedImage], transform) -> None:
        self.pairs = [(im, c) for im in images for c in im.captions]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int | SampleRef) -> dict[str, Any]:
        im, caption = self.pairs[item_index(i)]
        pixels, extra = seeded_item(i, self.transform, open_image(im))  # augmentation from (seed, epoch, position)
        return {"image": pixels, "caption": caption, "image_id": im.image_id, **extra}


class RetrievalImages(Dataset):
    """Evaluation: each item is one image with all of its captions."""

    def __init__(self, images: list[CaptionedImage], transform) -> None:
        self.images = images
        self.transform = transform
        # global caption ids, stable across ranks
        self.first_text_id = [0]
        for im in images:
            self.first_text_id.append(self.first_text_id[-1] + len(im.captions))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        im = self.images[i]
        return {"image": self.transform(open_image(im)), "image_id": im.image_id,
                "captions": im.captions, "text_ids": list(range(self.first_text_id[i], self.first_text_id[i + 1]))}


class PairCollator:
    """(image, caption) items -> images (B, 3, H, W), tokens (B, T) padded to the longest caption,
    and the tokens' TextIndex ("text_index"): the packed training step's data-dependent indices,
    computed here on the CPU, in the DataLoader worker, rather than in the (compiled) step."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length

    def pairs(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        tokens = self.tokenizer([it["caption"] for it in items], self.context_length, pad_to_longest=True)
        return {"images": torch.stack([it["image"] for it in items]), "tokens": tokens,
                "text_index": TextIndex.of(tokens, self.tokenizer.pad_id)}

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            **self.pairs(items),
            "image_ids": torch.tensor([it["image_id"] for it in items]),
            **batch_position(items),  # where the last item stood in its epoch: for resuming
        }


class RetrievalCollator(PairCollator):
    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        captions = [c for it in items for c in it["captions"]]
        return {
            "images": torch.stack([it["image"] for it in items]),
            "image_ids": torch.tensor([it["image_id"] for it in items]),
            "tokens": self.tokenizer(captions, self.context_length, pad_to_longest=True),
            "text_ids": torch.tensor([t for it in items for t in it["text_ids"]]),
            "text_image_ids": torch.tensor([it["image_id"] for it in items for _ in it["captions"]]),
            "captions": [it["captions"] for it in items],
        }


def retrieval_loader(images: list[CaptionedImage], tokenizer: Tokenizer, image_size: int,
                     context_length: int, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        RetrievalImages(images, image_transform(image_size, train=False)), batch_size=batch_size,
        shuffle=False, num_workers=num_workers, collate_fn=RetrievalCollator(tokenizer, context_length),
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(0),  # worker seeds off the global RNG (exact resume)
    )


class CocoCaptionsDataModule(ResumableTrainData, L.LightningDataModule):
    """COCO / Flickr30k captions from the Karpathy split file.

    train = Karpathy train + restval pairs; val / test = the retrieval protocol
    (image + all its captions). Root layout: ROOT/dataset_coco.json and the image
    folders it names (filepath/filename)."""

    def __init__(self, root: str, tokenizer: Tokenizer, image_size: int, context_length: int,
                 batch_size: int = 32, eval_batch_size: int = 64, num_workers: int = 2,
                 karpathy_file: str = "dataset_coco.json", val_split: str = "val", test_split: str = "test",
                 max_eval_images: int = 0, augment: bool = True, crop_scale_min: float = 0.8, seed: int = 0) -> None:
        super().__init__()
        self.root, self.tokenizer = root, tokenizer
        self.image_size, self.context_length = image_size, context_length
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.karpathy_file, self.val_split, self.test_split = karpathy_file, val_split, test_split
        self.max_eval_images, self.augment, self.crop_scale_min = max_eval_images, augment, crop_scale_min
        self.seed = seed
        self.images: list[CaptionedImage] | None = None
        self.init_resume()

    def setup(self, stage: str | None = None) -> None:
        if self.images is None:
            self.images = read_karpathy(self.root, self.karpathy_file)

    def split(self, name: str) -> list[CaptionedImage]:
        self.setup()
        names = ("train", "restval") if name == "train" else (name,)
        images = [im for im in self.images if im.split in names]
        if not images:
            raise ValueError(f"{Path(self.root) / self.karpathy_file}: no images with split {name!r}")
        if name != "train" and self.max_eval_images:
            images = images[: self.max_eval_images]
        return images

    def train_dataloader(self) -> DataLoader:
        ds = CaptionPairs(self.split("train"), image_transform(self.image_size, True, self.augment, self.crop_scale_min))
        return self.resumable_loader(ds, PairCollator(self.tokenizer, self.context_length))

    def train_size(self) -> int:
        return sum(len(im.captions) for im in self.split("train"))

    def val_dataloader(self) -> DataLoader:
        return retrieval_loader(self.split(self.val_split), self.tokenizer, self.image_size,
                                self.context_length, self.eval_batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return retrieval_loader(self.split(self.test_split), self.tokenizer, self.image_size,
                                self.context_length, self.eval_batch_size, self.num_workers)
