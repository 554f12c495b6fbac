"""Big models on GPUs: activation checkpointing and FSDP with a real wrap policy.

`model.grad_checkpointing=true` recomputes each ViT block (timm's own switch) and each whole
decoder layer (`DecoderLayer`) in the backward pass instead of storing their activations. Every
pass of the decoder (contrastive, caption, both packed together, decoding) calls each layer
whole, so the layer is the unit. The decoder side wraps the layers' `forward` from outside;
parameter names and checkpoints stay as they are.

`trainer.strategy=fsdp` builds Lightning's `FSDPStrategy` sharding one unit per ViT block and
per decoder layer (instead of one flat unit, what the bare string gives), and, with
`model.grad_checkpointing=true`, lets FSDP checkpoint those same units.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

FSDP_NAMES = ("fsdp",)


def tower_blocks(model: nn.Module) -> list[nn.Module]:
    """The image tower's transformer blocks (timm ViT `blocks`)."""
    return list(model.visual.vit.blocks)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The text decoder's layers: every element of a ModuleList directly under `model.text`."""
    return [m for child in model.text.children() if isinstance(child, nn.ModuleList) for m in child]


def checkpoint_forward(module: nn.Module) -> None:
    """Recompute `module` in backward: its forward runs under torch.utils.checkpoint when
    training with gradients on (generation and evaluation run it plainly)."""
    if getattr(module, "_checkpointed", False):
        return
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if module.training and torch.is_grad_enabled():
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    module.forward = forward  # an instance attribute: nn.Module.__call__ finds it first
    module._checkpointed = True


def enable_grad_checkpointing(model: nn.Module) -> None:
    """model.grad_checkpointing=true outside FSDP: ViT blocks via timm, decoder layers whole."""
    model.visual.vit.set_grad_checkpointing(True)
    for layer in decoder_layers(model):
        checkpoint_forward(layer)


def block_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The classes FSDP wraps (and checkpoints): the ViT block class(es) (timm's `Block`) and the
    decoder layer class (`DecoderLayer`). A unit gathers its parameters when its forward runs:
    every decoder pass calls each layer's forward."""
    return {type(m) for m in tower_blocks(model) + decoder_layers(model)}


def fsdp_strategy(model: nn.Module, grad_checkpointing: bool, **kwargs: Any):
    """Lightning's FSDPStrategy with one FSDP unit per ViT block and per decoder layer."""
    from lightning.pytorch.strategies import FSDPStrategy

    classes = block_classes(model)
    return FSDPStrategy(
        auto_wrap_policy=classes,
        activation_checkpointing_policy=classes if grad_checkpointing else None,
        **kwargs,  # Lightning keeps use_orig_params=True: per-parameter groups and frozen towers work
    )


def resolve_strategy(strategy: Any, model: nn.Module, grad_checkpointing: bool) -> Any:
    """`trainer.strategy` as the Trainer gets it: "fsdp" becomes a wrapped FSDPStrategy."""
    if isinstance(strategy, str) and strategy in FSDP_NAMES:
        return fsdp_strategy(model, grad_checkpointing)
    return strategy
