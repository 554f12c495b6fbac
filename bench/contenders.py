"""The contenders of the training-step table: mammut_pl's MaMMUT (packed and padded), its image
tower alone (the floor), open_clip's CoCa and CLIP, lucidrains' MaMMUT; each a model, one
training loss over (images, tokens) and one AdamW."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn



# --------------------------------------------------------------------------------------
# the contenders
# --------------------------------------------------------------------------------------
LossFn = Callable[[Tensor, Tensor], Tensor]  # (images, tokens) -> scalar training loss


@dataclasses.dataclass
class Contender:
    name: str
    label: str  # for the table
    model: nn.Module
    make_loss: Callable[[nn.Module], LossFn]  # the loss, computed by the given view of `model`
    loss: LossFn | None = None  # make_loss(model) unless set (e.g. to a torch.compile'd view)
    opt: torch.optim.Optimizer | None = None

    def __post_init__(self) -> None:
        self.loss = self.loss or self.make_loss(self.model)

    def compiled(self) -> Contender:
        """The same weights and optimizer, the loss computed by torch.compile(model)."""
        return dataclasses.replace(self, loss=self.make_loss(torch.compile(self.model)))


def mammut_config(name: str):
    from mammut_pl.model import MaMMUTConfig

    if name == "test":  # tiny, but with the CLIP vocabulary so that the same tokens fit
        return MaMMUTConfig.from_name("test", vocab_size=49408, bos_id=49406, eos_id=49407, context_length=76)
    return MaMMUTConfig.from_name(name)


def pretrain_task(preset: str):
    """The suite's PretrainTask (default losses: focal contrastive + caption, weights 1)."""
    from mammut_pl.tasks.pretrain import PretrainTask

    return PretrainTask({"model": dataclasses.asdict(mammut_config(preset))})


def suite_loss(task, model: nn.Module | None = None, **loss_overrides: Any) -> LossFn:
    """The suite's own training loss, `PretrainTask.losses`, optionally run on another view
    of the same weights (a torch.compile'd model) or with other loss weights."""
    from mammut_pl.model.packing import TextIndex
    from mammut_pl.tasks.pretrain import PretrainTask

    cfg = task.cfg
    if loss_overrides:
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, **loss_overrides))
    view = SimpleNamespace(model=task.model if model is None else model, cfg=cfg,
                           contrastive_loss=task.contrastive_loss, caption_loss=task.caption_loss)
    # the TextIndex inside the step, as before: in training the collator computes it (DataLoader worker)
    return lambda images, tokens: PretrainTask.step_losses(
        view, images, tokens, TextIndex.of(tokens, cfg.model.pad_id))["loss"]


def build_mammut_pl(scale: str, with_padded: bool = True) -> list[Contender]:
    torch.manual_seed(0)
    task = pretrain_task("b32" if scale == "real" else "test")
    model = task.model
    cfg = model.config
    out = [Contender("mammut_pl", f"mammut_pl MaMMUT ({cfg.depth} layers, {cfg.num_cross_attn} cross-attn)",
                     model, lambda view: suite_loss(task, view))]
    if with_padded:
        def padded(view: nn.Module) -> LossFn:  # the forward before packing: (B, T, V) logits
            def loss(images: Tensor, tokens: Tensor) -> Tensor:
                o = view(images, tokens)
                return (task.contrastive_loss(o["image_embed"], o["text_embed"], o["logit_scale"], o["logit_bias"])
                        + task.caption_loss(o["caption_logits"], tokens))
            return loss
        out.append(Contender("mammut_pl_padded", "mammut_pl, padded forward (packed=False)", model, padded))
    return out


class ImageTowerOnly(nn.Module):
    """mammut_pl's image encoder and image projection alone: the part of the step every contender
    shares (all use a ViT-B/32 at 224 px), hence the floor of any step-time ratio to them."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from mammut_pl.model.encoder import ImageEncoder

        self.visual = ImageEncoder(config)
        self.image_proj = nn.Linear(self.visual.width, config.embed_dim, bias=False)

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.image_proj(self.visual.pool(self.visual(images))), dim=-1)  # (B, D)


def build_image_tower(scale: str) -> list[Contender]:
    torch.manual_seed(0)
    cfg = mammut_config("b32" if scale == "real" else "test")
    model = ImageTowerOnly(cfg)

    def loss(view: nn.Module) -> LossFn:  # InfoNCE against fixed text embeddings: no text-side work
        def fn(images: Tensor, tokens: Tensor) -> Tensor:
            text = F.normalize(torch.randn(images.shape[0], cfg.embed_dim, generator=torch.Generator().manual_seed(1)),
                               dim=-1).to(images.device)
            logits = 10.0 * view(images) @ text.t()
            labels = torch.arange(images.shape[0], device=images.device)
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        return fn
    return [Contender("image_tower", "floor: the shared image tower alone (ViT-B/32 + projection, no text)",
                      model, loss)]


def build_open_clip(scale: str) -> list[Contender]:
    import open_clip

    torch.manual_seed(0)
    if scale == "real":
        coca = open_clip.create_model("coca_ViT-B-32", pretrained=None)
        clip = open_clip.create_model("ViT-B-32", pretrained=None, output_dict=True)
    else:
        text = dict(context_length=76, vocab_size=49408, width=32, heads=2, layers=2)
        vision = dict(image_size=32, layers=2, width=64, head_width=32, patch_size=16)
        coca = open_clip.CoCa(32, multimodal_cfg=text, text_cfg=dict(text, embed_cls=True, output_tokens=True),
                              vision_cfg=dict(vision, attentional_pool=True, attn_pooler_heads=2,
                                              attn_pooler_queries=8, output_tokens=True))
        clip = open_clip.CLIP(32, vision_cfg=vision, text_cfg=dict(text, context_length=77), output_dict=True)
    coca_loss_fn = open_clip.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)
    clip_loss_fn = open_clip.ClipLoss()

    def coca_loss(view: nn.Module) -> LossFn:
        def loss(images: Tensor, tokens: Tensor) -> Tensor:
            o = view(images, tokens)
            con, cap = coca_loss_fn(o["image_features"], o["text_features"], o["logits"], o["labels"], o["logit_scale"])
            return con + cap
        return loss

    def clip_loss(view: nn.Module) -> LossFn:
        def loss(images: Tensor, tokens: Tensor) -> Tensor:
            # CLIP's text tower takes exactly its context length (its causal mask is not sliced):
            # the same tokens, padded to 77
            o = view(images, nn.functional.pad(tokens, (0, clip.context_length - tokens.shape[1])))
            return clip_loss_fn(o["image_features"], o["text_features"], o["logit_scale"])
        return loss

    return [Contender("coca", "open_clip coca_ViT-B-32", coca, coca_loss),
            Contender("clip", "open_clip ViT-B-32 (CLIP)", clip, clip_loss)]


class TimmTokens(nn.Module):
    """A timm ViT returning its token sequence (the image encoder lucidrains' MaMMUT expects)."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__()
        import timm

        self.vit = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)

    def forward(self, images: Tensor) -> Tensor:
        return self.vit.forward_features(images)  # (B, 1 + N, C)


def build_lucidrains(scale: str) -> list[Contender]:
    from mammut_pytorch import MaMMUT as LucidMaMMUT  # a bench extra: see optional()

    torch.manual_seed(0)
    if scale == "real":  # matched: width 512, 12 layers, cross-attention in every 2nd (6)
        vit = TimmTokens("vit_base_patch32_224")
        model = LucidMaMMUT(dim=512, num_tokens=49408, depth=12, cross_attend_every=2, image_dim=768,
                            dim_head=64, heads=8, img_encoder=vit)
    else:
        vit = TimmTokens("test_vit", img_size=32)
        model = LucidMaMMUT(dim=32, num_tokens=49408, depth=4, cross_attend_every=2, image_dim=64,
                            dim_head=16, heads=2, num_img_queries=8, img_encoder=vit)
    def loss(view: nn.Module) -> LossFn:
        return lambda images, tokens: view(text=tokens, images=images, return_loss=True)
    return [Contender("lucidrains", "lucidrains mammut-pytorch 0.0.7 + timm ViT-B/32", model, loss)]


def optional(build: Callable[[str], list[Contender]], scale: str, skipped: dict[str, str]) -> list[Contender]:
    """Contenders from a bench extra (`pip install -e ".[bench]"`, what `make bench` does):
    none, and the reason in `skipped`, where its package is not installed (e.g. in CI)."""
    try:
        return build(scale)
    except ModuleNotFoundError as err:
        name = build.__name__.removeprefix("build_")
        skipped[name] = f"{err.name} not installed (pip install -e '.[bench]', or make bench)"
        return []
