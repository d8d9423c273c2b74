"""CompVis ↔ diffusers conversion (sepce.convert, convertModels.py): the diffusers models give the same outputs
as ours; the key tables cover SD v1 exactly; every architectural field comes from the CompVis config; a table
that does not match the config it claims is refused; diffusers → CompVis is the exact inverse (ESD/UCE-style
files); configs diffusers cannot express fail with one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from conftest import COMPVIS_TINY, REPO, assert_one_line_error, run_script
from ldm.checkpoint import load_config, load_model_from_config, read_state_dict
from ldm.modules.encoders.modules import FrozenCLIPEmbedder
from omegaconf import OmegaConf
from safetensors import safe_open

from sepce import convert
from sepce.tiny import TINY_CONFIG, make_tiny_state_dict

SD_CONFIG = REPO / "configs" / "stable-diffusion" / "v1-inference.yaml"
TEMPLATE = yaml.safe_load(TINY_CONFIG.read_text())


@pytest.fixture(scope="module")
def cfg():
    return OmegaConf.to_container(load_config(COMPVIS_TINY / "config.yaml"), resolve=True)


@pytest.fixture(scope="module")
def sd():
    return read_state_dict(COMPVIS_TINY / "model.ckpt")


def _init_args(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _config(unet: dict = (), vae: dict = (), **model) -> dict:
    raw = copy.deepcopy(TEMPLATE)
    raw["model"]["params"].update(model)
    raw["model"]["params"]["unet_config"]["params"].update(dict(unet))
    raw["model"]["params"]["first_stage_config"]["params"]["ddconfig"].update(dict(vae))
    return raw


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


def test_text_encoder_equals_transformers(tmp_path, cfg, sd, golden):
    from transformers import CLIPTextModel

    convert.export_components(sd, cfg, tmp_path, ["text_encoder"])
    model = CLIPTextModel.from_pretrained(tmp_path / "text_encoder", local_files_only=True).eval()
    version = load_config(COMPVIS_TINY / "config.yaml").model.params.cond_stage_config.params.version
    tokens = FrozenCLIPEmbedder(version).tokenizer(golden["prompts"])  # the fixture's own tokenizer
    with torch.no_grad():
        hidden = model(input_ids=tokens).last_hidden_state
    torch.testing.assert_close(hidden, golden["cond"], atol=1e-4, rtol=0)
    with safe_open(str(tmp_path / "text_encoder" / "model.safetensors"), framework="pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())  # the layout transformers 4.x needs


def test_sd_v1_tables_cover_the_released_keys_exactly():
    """Every UNet/VAE/text key of the released SD v1 layout maps, one-to-one, onto the diffusers models built from
    the generated configs (diffusers and transformers instantiated on the meta device)."""
    keys = json.loads((COMPVIS_TINY.parent / "sd-v1-keys.json").read_text())
    fake = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
    config = load_config(SD_CONFIG)
    for component, table, dcfg in (
        ("unet", convert.unet_table(config), convert.unet_diffusers_config(config)),
        ("vae", convert.vae_table(config), convert.vae_diffusers_config(config)),
        ("text_encoder", convert.text_table(config), convert.text_encoder_config(config)),
    ):
        released = {k for k in keys if k.startswith(table.prefix) and not k.endswith("position_ids")}
        assert set(table.forward) == released, component
        assert all(tuple(keys[k]) == table.source[k] for k in released)
        converted = table.to_diffusers(fake)
        assert len(converted) == len(released)
        assert convert.check_with_diffusers(component, dcfg, converted) is True
    unet = convert.unet_table(config)
    assert len(unet.forward) == 686 and sum(v.numel() for k, v in fake.items() if k in unet.forward) == 859_520_964


def test_sd_v1_unet_config_matches_the_published_one(tmp_path):
    """The fields of CompVis/stable-diffusion-v1-4's unet/config.json (as the seed README told users to download)."""
    published = {
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(published))
    generated = convert.unet_diffusers_config(load_config(SD_CONFIG))
    convert.check_config_against(generated, path)
    path.write_text(json.dumps({**published, "layers_per_block": 1}))
    with pytest.raises(convert.ConversionError, match="layers_per_block = 1 but the CompVis config gives 2"):
        convert.check_config_against(generated, path)


@pytest.mark.parametrize(
    "unet",
    [
        {},
        {"transformer_depth": 2, "num_heads": -1, "num_head_channels": 16, "attention_resolutions": [2]},
        {"channel_mult": [1, 2, 2], "attention_resolutions": [1, 4], "num_res_blocks": 2, "use_scale_shift_norm": True},
    ],
)
def test_diffusers_to_compvis_is_the_exact_inverse(tmp_path, unet):
    from diffusers import UNet2DConditionModel

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(unet)))
    sd = make_tiny_state_dict(path)
    config = load_config(path)
    theirs = convert.unet_to_diffusers(sd, config)
    back = convert.unet_from_diffusers(theirs, config)
    assert back.keys() == {k for k in sd if k.startswith(convert.UNET_PREFIX)}
    assert all(back[k] is sd[k] for k in back)  # same tensors, nothing copied or reshaped
    # diffusers' own model accepts it strictly and computes what ours computes
    model = UNet2DConditionModel(**_init_args(convert.unet_diffusers_config(config))).eval()
    model.load_state_dict(theirs, strict=True)
    ours = load_model_from_config(config, _save(tmp_path, sd)).model.diffusion_model
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    ctx = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, encoder_hidden_states=ctx).sample, ours(x, t, ctx), atol=1e-5, rtol=0)


def _save(folder, sd):
    from sepce.io import save_torch

    return save_torch(folder / "model.ckpt", {"state_dict": sd})


def test_a_table_the_config_does_not_carry_is_refused():
    """The old converter wrote transformer_layers_per_block 1 whatever the depth, and diffusers dropped the second
    layer's weights without a word; the table check refuses such a pair."""
    config = _config({"transformer_depth": 2})
    honest = convert.unet_diffusers_config(config)
    assert honest["transformer_layers_per_block"] == 2
    table = convert.unet_table(config)
    with pytest.raises(convert.ConversionError, match=r"would not load strictly .*unexpected.*transformer_blocks\.1"):
        convert.KeyTable(
            "UNet",
            convert.UNET_PREFIX,
            table.forward,
            table.source,
            convert.diffusers_unet_shapes({**honest, "transformer_layers_per_block": 1}),
        )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_config({"channel_mult": [2, 2]}), "channel_mult\\[0\\] must be 1"),
        (_config({"resblock_updown": True}), "resblock_updown = True cannot be converted"),
        (_config({"use_linear_in_transformer": True}), "use_linear_in_transformer is not an option of UNetModel"),
        (_config({"num_heads": -1, "num_head_channels": 24}), "heads of channels // heads"),
        (_config(vae={"attn_resolutions": [16]}), "attn_resolutions = \\[16\\] cannot be converted"),
        (_config(beta_schedule="cosine"), "beta_schedule = 'cosine'"),
    ],
)
def test_configs_diffusers_cannot_express_fail_with_one_line(raw, message):
    with pytest.raises(convert.ConversionError, match=message) as info:
        convert.unet_table(raw), convert.vae_table(raw), convert.scheduler_config(raw)
    assert "\n" not in str(info.value)


def test_diffusers_unet_file_of_another_model_is_refused(tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    dcfg = {**_init_args(convert.unet_diffusers_config(TINY_CONFIG)), "cross_attention_dim": 1024}
    sd2 = UNet2DConditionModel(**dcfg).state_dict()
    path = tmp_path / "diffusers-sd2-style.safetensors"
    save_file({k: v.contiguous() for k, v in sd2.items()}, str(path))
    with pytest.raises(convert.ConversionError) as info:
        convert.read_diffusers_unet(path, TINY_CONFIG)
    text = str(info.value)
    assert text.startswith(str(path)) and "SD 2.x UNet (cross-attention width 1024" in text and "\n" not in text
    assert "attn2.to_k.weight: file [32, 1024] vs expected [32, 32]" in text
    with pytest.raises(convert.ConversionError) as header_only:  # the same verdict from the file header alone
        convert.check_diffusers_unet_file(path, TINY_CONFIG)
    assert str(header_only.value) == text
    compvis = tmp_path / "compvis.pt"
    torch.save(make_tiny_state_dict(), compvis)
    with pytest.raises(convert.ConversionError, match="is not a diffusers UNet state dict"):
        convert.read_diffusers_unet(compvis, TINY_CONFIG)


def test_unet_prefixed_files_are_read(tmp_path, sd, cfg):
    theirs = convert.unet_to_diffusers(sd, cfg)
    path = tmp_path / "diffusers-esd.pt"
    torch.save({f"unet.{k}": v for k, v in theirs.items()}, path)
    back = convert.read_diffusers_unet(path, COMPVIS_TINY / "config.yaml")
    assert all(torch.equal(back[k], sd[k]) for k in back) and len(back) == len(theirs)


@pytest.fixture(scope="module")
def converter(load_script):
    script = load_script("train-scripts/convertModels.py")
    return lambda *argv: script.main(script.parse_args([str(a) for a in argv]))


def test_convert_script_writes_diffusers_folder(tmp_path, converter, golden):
    from diffusers import UNet2DConditionModel

    out = tmp_path / "diffusers"
    args = ["--ckpt_path", COMPVIS_TINY / "model.ckpt", "--config_path", COMPVIS_TINY / "config.yaml"]
    converter(*args, "--output_path", out, "--components", "unet", "vae")
    unet = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    with torch.no_grad():
        eps = unet(golden["x_noisy"], golden["t"], encoder_hidden_states=golden["cond"]).sample
    torch.testing.assert_close(eps, golden["eps"], atol=1e-4, rtol=0)
    assert (out / "vae" / "config.json").is_file() and not (out / "text_encoder").exists()
    again = run_script("train-scripts/convertModels.py", *args, "--output_path", out, check=False)
    assert_one_line_error(again, "already exists")
    with pytest.raises(ValueError, match="is a file name \\(the bare UNet\\)"):
        converter(*args, "--output_path", out / "x.pt", "--pipeline")
    with pytest.raises(ValueError, match="--erase needs --record"):
        converter(*args, "--output_path", out / "y", "--erase", "Van Gogh")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_convert_script_bare_unet_state_dict(tmp_path, converter, cfg, sd, suffix):
    out = tmp_path / f"unet{suffix}"
    converter(
        "--ckpt_path", COMPVIS_TINY / "model.ckpt", "--config_path", COMPVIS_TINY / "config.yaml", "--output_path", out
    )
    saved = read_state_dict(out)
    expected = convert.unet_to_diffusers(sd, cfg)
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)
