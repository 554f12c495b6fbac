"""What every MaMMUT task shares: the model, init_from, the optimizer and schedule,
and the non-finite-loss guard. Tasks differ in their steps, losses and metrics."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from torch import Tensor

from mammut_pl.config import Config, from_dict
from mammut_pl.data.context import EvalContext, eval_context
from mammut_pl.data.tokenizer import Tokenizer
from mammut_pl.data.transforms import normalize_batch
from mammut_pl.model import MaMMUT
from mammut_pl.model.packing import TextIndex
from mammut_pl.model.towers import load_encoder_weights
from mammut_pl.scale import FSDP_NAMES, enable_grad_checkpointing
from mammut_pl.resume import CheckpointError, read_checkpoint

log = logging.getLogger(__name__)
T = TypeVar("T")


class NonFiniteLossError(RuntimeError):
    pass


def load_weights(path: str) -> dict[str, Tensor]:
    """Model weights from a suite checkpoint (.ckpt) or a plain state_dict, loaded safely
    (weights_only=True: no code from the file runs)."""
    try:
        obj = read_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"model.init_from: {err}") from None
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict):
        raise CheckpointError(f"model.init_from: {path} holds no state_dict")
    # suite checkpoints prefix the model's weights with "model."
    if any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return state


class MaMMUTTask(L.LightningModule):
    # True: the training step's forward and losses run through `packed_step`, which model.compile=true
    # compiles whole; False: model.compile=true compiles the model's forward in place
    compiles_step = False
    compile_backend = "inductor"  # torch.compile's backend for the step ("aot_eager" in tests: no C++ build)

    def __init__(self, cfg: dict[str, Any], tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        # the resolved config (plain dict) goes into every checkpoint
        self.save_hyperparameters({"cfg": cfg}, logger=False)
        self.cfg: Config = from_dict(cfg)
        self.tokenizer = tokenizer
        self.model = self.build_model()
        if self.cfg.model.init_from:
            self.init_from(self.cfg.model.init_from)
        self.setup_towers()
        if self.cfg.model.compile and not self.compiles_step:
            self.model.compile()  # in place: state_dict keys (and checkpoints) stay the same

    @property
    def context(self) -> EvalContext | None:
        """What this task evaluates against, from its datamodule (None: no datamodule attached)."""
        return eval_context(getattr(self._trainer, "datamodule", None) if self._trainer is not None else None)

    def build_model(self) -> MaMMUT:
        return MaMMUT(self.cfg.model.architecture())

    def init_from(self, path: str) -> None:
        from mammut_pl.model.openmammut import is_openmammut_dir, read_weights, to_suite_state_dict

        if is_openmammut_dir(path):  # every tensor used, every weight filled (the architecture is the folder's)
            self.model.load_state_dict(to_suite_state_dict(read_weights(path), self.model, source=path), strict=True)
            log.info("model.init_from=%s: loaded the openMaMMUT weights (all %d tensors)", path,
                     len(self.model.state_dict()))
            return
        state = load_weights(path)
        own = self.model.state_dict()
        # shapes that differ (e.g. a new vocabulary) are left at their fresh initialisation
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(state) - set(usable))
        missing = sorted(set(own) - set(usable))
        self.model.load_state_dict(usable, strict=False)
        log.info("model.init_from=%s: loaded %d tensors, %d not used, %d newly initialised",
                 path, len(usable), len(skipped), len(missing))
        if not usable:
            raise ValueError(f"model.init_from={path}: no tensor matches this model's architecture")

    def setup_towers(self) -> None:
        """Pretrained image tower (after init_from: it wins), LiT locking, activation checkpointing."""
        m = self.cfg.model
        if m.encoder_weights:
            load_encoder_weights(self.model, m.encoder_weights)
        if m.freeze_encoder:
            self.model.visual.lock(m.freeze_encoder_unlocked_blocks)
        # under FSDP its activation_checkpointing_policy wraps the same blocks (mammut_pl.scale)
        if m.grad_checkpointing and self.cfg.trainer.get("strategy") not in FSDP_NAMES:
            enable_grad_checkpointing(self.model)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 images (the web shards' FastCrop path) become CLIP-normalised floats here, on the
        device, a whole batch at a time; float batches (every other reader) pass unchanged."""
        return normalize_batch(batch)

    # --- the training step's forward and losses, compiled whole under model.compile=true ---------
    def packed_step(self, fn: Callable[..., T], images: Tensor, tokens: Tensor, text_index: TextIndex | None) -> T:
        """fn(images, tokens, text_index): a training step's forward and losses, nothing else (no
        logging, no Python-side branching on values).

        text_index: the batch's (the collators compute it on the CPU); None computes it here,
        eagerly, outside the compiled region. With model.compile=true, fn is torch.compile'd
        once, whole (the backward too, by AOTAutograd): the text length T and the packed lengths
        N and M change with every batch, so they are marked dynamic from the first call, and the
        step compiles once rather than once per caption length."""
        if text_index is None:
            text_index = TextIndex.of(tokens, self.cfg.model.pad_id)
        if not self.cfg.model.compile:
            return fn(images, tokens, text_index)
        compiled = self.__dict__.setdefault("_compiled_steps", {})  # plain attribute: not a submodule
        if fn.__name__ not in compiled:
            compiled[fn.__name__] = torch.compile(fn, backend=self.compile_backend)
        torch._dynamo.maybe_mark_dynamic(tokens, 1)
        torch._dynamo.maybe_mark_dynamic(text_index.real, 0)
        torch._dynamo.maybe_mark_dynamic(text_index.caption, 0)
        return compiled[fn.__name__](images, tokens, text_index)

    # --- non-finite guard ----------------------------------------------------------
    def check_finite(self, loss: Tensor) -> Tensor | None:
        """Stop (default) or skip the step when the loss is NaN/inf; the last good
        checkpoint is kept either way."""
        if torch.isfinite(loss):
            return loss
        msg = f"non-finite loss ({loss.item()}) at global step {self.global_step}"
        self.log("train/nonfinite_steps", 1.0, reduce_fx="sum", on_step=False, on_epoch=True)
        if self.cfg.loss.nonfinite == "skip":
            log.warning("%s: skipping this step (loss.nonfinite=skip)", msg)
            return None
        raise NonFiniteLossError(f"{msg}: stopping (set loss.nonfinite=skip to skip such steps); "
                                 "the last good checkpoint is kept")

    # --- optimisation ----------------------------------------------------------------
    def lr_scale(self, name: str) -> float:
        """Learning-rate multiplier of parameter `name` (a task may train new parts faster)."""
        return 1.0

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # no weight decay on biases, norms, embeddings and the contrastive scale/bias
            decay = not (p.ndim < 2 or "embed" in name.split(".")[-1] or "token_embed" in name or "logit_" in name)
            groups.setdefault((decay, self.lr_scale(name)), []).append(p)
        opt = torch.optim.AdamW(
            [{"params": params, "weight_decay": o.weight_decay if decay else 0.0, "lr": o.lr * scale}
             for (decay, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))],
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
            fused=torch.cuda.is_available() and self.device.type == "cuda" or None,
        )
        total = self.trainer.estimated_stepping_batches
        warmup = o.warmup_steps

        def schedule(step: int) -> float:  # linear warmup, cosine decay to min_lr_ratio
            if step < warmup:
                return (step + 1) / warmup
            if not math.isfinite(total) or total <= warmup:
                return 1.0
            progress = min(1.0, (step - warmup) / (total - warmup))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.cfg.optim.grad_clip > 0:
            self.clip_gradients(optimizer, self.cfg.optim.grad_clip, "norm")

    # --- helpers for tasks -------------------------------------------------------------
    def decode(self, tokens: Tensor) -> list[str]:
        assert self.tokenizer is not None, "a tokenizer is needed to decode"
        return [self.tokenizer.decode(row.tolist()) for row in tokens]


def write_results_json(rows: list[dict[str, Any]], path: str | Path, id_key: str) -> Path:
    """An evaluation server's results JSON (a list of objects), sorted by `id_key`; one
    row per id, written atomically so that a crash never leaves half a file."""
    path = Path(path)
    ids = [r[id_key] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: {len(ids) - len(set(ids))} duplicate {id_key}s in the results")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(sorted(rows, key=lambda r: r[id_key])))
    tmp.replace(path)
    return path
