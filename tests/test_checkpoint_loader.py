"""The one checkpoint loader: formats it accepts and the one-line errors for everything else."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import COMPVIS_TINY
from ldm.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    denormalize_keys,
    load_model_from_config,
    read_state_dict,
)

CONFIG = COMPVIS_TINY / "config.yaml"


@pytest.fixture(scope="module")
def sd():
    return read_state_dict(COMPVIS_TINY / "model.ckpt")


def _eps(model, golden):
    with torch.no_grad():
        return model.apply_model(golden["x_noisy"], golden["t"], golden["cond"])


def _load_one_line_error(path, match, exc=CheckpointError):
    with pytest.raises(exc, match=match) as info:
        load_model_from_config(CONFIG, path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bare_state_dict_and_released_text_layout(tmp_path, sd, golden):
    path = tmp_path / "bare.ckpt"
    released = denormalize_keys(sd)
    released["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(released, path)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in released)
    torch.testing.assert_close(_eps(load_model_from_config(CONFIG, path), golden), golden["eps"], atol=1e-4, rtol=0)


def test_safetensors(tmp_path, sd, golden):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    torch.testing.assert_close(_eps(load_model_from_config(CONFIG, path), golden), golden["eps"], atol=1e-4, rtol=0)


def test_ema_weights_ignored_or_used(tmp_path, sd, golden):
    from ldm.modules.ema import LitEma

    model = load_model_from_config(CONFIG, COMPVIS_TINY / "model.ckpt")
    ema = LitEma(model.model)
    for name, buf in ema.named_buffers():
        if name not in ("decay", "num_updates"):
            buf.mul_(0.5)
    full = dict(sd, **{f"model_ema.{k}": v for k, v in ema.state_dict().items()})
    path = tmp_path / "with_ema.ckpt"
    torch.save({"state_dict": full}, path)
    plain = load_model_from_config(CONFIG, path)
    torch.testing.assert_close(_eps(plain, golden), golden["eps"], atol=1e-4, rtol=0)
    with_ema = load_model_from_config(CONFIG, path, use_ema_weights=True)
    w = with_ema.model.diffusion_model.time_embed[0].weight
    torch.testing.assert_close(w, model.model.diffusion_model.time_embed[0].weight * 0.5)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_model_from_config(CONFIG, COMPVIS_TINY / "model.ckpt", use_ema_weights=True)


class LightningCallbackLike:
    """Stands for the training-state classes that old Lightning pickled into SD checkpoints."""

    def __init__(self):
        self.best = 1.0


def test_pickled_training_metadata_is_not_imported(tmp_path, sd, golden):
    path = tmp_path / "lightning.ckpt"
    torch.save(
        {
            "state_dict": sd,
            "callbacks": {LightningCallbackLike: {"x": 1}},
            "cb": LightningCallbackLike(),
            "global_step": 470000,
        },
        path,
    )
    torch.testing.assert_close(_eps(load_model_from_config(CONFIG, path), golden), golden["eps"], atol=1e-4, rtol=0)


def test_missing_file():
    _load_one_line_error(COMPVIS_TINY / "nope.ckpt", "does not exist")


def test_corrupt_files(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 100)
    _load_one_line_error(garbage, "cannot read checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((COMPVIS_TINY / "model.ckpt").read_bytes()[:200_000])
    _load_one_line_error(truncated, "cannot read checkpoint")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"12345678garbage")
    _load_one_line_error(bad_st, "cannot read safetensors")
    not_sd = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], not_sd)
    _load_one_line_error(not_sd, "holds no state dict")


def test_sd2_checkpoint_is_named(tmp_path, sd):
    fake = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    fake["cond_stage_model.model.token_embedding.weight"] = torch.zeros(49408, 32)
    k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    fake[k] = torch.zeros(fake[k].shape[0], 1024)
    path = tmp_path / "sd2.ckpt"
    torch.save({"state_dict": fake}, path)
    msg = _load_one_line_error(path, "SD 2.x", CheckpointMismatchError)
    assert "attn2.to_k.weight: file [32, 1024] vs expected [32, 32]" in msg
    assert "missing key" in msg and "unexpected key" in msg


def test_sdxl_and_lora_files_are_named(tmp_path):
    sdxl = tmp_path / "sdxl.safetensors"
    from safetensors.torch import save_file

    save_file({"conditioner.embedders.0.transformer.x": torch.zeros(2)}, str(sdxl))
    _load_one_line_error(sdxl, "SDXL", CheckpointMismatchError)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    _load_one_line_error(lora, "LoRA", CheckpointMismatchError)


def test_pickle_error_is_not_swallowed_silently(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": "not tensors"}))
    _load_one_line_error(path, "cannot read checkpoint|holds no state dict")


def test_half_precision_file_gives_float32_model(tmp_path, sd, golden):
    path = tmp_path / "half.ckpt"
    torch.save({"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}}, path)
    model = load_model_from_config(CONFIG, path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.alphas_cumprod.dtype == torch.float32
    torch.testing.assert_close(_eps(model, golden), golden["eps"], atol=2e-2, rtol=0)
