"""`data.*`: the keys every datamodule reads, and one `data.<dataset>` section per datamodule
for what only that dataset reads (its files, splits, limits)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WebDataSettings:
    """`data.webdata.*`: ALIGN-like img2dataset shards (pretraining)."""

    shards: str = ""  # brace pattern relative to data.root, e.g. "{00000..00127}.tar"; "" = every *.tar
    resampled: bool = False  # sample shards with replacement (needs steps_per_epoch)
    steps_per_epoch: int = 0
    shuffle_buffer: int = 1000
    val_root: str = ""  # a COCO root (Karpathy split, read with data.coco.*) for zero-shot retrieval


@dataclass
class CocoSettings:
    """`data.coco.*`: COCO / Flickr30k captions in the Karpathy split JSON."""

    karpathy_file: str = "dataset_coco.json"
    val_split: str = "val"
    test_split: str = "test"
    max_eval_images: int = 0  # 0 = all


@dataclass
class VQAv2Settings:
    """`data.vqav2.*`: the official question/annotation JSON + COCO image folders."""

    train_split: str = "train2014"  # one split or several joined by "+", e.g. train2014+val2014
    val_split: str = "val"
    test_split: str = "test"
    predict_split: str = "test-dev2015"  # questions only: `python -m mammut_pl.predict` writes the results JSON
    prompt: str = "question: {question} answer:"  # the decoder's prompt; {question} is filled in
    max_answer_tokens: int = 8  # training answers are cut to this many tokens
    max_eval_questions: int = 0  # 0 = all


@dataclass
class MSRVTTSettings:
    """`data.msrvtt.*`: MSR-VTT files (relative to data.root) and its question answering."""

    video_dir: str = "videos"  # video{id}.mp4/.avi/.webm
    captions_file: str = "MSRVTT_data.json"  # or train_val_videodatainfo.json
    retrieval_csv: str = "MSRVTT_JSFUSION_test.csv"  # 1k-A test split (text -> video retrieval)
    test_split: str = "test"  # {split}_qa.json, or the captions file's split
    prompt: str = "question: {question} answer:"  # VideoQA: the decoder's prompt
    max_answer_tokens: int = 8
    max_eval_questions: int = 0  # 0 = all


@dataclass
class LVISSettings:
    """`data.lvis.*`: the LVIS annotation files in data.root (v1 or v0.5), jitter, evaluation subset."""

    train_file: str = "lvis_v1_train.json"
    val_file: str = "lvis_v1_val.json"
    test_file: str = ""  # "" = val_file
    jitter_min: float = 0.1  # large-scale jitter: output scale range of the image (1.0, 1.0 = plain resize)
    jitter_max: float = 2.0
    max_eval_images: int = 0  # 0 = all

    def __post_init__(self) -> None:
        if not 0 < self.jitter_min <= self.jitter_max:
            raise ValueError(f"data.lvis.jitter_min={self.jitter_min}, data.lvis.jitter_max={self.jitter_max}: "
                             "need 0 < jitter_min <= jitter_max")
        if self.max_eval_images < 0:
            raise ValueError(f"data.lvis.max_eval_images={self.max_eval_images}: must be >= 0")


@dataclass
class DataConfig:
    name: str = "webdata"  # webdata | coco | vqav2 | msrvtt | lvis (which LightningDataModule)
    root: str = "data/demo/webdata"  # the dataset, in its published layout
    demo: bool = False  # root is the embedded demo world: written there on first use
    tokenizer: str = "clip"  # "clip" (CLIP BPE from open_clip) or a tokenizer.json path
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 2
    augment: bool = True  # random resized crop in training (no flips: captions say left/right)
    crop_scale_min: float = 0.8
    # zero-shot classification at each validation of any run (val/zeroshot_top1), as open_clip's --imagenet-val
    zeroshot_root: str = ""  # an ImageFolder (one sub-folder per class), e.g. ImageNet val; "" = off
    zeroshot_classnames: str = ""  # "" = ImageNet-1k names for WordNet-id folders, else folder names; or a FILE
    zeroshot_templates: str = "openai"  # openai | simple | a FILE of templates with {}
    webdata: WebDataSettings = field(default_factory=WebDataSettings)
    coco: CocoSettings = field(default_factory=CocoSettings)
    vqav2: VQAv2Settings = field(default_factory=VQAv2Settings)
    msrvtt: MSRVTTSettings = field(default_factory=MSRVTTSettings)  # data.name=msrvtt (video tasks)
    lvis: LVISSettings = field(default_factory=LVISSettings)  # data.name=lvis (task=detection)
