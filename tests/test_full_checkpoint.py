"""Full erased checkpoints (sepce.records.write_full_checkpoint): the EMA copy carries the erasure too, so every
reader — our loader with and without ``use_ema_weights``, CompVis with ``use_ema: True``, diffusers' own
converter with ``extract_ema=True`` — gets the erased UNet; ``.safetensors`` and ``.ckpt`` outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from ldm.checkpoint import denormalize_keys, load_config, load_model_from_config, read_state_dict
from omegaconf import OmegaConf

from sepce import convert
from sepce.io import save_torch
from sepce.records import (
    ErasureRecord,
    RecordError,
    changed_tensors,
    ema_key,
    write_full_checkpoint,
)
from sepce.tiny import TINY_CONFIG, make_tiny_state_dict

ATTN2 = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2"
CHANGED_KEYS = [f"{ATTN2}.to_k.weight", f"{ATTN2}.to_v.weight", "model.diffusion_model.out.2.bias"]


@pytest.fixture(scope="module")
def ema_base(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny checkpoint WITH EMA weights (written from the tiny config with ``use_ema: true``, LitEma naming), in
    the released layout; its EMA copy differs from the weights (the weights were perturbed after the LitEma
    snapshot), so a test can tell which of the two a reader used. Returns (checkpoint, EMA config, plain config)."""
    folder = tmp_path_factory.mktemp("ema-base")
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    raw["model"]["params"]["use_ema"] = True
    ema_config = folder / "config-ema.yaml"
    ema_config.write_text(yaml.safe_dump(raw))
    sd = make_tiny_state_dict(ema_config)
    ckpt = save_torch(folder / "model.ckpt", {"state_dict": denormalize_keys(sd), "global_step": 7})
    return ckpt, ema_config, TINY_CONFIG


def _unet(model) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in model.model.state_dict().items()}


def _erasure(base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {k: base[k] + torch.randn(base[k].shape, generator=gen) for k in CHANGED_KEYS}


def test_ema_keys_follow_litema_naming(ema_base):
    sd = read_state_dict(ema_base[0])
    unet = [k for k in sd if k.startswith("model.diffusion_model.")]
    assert len(unet) > 100  # diffusers' converter only treats a file as EMA with more than 100 model_ema keys
    assert all(ema_key(k) in sd for k in unet)
    assert ema_key("model.diffusion_model.input_blocks.1.1.proj_in.weight") == (
        "model_ema.diffusion_modelinput_blocks11proj_inweight"
    )
    assert not torch.equal(sd[CHANGED_KEYS[0]], sd[ema_key(CHANGED_KEYS[0])])


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_erased_under_every_reader(ema_base, tmp_path, suffix):
    ckpt, ema_config, plain_config = ema_base
    base = read_state_dict(ckpt)
    erased = _erasure(base)
    out = write_full_checkpoint(ckpt, tmp_path / f"erased{suffix}", erased)
    written = read_state_dict(out)
    assert set(written) == set(base)  # every key kept, EMA included
    for k, v in erased.items():
        assert torch.equal(written[k], v) and torch.equal(written[ema_key(k)], v)

    no_ema = _unet(load_model_from_config(plain_config, out))
    with_ema = _unet(load_model_from_config(plain_config, out, use_ema_weights=True))
    compvis_ema = load_model_from_config(ema_config, out)  # CompVis use_ema: True keeps the shadow in model_ema
    compvis_ema.model_ema.copy_to(compvis_ema.model)
    compvis_ema = _unet(compvis_ema)
    for k, v in erased.items():
        for unet in (no_ema, with_ema, compvis_ema):
            torch.testing.assert_close(unet[k], v, rtol=0, atol=0)
    other = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert torch.equal(no_ema[other], base[other])  # unchanged tensors come from where each reader reads
    assert torch.equal(with_ema[other], base[ema_key(other)]) and torch.equal(compvis_ema[other], with_ema[other])


def test_diffusers_extract_ema_gets_the_erased_unet(ema_base, tmp_path):
    from diffusers.pipelines.stable_diffusion.convert_from_ckpt import (
        convert_ldm_unet_checkpoint,
        create_unet_diffusers_config,
    )

    ckpt, _, plain_config = ema_base
    base = read_state_dict(ckpt)
    erased = _erasure(base)
    out = write_full_checkpoint(ckpt, tmp_path / "erased.ckpt", erased)
    original = OmegaConf.to_container(load_config(plain_config), resolve=True)
    their_config = create_unet_diffusers_config(original, image_size=8)
    names = convert.unet_key_map(plain_config)
    for extract_ema in (True, False):
        checkpoint = dict(torch.load(out, weights_only=True)["state_dict"])
        unet = convert_ldm_unet_checkpoint(checkpoint, their_config, extract_ema=extract_ema)
        for k, v in erased.items():
            torch.testing.assert_close(unet[names[k]], v, rtol=0, atol=0)
        other = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
        source = ema_key(other) if extract_ema else other
        assert torch.equal(unet[names[other]], base[source])  # it really read the EMA copy (or not)


def test_sepce_subsets_reach_the_ema_copy(ema_base, tmp_path):
    ckpt, _, plain_config = ema_base
    base = read_state_dict(ckpt)
    gen = torch.Generator().manual_seed(5)
    width = base[CHANGED_KEYS[0]].shape[1]
    record = ErasureRecord(
        method="SepCE",
        concepts=["a", "b"],
        base={},
        bases={c: torch.randn(3, width, generator=gen) for c in "ab"},
        coefs={c: {k: torch.randn(base[k].shape[0], 3, generator=gen) for k in CHANGED_KEYS[:2]} for c in "ab"},
    )
    for subset in (["a"], ["b"], ["a", "b"]):
        changed = changed_tensors(record, base, subset)
        out = write_full_checkpoint(ckpt, tmp_path / f"{'+'.join(subset)}.safetensors", changed)
        with_ema = _unet(load_model_from_config(plain_config, out, use_ema_weights=True))
        for k, v in changed.items():
            torch.testing.assert_close(with_ema[k], v, rtol=0, atol=0)
            torch.testing.assert_close(read_state_dict(out)[k], v, rtol=0, atol=0)


def test_ckpt_keeps_layout_and_step_and_safetensors_is_flat(ema_base, tmp_path):
    from safetensors import safe_open

    ckpt = ema_base[0]
    erased = _erasure(read_state_dict(ckpt))
    raw = torch.load(write_full_checkpoint(ckpt, tmp_path / "x.ckpt", erased), weights_only=True)
    assert raw["global_step"] == 7
    original = torch.load(ckpt, weights_only=True)["state_dict"]
    assert set(raw["state_dict"]) == set(original)  # released text-encoder layout kept
    flat = write_full_checkpoint(ckpt, tmp_path / "x.safetensors", erased)
    with safe_open(str(flat), framework="pt") as f:
        assert set(f.keys()) == set(original)
    with pytest.raises(FileExistsError, match="already exists"):
        write_full_checkpoint(ckpt, flat, erased)


def test_missing_ema_copy_is_refused(ema_base, tmp_path):
    ckpt = ema_base[0]
    sd = dict(torch.load(ckpt, weights_only=True)["state_dict"])
    del sd[ema_key(CHANGED_KEYS[0])]
    broken = save_torch(tmp_path / "broken.ckpt", {"state_dict": sd})
    with pytest.raises(RecordError, match="EMA copy would contradict the erasure"):
        write_full_checkpoint(broken, tmp_path / "out.ckpt", _erasure(read_state_dict(ckpt)))
    assert not (tmp_path / "out.ckpt").exists()
