"""LiT (model.freeze_encoder), activation checkpointing (model.grad_checkpointing) and the
FSDP wrap policy (trainer.strategy=fsdp), on a tiny model."""

import lightning as L
import pytest
import torch
from torch.testing import assert_close

from mammut_pl import config as C
from mammut_pl.model import MaMMUT
from mammut_pl.model.config import MaMMUTConfig
from mammut_pl.scale import decoder_layers, enable_grad_checkpointing, resolve_strategy
from mammut_pl.tasks.pretrain import PretrainTask

TINY = {k: getattr(MaMMUTConfig.from_name("test"), k) for k in (
    "encoder", "image_size", "width", "depth", "heads", "num_cross_attn", "vocab_size", "context_length",
    "embed_dim", "bos_id", "eos_id")}


def task(*overrides: str) -> PretrainTask:
    base = [f"model.{k}={v}" for k, v in TINY.items()] + ["optim.warmup_steps=0", "optim.lr=1e-2"]
    return PretrainTask(C.to_dict(C.load("", base + list(overrides))))


def batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, 10, dtype=torch.long)  # bos, 3..8 words, eos, padding (pad 0)
    for i in range(n):
        length = 3 + i % 6
        tokens[i, 0], tokens[i, length + 1] = 1, 2
        tokens[i, 1:length + 1] = torch.randint(3, 128, (length,), generator=g)
    ids = torch.arange(n)
    return {"images": torch.randn(n, 3, 32, 32, generator=g), "tokens": tokens,
            "image_ids": ids, "text_ids": ids, "text_image_ids": ids}


class Modes(L.Callback):
    """Records the train/eval mode of locked and unlocked tower parts at every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool, bool]] = []

    def on_train_batch_start(self, trainer, module, *args) -> None:
        blocks = module.model.visual.vit.blocks
        self.seen.append((blocks[0].training, blocks[-1].training, module.model.text.training))


def test_lit_locks_the_tower_through_lightnings_train_eval_toggling():
    torch.manual_seed(0)
    # drop-path in the tower: a locked block must run it as in eval (off) even while training
    lit = task("model.freeze_encoder=true", "model.freeze_encoder_unlocked_blocks=1",
               "model.encoder_kwargs.drop_path_rate=0.5")
    vit = lit.model.visual.vit
    before = {n: p.detach().clone() for n, p in lit.named_parameters()}
    unlocked = {n for n, _ in lit.named_parameters() if n.startswith(("model.visual.vit.blocks.5.", "model.visual.vit.norm."))}
    locked = {n for n in before if n.startswith("model.visual.") and n not in unlocked}
    assert len(unlocked) > 4 and len(locked) > 20

    modes = Modes()
    trainer = L.Trainer(accelerator="cpu", max_steps=4, val_check_interval=2, limit_val_batches=1,
                        num_sanity_val_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[modes])
    def loader(seeds):
        return torch.utils.data.DataLoader([batch(seed=s) for s in seeds], batch_size=None)

    trainer.fit(lit, train_dataloaders=loader(range(4)), val_dataloaders=loader([9]))
    # not in the optimizer: exactly the trainable parameters are
    in_opt = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    names = {id(p): n for n, p in lit.named_parameters()}
    assert {names[i] for i in in_opt} == set(before) - locked
    # locked weights did not move; unlocked blocks, the decoder and the projection did
    after = dict(lit.named_parameters())
    for n in locked:
        assert torch.equal(after[n], before[n]), n
    moved = {n for n in before if not torch.equal(after[n], before[n])}
    assert unlocked <= moved and "model.image_proj.weight" in moved
    assert any(n.startswith("model.text.") for n in moved)
    # eval mode for the locked block at every step (sanity check and a validation in between)
    assert modes.seen == [(False, True, True)] * 4
    assert not vit.blocks[0].drop_path1.training and vit.blocks[5].drop_path1.training


def test_a_locked_tower_is_deterministic_in_train_mode_an_unlocked_one_is_not():
    torch.manual_seed(0)
    images = batch()["images"]
    for frozen, same in (("true", True), ("false", False)):
        t = task(f"model.freeze_encoder={frozen}", "model.encoder_kwargs.drop_path_rate=0.5").train()
        a, b = t.model.image_tokens(images), t.model.image_tokens(images)
        assert torch.equal(a, b) is same
        assert a.requires_grad is not same


def test_freeze_config_errors_name_the_key():
    with pytest.raises(C.ConfigError, match="model.freeze_encoder_unlocked_blocks=2.*freeze_encoder=true"):
        task("model.freeze_encoder_unlocked_blocks=2")
    with pytest.raises(ValueError, match="model.freeze_encoder_unlocked_blocks=7: the encoder has 6 blocks"):
        task("model.freeze_encoder=true", "model.freeze_encoder_unlocked_blocks=7")


def _loss_and_grads(model: MaMMUT, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    out = model(b["images"], b["tokens"], packed=True)
    loss = torch.nn.functional.cross_entropy(out["caption_logits"], out["caption_targets"])
    loss = loss + (out["image_embed"] @ out["text_embed"].T).logsumexp(-1).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_gives_identical_losses_and_gradients():
    torch.manual_seed(0)
    plain = MaMMUT(MaMMUTConfig.from_name("test")).train()
    ckpt = MaMMUT(MaMMUTConfig.from_name("test")).train()
    ckpt.load_state_dict(plain.state_dict())
    enable_grad_checkpointing(ckpt)
    assert ckpt.state_dict().keys() == plain.state_dict().keys()  # checkpoints stay interchangeable
    # calls of a Linear inside a checkpointed part: a recompute runs it again in backward
    # (pre-hooks: a recompute stops early once the saved tensors are back)
    calls = {"vit": 0, "text": 0}
    first_linear = lambda m: next(x for x in m.modules() if isinstance(x, torch.nn.Linear))  # noqa: E731
    first_linear(ckpt.visual.vit.blocks[2]).register_forward_pre_hook(lambda *a: calls.__setitem__("vit", calls["vit"] + 1))
    first_linear(decoder_layers(ckpt)[1]).register_forward_pre_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1))
    # the decoder's unit is the whole layer: its norms (leaves outside the attention / MLP parts) run again too
    layer_calls = []
    decoder_layers(ckpt)[3].ln_self.register_forward_pre_hook(lambda *a: layer_calls.append(1))
    b = batch()
    loss_a, grads_a = _loss_and_grads(plain, b)
    loss_b, grads_b = _loss_and_grads(ckpt, b)
    assert calls == {"vit": 2, "text": 2}  # forward + recompute in backward (packed: one decoder call)
    assert len(layer_calls) == 2
    assert_close(loss_b, loss_a, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 100
    for n in grads_a:
        assert_close(grads_b[n], grads_a[n], rtol=1e-6, atol=1e-7, msg=n)
    # evaluation and generation run the layers once, without checkpointing
    with torch.no_grad():
        ckpt.eval().encode_image(b["images"])
    assert calls["vit"] == 3


@pytest.mark.parametrize("cross_attn_block", [False, True])
def test_the_task_with_grad_checkpointing_gives_identical_losses_and_gradients(cross_attn_block):
    """PretrainTask.losses (both passes packed, focal + caption loss, dropout on), with and without
    model.grad_checkpointing; the paper's layer and openMaMMUT's (cross-attention block, its MLP)."""
    arch = [f"model.cross_attn_block={str(cross_attn_block).lower()}", "model.dropout=0.1"]
    torch.manual_seed(0)
    plain = task(*arch).train()
    ckpt = task(*arch, "model.grad_checkpointing=true").train()
    ckpt.model.load_state_dict(plain.model.state_dict())
    assert all(getattr(layer, "_checkpointed", False) for layer in decoder_layers(ckpt.model))
    b = batch(n=6, seed=3)
    results = []
    for t in (plain, ckpt):
        torch.manual_seed(1)  # the same dropout masks (checkpoint replays the RNG state in the recompute)
        losses = t.losses(b["images"], b["tokens"])
        losses["loss"].backward()
        results.append((losses, {n: p.grad for n, p in t.model.named_parameters() if p.grad is not None}))
    (la, ga), (lb, gb) = results
    for k in la:
        assert_close(lb[k], la[k], rtol=0, atol=0, msg=k)
    assert ga.keys() == gb.keys() and len(ga) > 100
    for n in ga:
        assert_close(gb[n], ga[n], rtol=1e-6, atol=1e-7, msg=n)


def test_task_switch_and_fsdp_policy_over_vit_blocks_and_decoder_layers():
    from lightning.pytorch.strategies import FSDPStrategy
    from timm.models.vision_transformer import Block

    from mammut_pl.model.decoder import DecoderLayer

    t = task("model.grad_checkpointing=true")
    assert t.model.visual.vit.grad_checkpointing and all(getattr(m, "_checkpointed", False)
                                                         for m in decoder_layers(t.model))
    # under FSDP the strategy checkpoints the same units; the task does not wrap them twice
    t = task("model.grad_checkpointing=true", "trainer.strategy=fsdp")
    assert not t.model.visual.vit.grad_checkpointing
    assert not any(getattr(m, "_checkpointed", False) for layer in decoder_layers(t.model) for m in layer.modules())
    strategy = resolve_strategy("fsdp", t.model, grad_checkpointing=True)
    assert isinstance(strategy, FSDPStrategy) and strategy.kwargs["use_orig_params"]
    wrap = strategy.kwargs["auto_wrap_policy"]
    # whole decoder layers: every decoder pass calls each layer's forward
    assert wrap._module_classes == {Block, DecoderLayer}
    units = set(wrap._run_policy(t.model, ignored_modules=set(), root_kwargs={}))
    expected = set(t.model.visual.vit.blocks) | set(t.model.text.layers)
    assert units - {t.model} == expected and len(expected) == 6 + 4
    act = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert act._module_classes == {Block, DecoderLayer}
    plain = resolve_strategy("fsdp", t.model, grad_checkpointing=False)
    assert plain._activation_checkpointing_kwargs == {}
    assert resolve_strategy("ddp", t.model, True) == "ddp"
