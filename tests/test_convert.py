"""CompVis → diffusers conversion: the diffusers models give the same outputs as ours."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import COMPVIS_TINY, run_script
from ldm.checkpoint import load_config, read_state_dict
from omegaconf import OmegaConf

from sepce import convert


@pytest.fixture(scope="module")
def cfg():
    return OmegaConf.to_container(load_config(COMPVIS_TINY / "config.yaml"), resolve=True)


@pytest.fixture(scope="module")
def sd():
    return read_state_dict(COMPVIS_TINY / "model.ckpt")


def _init_args(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def test_unet_equals_diffusers(cfg, sd, golden):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**_init_args(convert.unet_diffusers_config(cfg))).eval()
    unet.load_state_dict(convert.unet_to_diffusers(sd, cfg), strict=True)
    with torch.no_grad():
        eps = unet(golden["x_noisy"], golden["t"], encoder_hidden_states=golden["cond"]).sample
    torch.testing.assert_close(eps, golden["eps"], atol=1e-4, rtol=0)


def test_vae_equals_diffusers(cfg, sd, golden):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**_init_args(convert.vae_diffusers_config(cfg))).eval()
    vae.load_state_dict(convert.vae_to_diffusers(sd, cfg), strict=True)
    with torch.no_grad():
        dist = vae.encode(golden["image"]).latent_dist
        decoded = vae.decode(golden["z"] / cfg["model"]["params"]["scale_factor"]).sample
    torch.testing.assert_close(dist.mean, golden["posterior_mean"], atol=1e-4, rtol=0)
    torch.testing.assert_close(decoded, golden["decoded"], atol=1e-4, rtol=0)


def test_full_size_unet_mapping_covers_every_key():
    from diffusers import UNet2DConditionModel

    config = load_config(COMPVIS_TINY.parent.parent.parent / "configs" / "stable-diffusion" / "v1-inference.yaml")
    cfg = OmegaConf.to_container(config, resolve=True)
    keys = json.loads((COMPVIS_TINY.parent / "sd-v1-keys.json").read_text())
    fake = {k: torch.empty(0) for k in keys}
    mapped = convert.unet_to_diffusers(fake, cfg)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**_init_args(convert.unet_diffusers_config(cfg)))
    assert set(mapped) == set(unet.state_dict())
    diffusers_shapes = {k: list(v.shape) for k, v in unet.state_dict().items()}
    ours = {
        convert._rename(k[len("model.diffusion_model.") :], convert.unet_key_map(cfg), {}): k
        for k in keys
        if k.startswith("model.diffusion_model.")
    }
    assert len(ours) == len(diffusers_shapes)


def test_convert_script_writes_diffusers_folder(tmp_path, cfg, golden):
    from diffusers import UNet2DConditionModel

    out = tmp_path / "diffusers"
    run_script(
        "train-scripts/convertModels.py",
        "--ckpt_path",
        COMPVIS_TINY / "model.ckpt",
        "--config_path",
        COMPVIS_TINY / "config.yaml",
        "--output_path",
        out,
        "--components",
        "unet",
        "vae",
    )
    unet = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    with torch.no_grad():
        eps = unet(golden["x_noisy"], golden["t"], encoder_hidden_states=golden["cond"]).sample
    torch.testing.assert_close(eps, golden["eps"], atol=1e-4, rtol=0)
    assert (out / "vae" / "config.json").is_file()
    again = run_script(
        "train-scripts/convertModels.py",
        "--ckpt_path",
        COMPVIS_TINY / "model.ckpt",
        "--config_path",
        COMPVIS_TINY / "config.yaml",
        "--output_path",
        out,
        check=False,
    )
    assert again.returncode != 0 and "already exists" in again.stderr


def test_convert_script_bare_unet_state_dict(tmp_path, cfg, sd):
    out = tmp_path / "unet.pt"
    run_script(
        "train-scripts/convertModels.py",
        "--ckpt_path",
        COMPVIS_TINY / "model.ckpt",
        "--config_path",
        COMPVIS_TINY / "config.yaml",
        "--output_path",
        out,
    )
    saved = torch.load(out, weights_only=True)
    expected = convert.unet_to_diffusers(sd, cfg)
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)
