"""CompVis ↔ diffusers weight layouts for the SD v1 UNet, KL autoencoder and CLIP text encoder.

The mapping is derived from the CompVis config (levels, blocks per level, attention resolutions), so it works for
SD v1.4 and for the tiny test configs alike; the matching diffusers ``config.json`` is generated from the same
config, so no hub download is needed.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

_RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_VAE_RESBLOCK = {"nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _unet_params(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return config["model"]["params"]["unet_config"]["params"]


def _vae_params(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return config["model"]["params"]["first_stage_config"]["params"]


def _attn_levels(unet: Mapping[str, Any]) -> list[bool]:
    return [2**level in unet["attention_resolutions"] for level in range(len(unet["channel_mult"]))]


def unet_key_map(config: Mapping[str, Any]) -> dict[str, str]:
    """CompVis UNet module prefix → diffusers UNet2DConditionModel module prefix."""
    unet = _unet_params(config)
    levels, nres, attn = len(unet["channel_mult"]), unet["num_res_blocks"], _attn_levels(unet)
    m = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
        "middle_block.0": "mid_block.resnets.0",
        "middle_block.1": "mid_block.attentions.0",
        "middle_block.2": "mid_block.resnets.1",
    }
    for i in range(levels):
        for j in range(nres):
            k = 1 + i * (nres + 1) + j
            m[f"input_blocks.{k}.0"] = f"down_blocks.{i}.resnets.{j}"
            if attn[i]:
                m[f"input_blocks.{k}.1"] = f"down_blocks.{i}.attentions.{j}"
        if i < levels - 1:
            m[f"input_blocks.{1 + i * (nres + 1) + nres}.0.op"] = f"down_blocks.{i}.downsamplers.0.conv"
    for i in range(levels):  # diffusers up block i is CompVis level levels-1-i
        level = levels - 1 - i
        for j in range(nres + 1):
            k = i * (nres + 1) + j
            m[f"output_blocks.{k}.0"] = f"up_blocks.{i}.resnets.{j}"
            if attn[level]:
                m[f"output_blocks.{k}.1"] = f"up_blocks.{i}.attentions.{j}"
            if level > 0 and j == nres:
                m[f"output_blocks.{k}.{2 if attn[level] else 1}.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
    return m


def _rename(key: str, prefixes: Mapping[str, str], inner: Mapping[str, str]) -> str:
    for src in sorted(prefixes, key=len, reverse=True):
        if key == src or key.startswith(src + "."):
            rest = key[len(src) + 1 :]
            for a, b in inner.items():
                if rest == a or rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
                    break
            return prefixes[src] + ("." + rest if rest else "")
    raise KeyError(f"no diffusers name for {key!r}")


def unet_to_diffusers(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Full CompVis state dict (``model.diffusion_model.*``) → diffusers UNet2DConditionModel state dict."""
    prefixes = unet_key_map(config)
    out = {}
    for key, value in state_dict.items():
        if key.startswith(UNET_PREFIX):
            k = key[len(UNET_PREFIX) :]
            inner = _RESBLOCK if ".resnets." in _rename(k, prefixes, {}) else {}
            out[_rename(k, prefixes, inner)] = value
    return out


def unet_diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusers ``unet/config.json`` equivalent to the CompVis UNet config."""
    unet = _unet_params(config)
    attn = _attn_levels(unet)
    vae = _vae_params(config)
    ch = [unet["model_channels"] * m for m in unet["channel_mult"]]
    downsample = 2 ** (len(vae["ddconfig"]["ch_mult"]) - 1)
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": vae["ddconfig"]["resolution"] // downsample if "resolution" in vae["ddconfig"] else 64,
        "in_channels": unet["in_channels"],
        "out_channels": unet["out_channels"],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": ch,
        "layers_per_block": unet["num_res_blocks"],
        "cross_attention_dim": unet["context_dim"],
        "attention_head_dim": unet["num_heads"],
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
        "center_input_sample": False,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "use_linear_projection": False,
    }


def vae_key_map(config: Mapping[str, Any]) -> dict[str, str]:
    dd = _vae_params(config)["ddconfig"]
    levels, nres = len(dd["ch_mult"]), dd["num_res_blocks"]
    m = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for part in ("encoder", "decoder"):
        m[f"{part}.conv_in"] = f"{part}.conv_in"
        m[f"{part}.conv_out"] = f"{part}.conv_out"
        m[f"{part}.norm_out"] = f"{part}.conv_norm_out"
        m[f"{part}.mid.block_1"] = f"{part}.mid_block.resnets.0"
        m[f"{part}.mid.block_2"] = f"{part}.mid_block.resnets.1"
        m[f"{part}.mid.attn_1"] = f"{part}.mid_block.attentions.0"
    for i in range(levels):
        for j in range(nres):
            m[f"encoder.down.{i}.block.{j}"] = f"encoder.down_blocks.{i}.resnets.{j}"
        if i < levels - 1:
            m[f"encoder.down.{i}.downsample.conv"] = f"encoder.down_blocks.{i}.downsamplers.0.conv"
        for j in range(nres + 1):
            m[f"decoder.up.{i}.block.{j}"] = f"decoder.up_blocks.{levels - 1 - i}.resnets.{j}"
        if i > 0:
            m[f"decoder.up.{i}.upsample.conv"] = f"decoder.up_blocks.{levels - 1 - i}.upsamplers.0.conv"
    return m


def vae_to_diffusers(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """CompVis ``first_stage_model.*`` → diffusers AutoencoderKL (1×1 attention convs become linear weights)."""
    prefixes = vae_key_map(config)
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(VAE_PREFIX) or ".loss." in key:
            continue
        k = key[len(VAE_PREFIX) :]
        is_attn = ".attn_1." in k
        name = _rename(k, prefixes, _VAE_ATTN if is_attn else _VAE_RESBLOCK)
        if is_attn and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[name] = value
    return out


def vae_diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    params = _vae_params(config)
    dd = params["ddconfig"]
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * len(dd["ch_mult"]),
        "up_block_types": ["UpDecoderBlock2D"] * len(dd["ch_mult"]),
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
        "layers_per_block": dd["num_res_blocks"],
        "latent_channels": params["embed_dim"],
        "norm_num_groups": 32,
        "sample_size": dd["resolution"],
        "act_fn": "silu",
        "scaling_factor": config["model"]["params"].get("scale_factor", 0.18215),
    }


def text_encoder_to_transformers(
    state_dict: Mapping[str, torch.Tensor], nested: bool = False
) -> dict[str, torch.Tensor]:
    """CompVis ``cond_stage_model.transformer.*`` → ``transformers`` CLIPTextModel (``text_model.`` prefix when
    ``nested``, as transformers < 5 expects)."""
    prefix = "text_model." if nested else ""
    return {prefix + k[len(TEXT_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(TEXT_PREFIX)}
