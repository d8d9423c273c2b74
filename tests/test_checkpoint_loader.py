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


def _lightning_like_file(path, sd, protocol=2):
    torch.save({"state_dict": sd, "callbacks": {LightningCallbackLike: {"x": 1}}}, path, pickle_protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 3])
def test_pickled_globals_agree_with_torch(tmp_path, sd, protocol):
    """The pickletools scan (for torch < 2.6) finds what torch's own scan finds."""
    from ldm.checkpoint import _unsafe_globals, pickled_globals

    path = _lightning_like_file(tmp_path / "lightning.ckpt", {"w": torch.zeros(2)}, protocol)
    name = f"{LightningCallbackLike.__module__}.LightningCallbackLike"
    assert name in pickled_globals(path) and "collections.OrderedDict" in pickled_globals(path)
    assert set(_unsafe_globals(path)) == set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) == {name}


def test_older_torch_without_unsafe_globals_helpers(tmp_path, sd, golden, monkeypatch):
    """torch 2.4/2.5 lack ``get_unsafe_globals_in_checkpoint`` (2.4 also ``safe_globals``): the own scan and a
    scoped ``add_safe_globals`` take over, and no stub stays in the allowlist."""
    from ldm.checkpoint import _Ignored

    path = _lightning_like_file(tmp_path / "lightning.ckpt", sd)
    monkeypatch.delattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
    before = torch.serialization.get_safe_globals()
    torch.testing.assert_close(_eps(load_model_from_config(CONFIG, path), golden), golden["eps"], atol=1e-4, rtol=0)
    monkeypatch.delattr(torch.serialization, "safe_globals")
    torch.testing.assert_close(_eps(load_model_from_config(CONFIG, path), golden), golden["eps"], atol=1e-4, rtol=0)
    after = torch.serialization.get_safe_globals()
    assert set(before) <= set(after)
    assert not [g for g in after if isinstance(g, type) and issubclass(g, _Ignored)]


def test_torch_without_safe_globals_api_gives_one_line_error(tmp_path, sd, golden, monkeypatch):
    """torch 2.1-2.3 cannot skip pickled classes safely: such files get a one-line error, plain ones still load."""
    path = _lightning_like_file(tmp_path / "lightning.ckpt", sd)
    for name in ("get_unsafe_globals_in_checkpoint", "safe_globals", "add_safe_globals"):
        monkeypatch.delattr(torch.serialization, name)
    msg = _load_one_line_error(path, r"pickles non-tensor objects \(.*LightningCallbackLike\).*torch>=2\.4")
    assert not msg.startswith("cannot read")
    torch.testing.assert_close(
        _eps(load_model_from_config(CONFIG, COMPVIS_TINY / "model.ckpt"), golden), golden["eps"], atol=1e-4, rtol=0
    )


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


def test_config_ckpt_path_goes_through_the_strict_loader(tmp_path, sd, golden):
    """``ckpt_path:`` in a config (CompVis ``init_from_ckpt``, which loaded non-strictly) is checked like every load."""
    from ldm.checkpoint import build_model, load_config

    config = load_config(CONFIG)
    config.model.params.ckpt_path = str(COMPVIS_TINY / "model.ckpt")
    torch.testing.assert_close(_eps(build_model(config, "cpu"), golden), golden["eps"], atol=1e-4, rtol=0)
    assert not any(t.is_meta for t in build_model(config, "meta").state_dict().values())

    no_text = tmp_path / "no_text.ckpt"
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}}, no_text)
    config.model.params.ckpt_path = str(no_text)
    with pytest.raises(CheckpointMismatchError, match="missing key.*cond_stage_model"):
        build_model(config, "cpu")
    config.model.params.ignore_keys = ["cond_stage_model."]
    model = build_model(config, "cpu")
    key = "model.diffusion_model.time_embed.0.weight"
    torch.testing.assert_close(model.state_dict()[key], sd[key], atol=0, rtol=0)
    key = "cond_stage_model.transformer.embeddings.token_embedding.weight"
    assert not torch.equal(model.state_dict()[key], sd[key])


def test_autoencoder_ckpt_path_skips_training_loss_weights(tmp_path, sd):
    from ldm.checkpoint import load_config
    from ldm.util import instantiate_from_config

    prefix = "first_stage_model."
    vae_sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    path = tmp_path / "vae.ckpt"
    torch.save({"state_dict": {**vae_sd, "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4)}}, path)
    vae_config = load_config(CONFIG).model.params.first_stage_config
    vae_config.params.ckpt_path = str(path)
    vae = instantiate_from_config(vae_config)
    for k, v in vae.state_dict().items():
        torch.testing.assert_close(v, vae_sd[k], atol=0, rtol=0)
    vae_config.params.ckpt_path = str(COMPVIS_TINY / "model.ckpt")
    with pytest.raises(CheckpointMismatchError, match="AutoencoderKL"):
        instantiate_from_config(vae_config)
