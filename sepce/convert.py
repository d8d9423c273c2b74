"""CompVis ↔ diffusers for Stable Diffusion v1: weight layouts and configs of the UNet, KL autoencoder and CLIP
text encoder, and complete ``StableDiffusionPipeline`` folders — offline, and without diffusers at run time.

Architecture. Every field of the diffusers configs is derived from the CompVis config: levels, channel
multipliers, res-blocks per level, attention resolutions, heads (``num_heads``, or ``num_head_channels`` with the
``legacy`` rule), transformer depth, context width, scale-shift norm, latent size, autoencoder channels and the
DDPM schedule. What diffusers cannot express (``channel_mult[0] != 1``, res-block up/down sampling, attention in
the autoencoder's levels, a cosine schedule, ...) is refused with one line (:class:`ConversionError`).

Keys. ONE table per network maps every CompVis state-dict key to its diffusers key (:func:`unet_key_map`,
:func:`vae_key_map`, :func:`text_key_map`). A table is built by renaming the keys of the CompVis module itself
(instantiated on the meta device) and is checked when built: one-to-one, and equal, key for key and shape for
shape, to the state dict that the generated diffusers config implies (:func:`diffusers_unet_shapes`,
:func:`diffusers_vae_shapes`, :func:`transformers_text_shapes` enumerate it from that config). Export reads a table
forwards, import (:func:`read_diffusers_unet`) backwards, so a block the config does not carry (say a second
transformer layer per block) is an error here instead of weights diffusers silently drops. When diffusers and
transformers are importable, :func:`check_with_diffusers` also instantiates their models on the meta device from
the written configs and compares key sets and shapes.

Pipeline folders (:func:`export_pipeline`) hold ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``
(``text_model.*`` keys, which transformers 4.x needs and 5.x accepts), ``tokenizer/`` (written from the BPE
vocabulary the model's own tokenizer uses) and ``scheduler/`` (SD v1.4's PNDM settings, from the CompVis
schedule); no safety checker (``requires_safety_checker: false``).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
TEXT_MODEL = "text_model."  # transformers' CLIPTextModel layout (4.x needs it, 5.x accepts it)
UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
VAE_TARGET = "ldm.models.autoencoder.AutoencoderKL"
COMPONENTS = ("unet", "vae", "text_encoder")
UNET_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
WEIGHT_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}
DIFFUSERS_VERSION = "0.25.0"  # the oldest diffusers these folders are written for (requirements-dev.txt)
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"

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

Shapes = dict[str, tuple[int, ...]]


class ConversionError(ValueError):
    """A model or file that cannot be converted as asked (one line: what, and what was expected)."""


# ------------------------------------------------------------------------------------------------ configs
def _plain(config: Any) -> dict:
    """A CompVis config (a YAML path, OmegaConf or mapping) as plain containers."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, (str, os.PathLike)):
        from ldm.checkpoint import load_config

        config = load_config(config)
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return json.loads(json.dumps(config, default=str)) if not isinstance(config, dict) else config


def _model_params(config: Any) -> dict:
    return _plain(config)["model"].get("params") or {}


def _node(config: Any, name: str, target: str) -> dict:
    node = _model_params(config).get(name)
    if not isinstance(node, Mapping) or node.get("target") != target:
        got = node.get("target") if isinstance(node, Mapping) else node
        raise ConversionError(f"model.params.{name}.target is {got!r}; diffusers conversion supports {target}")
    return dict(node)


def _with_defaults(cls: type, params: Mapping[str, Any], where: str) -> dict:
    """``params`` completed with the defaults of ``cls.__init__`` and of the ``__init__`` of the classes it passes
    its other keywords on to (its bases up to ``torch.nn.Module``: the encoder and decoder take their shared
    ``ddconfig`` keys in a common base); unknown or missing required ones refused."""
    sig: dict = {}
    for klass in cls.__mro__:
        if klass is torch.nn.Module:
            break
        if "__init__" in vars(klass):
            sig = {**inspect.signature(klass.__init__).parameters, **sig}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values())
    unknown = [k for k in params if k not in sig]
    if unknown and not accepts_any:
        raise ConversionError(f"{where}.{unknown[0]} is not an option of {cls.__name__} (an SD v1 model is expected)")
    out = {k: p.default for k, p in sig.items() if k != "self" and p.default is not inspect.Parameter.empty}
    out.update(params)
    required = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [k for k, p in sig.items() if k != "self" and p.kind in required and k not in out]
    if missing:
        raise ConversionError(f"{where} lacks {missing[0]!r}")
    return out


def _refuse(where: str, params: Mapping[str, Any], rules: Mapping[str, tuple[Any, str]]) -> None:
    for key, (wanted, why) in rules.items():
        if params.get(key) != wanted:
            raise ConversionError(f"{where}.{key} = {params.get(key)!r} cannot be converted to diffusers ({why})")


def unet_arch(config: Any) -> dict:
    """The CompVis UNet's hyper-parameters (defaults filled in) plus per-level ``attention`` and ``heads``."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    where = "model.params.unet_config.params"
    p = _with_defaults(UNetModel, _node(config, "unet_config", UNET_TARGET).get("params") or {}, where)
    _refuse(
        where,
        p,
        {
            "dims": (2, "2-D UNets only"),
            "conv_resample": (True, "diffusers resamples with convolutions"),
            "resblock_updown": (False, "diffusers' SD blocks resample with plain convolutions"),
            "num_classes": (None, "no class conditioning in an SD pipeline"),
            "use_spatial_transformer": (True, "SD v1 cross-attention UNets only"),
        },
    )
    for key in ("num_res_blocks", "transformer_depth", "context_dim"):
        if not isinstance(p[key], int) or isinstance(p[key], bool):
            raise ConversionError(f"{where}.{key} = {p[key]!r}: expected one integer for every level")
    mult = list(p["channel_mult"])
    if mult[0] != 1:
        raise ConversionError(
            f"{where}.channel_mult = {mult}: diffusers ties the time embedding and conv_in width to the first "
            "level's channels, so channel_mult[0] must be 1"
        )
    attention, heads = [], []
    for level, m in enumerate(mult):
        ch = p["model_channels"] * m
        if p["num_head_channels"] == -1:
            n, dim = p["num_heads"], ch // p["num_heads"]
        else:
            n, dim = ch // p["num_head_channels"], p["num_head_channels"]
        if p["legacy"] and n > 0:
            dim = ch // n
        used = 2**level in p["attention_resolutions"] or level == len(mult) - 1  # the middle block uses the last
        if used and (n < 1 or dim != ch // n):
            raise ConversionError(
                f"{where}: level {level} has {ch} channels in {n} heads of {dim} (num_heads={p['num_heads']}, "
                f"num_head_channels={p['num_head_channels']}, legacy={p['legacy']}); diffusers needs heads of "
                f"channels // heads"
            )
        attention.append(2**level in p["attention_resolutions"])
        heads.append(max(n, 1))
    return {**p, "attention": attention, "heads": heads}


def _latent_size(config: Any) -> int:
    return int(_model_params(config).get("image_size", 64))


def unet_diffusers_config(config: Any) -> dict[str, Any]:
    """The diffusers ``unet/config.json`` of the CompVis UNet (every architectural field derived from it)."""
    a = unet_arch(config)
    conditioning = _model_params(config).get("conditioning_key", "crossattn")
    if conditioning != "crossattn":
        raise ConversionError(f"model.params.conditioning_key = {conditioning!r}: SD pipelines condition by crossattn")
    heads = a["heads"]
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": _latent_size(config),
        "in_channels": a["in_channels"],
        "out_channels": a["out_channels"],
        "down_block_types": ["CrossAttnDownBlock2D" if x else "DownBlock2D" for x in a["attention"]],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if x else "UpBlock2D" for x in reversed(a["attention"])],
        "block_out_channels": [a["model_channels"] * m for m in a["channel_mult"]],
        "layers_per_block": a["num_res_blocks"],
        "transformer_layers_per_block": a["transformer_depth"],
        "cross_attention_dim": a["context_dim"],
        # diffusers' historical name: this field holds the number of HEADS per level
        "attention_head_dim": heads[0] if len(set(heads)) == 1 else heads,
        "resnet_time_scale_shift": "scale_shift" if a["use_scale_shift_norm"] else "default",
        "dropout": float(a["dropout"]),
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
        "center_input_sample": False,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "use_linear_projection": False,
        "only_cross_attention": False,
        "dual_cross_attention": False,
        "upcast_attention": False,
        "class_embed_type": None,
    }


def vae_arch(config: Any) -> dict:
    """The CompVis autoencoder's ``ddconfig`` (defaults filled in) and ``embed_dim``, refused where diffusers'
    AutoencoderKL differs."""
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.modules.diffusionmodules.model import Decoder

    node = _node(config, "first_stage_config", VAE_TARGET)
    where = "model.params.first_stage_config.params"
    params = _with_defaults(AutoencoderKL, node.get("params") or {}, where)
    dd = _with_defaults(Decoder, params["ddconfig"], where + ".ddconfig")
    rules = {
        "double_z": (True, "diffusers' encoder predicts mean and log-variance"),
        "attn_resolutions": ([], "diffusers' AutoencoderKL has attention in its middle block only"),
        "resamp_with_conv": (True, "diffusers resamples with convolutions"),
        "use_linear_attn": (False, "vanilla attention only"),
        "attn_type": ("vanilla", "vanilla attention only"),
        "give_pre_end": (False, "the decoder must end in conv_out"),
        "tanh_out": (False, "diffusers' decoder has no tanh"),
    }
    _refuse(where + ".ddconfig", {"double_z": True, **dd, "attn_resolutions": list(dd["attn_resolutions"])}, rules)
    if params["embed_dim"] != dd["z_channels"]:
        raise ConversionError(
            f"{where}: embed_dim {params['embed_dim']} != ddconfig.z_channels {dd['z_channels']}; diffusers' "
            "AutoencoderKL has one latent width"
        )
    return {**dd, "embed_dim": params["embed_dim"]}


def vae_diffusers_config(config: Any, scale_factor: Optional[float] = None) -> dict[str, Any]:
    """The diffusers ``vae/config.json`` (``scale_factor``: a checkpoint's own value, when it stores one)."""
    dd = vae_arch(config)
    levels = len(dd["ch_mult"])
    scaling = scale_factor if scale_factor is not None else _model_params(config).get("scale_factor", 1.0)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
        "layers_per_block": dd["num_res_blocks"],
        "latent_channels": dd["embed_dim"],
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": _latent_size(config) * 2 ** (levels - 1),
        "scaling_factor": float(scaling),
    }


def _text_encoder_parts(config: Any):
    """(CLIPTextConfig, tokenizer) of the config's text encoder, resolved as the model itself resolves them."""
    from ldm.modules.encoders.modules import resolve_text_encoder

    node = _model_params(config).get("cond_stage_config") or {}
    if node.get("target") != "ldm.modules.encoders.modules.FrozenCLIPEmbedder":
        raise ConversionError(
            f"model.params.cond_stage_config.target is {node.get('target')!r}; diffusers conversion supports the "
            "SD v1 CLIP text encoder (ldm.modules.encoders.modules.FrozenCLIPEmbedder)"
        )
    params = node.get("params") or {}
    text_cfg, tokenizer, _ = resolve_text_encoder(
        params.get("version", "openai/clip-vit-large-patch14"), params.get("max_length", 77), params.get("text_config")
    )
    return text_cfg, tokenizer


def text_encoder_config(config: Any) -> dict[str, Any]:
    """transformers ``CLIPTextConfig`` (``text_encoder/config.json``) of the checkpoint's text encoder."""
    text_cfg, tokenizer = _text_encoder_parts(config)
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        **text_cfg.to_dict(),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def scheduler_config(config: Any) -> dict[str, Any]:
    """``scheduler/scheduler_config.json``: SD v1.4's PNDM settings on the CompVis DDPM schedule (CompVis
    "linear" betas = linspace(√start, √end, T)² = diffusers "scaled_linear")."""
    from ldm.models.diffusion.ddpm import DDPM

    params = _model_params(config)
    defaults = {k: p.default for k, p in inspect.signature(DDPM.__init__).parameters.items()}
    value = {k: params.get(k, defaults[k]) for k in ("beta_schedule", "linear_start", "linear_end", "timesteps")}
    names = {"linear": "scaled_linear", "sqrt_linear": "linear"}
    if params.get("given_betas") is not None or value["beta_schedule"] not in names:
        raise ConversionError(
            f"model.params.beta_schedule = {value['beta_schedule']!r}"
            f"{' with given_betas' if params.get('given_betas') is not None else ''}: diffusers has no equal "
            f"schedule (supported: {sorted(names)})"
        )
    return {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_start": float(value["linear_start"]),
        "beta_end": float(value["linear_end"]),
        "beta_schedule": names[value["beta_schedule"]],
        "num_train_timesteps": int(value["timesteps"]),
        "trained_betas": None,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
    }


def model_index() -> dict[str, Any]:
    """``model_index.json`` of a StableDiffusionPipeline without safety checker and feature extractor."""
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def tokenizer_files(config: Any) -> dict[str, str]:
    """The Hugging Face CLIP tokenizer files (name → text) of the model's own BPE vocabulary and merges."""
    _, tok = _text_encoder_parts(config)
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    if tok.decoder.get(tok.pad_token_id) != EOS_TOKEN or BOS_TOKEN not in tok.encoder:
        raise ConversionError("the text encoder's tokenizer does not pad with <|endoftext|> as CLIP does")
    settings = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": tok.max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        **special,
    }
    return {
        "vocab.json": json.dumps(tok.encoder, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(settings, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }


# ---------------------------------------------------------------------------------- diffusers' state dicts
def _linear(s: Shapes, name: str, n_in: int, n_out: int, bias: bool = True) -> None:
    s[f"{name}.weight"] = (n_out, n_in)
    if bias:
        s[f"{name}.bias"] = (n_out,)


def _conv(s: Shapes, name: str, n_in: int, n_out: int, k: int) -> None:
    s[f"{name}.weight"], s[f"{name}.bias"] = (n_out, n_in, k, k), (n_out,)


def _norm(s: Shapes, name: str, n: int) -> None:
    s[f"{name}.weight"], s[f"{name}.bias"] = (n,), (n,)


def _resnet(s: Shapes, name: str, n_in: int, n_out: int, temb: Optional[tuple[int, int]]) -> None:
    """diffusers ResnetBlock2D; ``temb``: (in, out) widths of its time-embedding projection, None in the
    autoencoder."""
    _norm(s, f"{name}.norm1", n_in)
    _conv(s, f"{name}.conv1", n_in, n_out, 3)
    if temb is not None:
        _linear(s, f"{name}.time_emb_proj", temb[0], temb[1])
    _norm(s, f"{name}.norm2", n_out)
    _conv(s, f"{name}.conv2", n_out, n_out, 3)
    if n_in != n_out:
        _conv(s, f"{name}.conv_shortcut", n_in, n_out, 1)


def _transformer(s: Shapes, name: str, ch: int, heads: int, depth: int, context: int) -> None:
    """diffusers Transformer2DModel with 1×1-conv projections (``use_linear_projection: false``)."""
    inner = heads * (ch // heads)
    _norm(s, f"{name}.norm", ch)
    _conv(s, f"{name}.proj_in", ch, inner, 1)
    for j in range(depth):
        b = f"{name}.transformer_blocks.{j}"
        for attn, kv in (("attn1", inner), ("attn2", context)):
            _linear(s, f"{b}.{attn}.to_q", inner, inner, bias=False)
            _linear(s, f"{b}.{attn}.to_k", kv, inner, bias=False)
            _linear(s, f"{b}.{attn}.to_v", kv, inner, bias=False)
            _linear(s, f"{b}.{attn}.to_out.0", inner, inner)
        for n in ("norm1", "norm2", "norm3"):
            _norm(s, f"{b}.{n}", inner)
        _linear(s, f"{b}.ff.net.0.proj", inner, inner * 8)  # GEGLU: 2 × 4·inner
        _linear(s, f"{b}.ff.net.2", inner * 4, inner)
    _conv(s, f"{name}.proj_out", inner, ch, 1)


def _per_block(value: Any, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def diffusers_unet_shapes(dcfg: Mapping[str, Any]) -> Shapes:
    """The state dict (key → shape) of ``UNet2DConditionModel(**dcfg)``, enumerated from the config alone (for
    the options :func:`unet_diffusers_config` writes)."""
    ch = list(dcfg["block_out_channels"])
    n = len(ch)
    heads = _per_block(dcfg["attention_head_dim"], n)
    depth = _per_block(dcfg.get("transformer_layers_per_block", 1), n)
    layers = dcfg["layers_per_block"]
    ctx = dcfg["cross_attention_dim"]
    temb = ch[0] * 4
    proj = 2 if dcfg.get("resnet_time_scale_shift", "default") == "scale_shift" else 1
    s: Shapes = {}
    _linear(s, "time_embedding.linear_1", ch[0], temb)
    _linear(s, "time_embedding.linear_2", temb, temb)
    _conv(s, "conv_in", dcfg["in_channels"], ch[0], dcfg.get("conv_in_kernel", 3))
    prev = ch[0]
    for i, kind in enumerate(dcfg["down_block_types"]):
        for j in range(layers):
            _resnet(s, f"down_blocks.{i}.resnets.{j}", prev if j == 0 else ch[i], ch[i], (temb, proj * ch[i]))
            if kind.startswith("CrossAttn"):
                _transformer(s, f"down_blocks.{i}.attentions.{j}", ch[i], heads[i], depth[i], ctx)
        if i < n - 1:
            _conv(s, f"down_blocks.{i}.downsamplers.0.conv", ch[i], ch[i], 3)
        prev = ch[i]
    for j in (0, 1):
        _resnet(s, f"mid_block.resnets.{j}", ch[-1], ch[-1], (temb, proj * ch[-1]))
    _transformer(s, "mid_block.attentions.0", ch[-1], heads[-1], depth[-1], ctx)
    rev, rev_heads, rev_depth = ch[::-1], heads[::-1], depth[::-1]
    prev = rev[0]
    for i, kind in enumerate(dcfg["up_block_types"]):
        out, skip_in = rev[i], rev[min(i + 1, n - 1)]
        for j in range(layers + 1):
            n_in = (prev if j == 0 else out) + (skip_in if j == layers else out)
            _resnet(s, f"up_blocks.{i}.resnets.{j}", n_in, out, (temb, proj * out))
            if kind.startswith("CrossAttn"):
                _transformer(s, f"up_blocks.{i}.attentions.{j}", out, rev_heads[i], rev_depth[i], ctx)
        if i < n - 1:
            _conv(s, f"up_blocks.{i}.upsamplers.0.conv", out, out, 3)
        prev = out
    _norm(s, "conv_norm_out", ch[0])
    _conv(s, "conv_out", ch[0], dcfg["out_channels"], dcfg.get("conv_out_kernel", 3))
    return s


def _vae_mid(s: Shapes, name: str, ch: int) -> None:
    _resnet(s, f"{name}.resnets.0", ch, ch, None)
    _norm(s, f"{name}.attentions.0.group_norm", ch)
    for p in ("to_q", "to_k", "to_v", "to_out.0"):
        _linear(s, f"{name}.attentions.0.{p}", ch, ch)
    _resnet(s, f"{name}.resnets.1", ch, ch, None)


def diffusers_vae_shapes(dcfg: Mapping[str, Any]) -> Shapes:
    """The state dict (key → shape) of ``AutoencoderKL(**dcfg)``, enumerated from the config alone."""
    ch = list(dcfg["block_out_channels"])
    n, layers, lat = len(ch), dcfg["layers_per_block"], dcfg["latent_channels"]
    s: Shapes = {}
    _conv(s, "encoder.conv_in", dcfg["in_channels"], ch[0], 3)
    prev = ch[0]
    for i in range(n):
        for j in range(layers):
            _resnet(s, f"encoder.down_blocks.{i}.resnets.{j}", prev if j == 0 else ch[i], ch[i], None)
        if i < n - 1:
            _conv(s, f"encoder.down_blocks.{i}.downsamplers.0.conv", ch[i], ch[i], 3)
        prev = ch[i]
    _vae_mid(s, "encoder.mid_block", ch[-1])
    _norm(s, "encoder.conv_norm_out", ch[-1])
    _conv(s, "encoder.conv_out", ch[-1], 2 * lat, 3)
    _conv(s, "quant_conv", 2 * lat, 2 * lat, 1)
    _conv(s, "post_quant_conv", lat, lat, 1)
    _conv(s, "decoder.conv_in", lat, ch[-1], 3)
    _vae_mid(s, "decoder.mid_block", ch[-1])
    rev = ch[::-1]
    prev = rev[0]
    for i in range(n):
        for j in range(layers + 1):
            _resnet(s, f"decoder.up_blocks.{i}.resnets.{j}", prev if j == 0 else rev[i], rev[i], None)
        if i < n - 1:
            _conv(s, f"decoder.up_blocks.{i}.upsamplers.0.conv", rev[i], rev[i], 3)
        prev = rev[i]
    _norm(s, "decoder.conv_norm_out", ch[0])
    _conv(s, "decoder.conv_out", ch[0], dcfg["out_channels"], 3)
    return s


def transformers_text_shapes(tcfg: Mapping[str, Any]) -> Shapes:
    """The state dict (key → shape, ``text_model.`` layout) of transformers' ``CLIPTextModel`` for ``tcfg``."""
    h, inter = tcfg["hidden_size"], tcfg["intermediate_size"]
    s: Shapes = {
        f"{TEXT_MODEL}embeddings.token_embedding.weight": (tcfg["vocab_size"], h),
        f"{TEXT_MODEL}embeddings.position_embedding.weight": (tcfg["max_position_embeddings"], h),
    }
    for i in range(tcfg["num_hidden_layers"]):
        p = f"{TEXT_MODEL}encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(s, f"{p}.self_attn.{proj}", h, h)
        _norm(s, f"{p}.layer_norm1", h)
        _linear(s, f"{p}.mlp.fc1", h, inter)
        _linear(s, f"{p}.mlp.fc2", inter, h)
        _norm(s, f"{p}.layer_norm2", h)
    _norm(s, f"{TEXT_MODEL}final_layer_norm", h)
    return s


# ------------------------------------------------------------------------------------------------ key tables
def _ignorable(key: str) -> bool:
    """Tensors a CompVis file may hold that no inference model has: the autoencoder's training loss, the
    text encoder's constant ``position_ids``."""
    return key.startswith("loss.") or key.endswith("position_ids")


def _compvis_shapes(node: Mapping[str, Any], prefix: str) -> Shapes:
    """Key → shape of the CompVis module ``node`` builds, instantiated on the meta device (no memory)."""
    from ldm.util import instantiate_from_config

    with torch.device("meta"):
        module = instantiate_from_config(node)
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items() if not _ignorable(k)}


def _rename(key: str, modules: Mapping[str, str], inner: Callable[[str, str], Mapping[str, str]]) -> str:
    """Rename ``key`` by its longest matching module prefix, then the parameter path inside that module."""
    for src in sorted(modules, key=len, reverse=True):
        if key == src or key.startswith(src + "."):
            rest = key[len(src) + 1 :]
            for a, b in inner(src, modules[src]).items():
                if rest == a or rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
                    break
            return modules[src] + ("." + rest if rest else "")
    raise ConversionError(f"CompVis key {key!r} has no diffusers counterpart")


def _unet_modules(levels: int, nres: int, attention: Sequence[bool]) -> dict[str, str]:
    """CompVis UNet module prefix → diffusers UNet2DConditionModel module prefix."""
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
            if attention[i]:
                m[f"input_blocks.{k}.1"] = f"down_blocks.{i}.attentions.{j}"
        if i < levels - 1:
            m[f"input_blocks.{1 + i * (nres + 1) + nres}.0.op"] = f"down_blocks.{i}.downsamplers.0.conv"
    for i in range(levels):  # diffusers up block i is CompVis level levels-1-i
        level = levels - 1 - i
        for j in range(nres + 1):
            k = i * (nres + 1) + j
            m[f"output_blocks.{k}.0"] = f"up_blocks.{i}.resnets.{j}"
            if attention[level]:
                m[f"output_blocks.{k}.1"] = f"up_blocks.{i}.attentions.{j}"
            if level > 0 and j == nres:
                m[f"output_blocks.{k}.{2 if attention[level] else 1}.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
    return m


def _vae_modules(levels: int, nres: int) -> dict[str, str]:
    """CompVis autoencoder module prefix → diffusers AutoencoderKL module prefix."""
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


class KeyTable:
    """ONE CompVis ↔ diffusers key table of a network, checked when built (see the module docstring).

    ``prefix``: the network's CompVis key prefix; ``forward``: CompVis key → diffusers key; ``backward``: its
    inverse; ``source``/``target``: the key → shape maps of the CompVis module and of the diffusers model the
    generated config describes; ``squeeze``: diffusers keys whose CompVis tensor is a 1×1 convolution stored as a
    linear weight."""

    def __init__(
        self, what: str, prefix: str, forward: dict[str, str], source: Shapes, target: Shapes, squeeze=frozenset()
    ):
        self.what, self.prefix, self.forward = what, prefix, forward
        self.source, self.target, self.squeeze = source, target, squeeze
        twice = [d for d, n in Counter(forward.values()).items() if n > 1]
        if twice:
            raise ConversionError(f"{what}: several CompVis keys map to the diffusers key {twice[0]!r}")
        self.backward = {d: c for c, d in forward.items()}
        missing = sorted(set(target) - set(self.backward))
        extra = sorted(set(self.backward) - set(target))
        if missing or extra:
            raise ConversionError(
                f"{what}: the converted weights would not load strictly into the diffusers model its config "
                f"describes ({len(missing)} missing, e.g. {missing[:2]}; {len(extra)} unexpected, e.g. {extra[:2]})"
            )
        for c, d in forward.items():
            if self._diffusers_shape(d, source[c]) != tuple(target[d]):
                raise ConversionError(
                    f"{what}: {c} {list(source[c])} would become {d} but the diffusers config implies {list(target[d])}"
                )

    def _diffusers_shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[:2]) if key in self.squeeze else tuple(shape)

    def to_diffusers(self, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict:
        """The diffusers state dict of this network's tensors in a full CompVis state dict: every tensor under
        the network's prefix must map (training-only ``loss.*`` and the ``position_ids`` buffer excepted)."""
        mine = [k for k in state_dict if k.startswith(self.prefix) and not _ignorable(k[len(self.prefix) :])]
        unexpected = [k for k in mine if k not in self.forward]
        missing = [k for k in self.forward if k not in state_dict]
        if missing or unexpected:
            raise ConversionError(
                f"{source} does not match the config's {self.what}: {len(missing)} missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} without a diffusers counterpart (e.g. {unexpected[:2]})"
            )
        out = {}
        for c in mine:
            v = state_dict[c]
            if tuple(v.shape) != tuple(self.source[c]):
                raise ConversionError(
                    f"{source}: {c} has shape {list(v.shape)}, the config's {self.what} expects {list(self.source[c])}"
                )
            d = self.forward[c]
            out[d] = v[:, :, 0, 0] if d in self.squeeze and v.ndim == 4 else v
        return out

    def check_diffusers(self, shapes: Mapping[str, Sequence[int]], source: str = "file") -> None:
        """Raise (one line naming ``source`` and the first differences) unless a diffusers state dict with these
        key → shape pairs is this table's."""
        from ldm.checkpoint import describe_mismatch

        shapes = {k: tuple(v) for k, v in shapes.items()}
        missing = [k for k in self.target if k not in shapes]
        unexpected = [k for k in shapes if k not in self.target]
        problems = describe_mismatch(self.target, shapes, missing, unexpected, examples=2)
        if not problems:
            return
        kind = _guess_unet(shapes, self.target)
        raise ConversionError(
            f"{source} is not a diffusers {self.what} of the base model's architecture"
            f"{' — it looks like ' + kind if kind else ''}: {problems}"
        )

    def from_diffusers(self, state_dict: Mapping[str, torch.Tensor], source: str = "file") -> dict:
        """CompVis tensors (full keys) of a diffusers state dict; its key set and shapes must be this table's."""
        self.check_diffusers({k: v.shape for k, v in state_dict.items()}, source)
        out = {}
        for d, v in state_dict.items():
            c = self.backward[d]
            out[c] = v.reshape(self.source[c]) if d in self.squeeze else v
        return out


def _guess_unet(shapes: Mapping[str, tuple[int, ...]], target: Shapes) -> Optional[str]:
    """What a mismatching diffusers UNet probably is (for the error message)."""
    key = next((k for k in target if k.endswith("attn2.to_k.weight")), None)
    if key is None or key not in shapes:
        return None
    width, ours = int(shapes[key][-1]), target[key][-1]
    known = {1024: "an SD 2.x UNet", 2048: "an SDXL UNet", 768: "an SD 1.x UNet"}
    if width != ours:
        return f"{known.get(width, 'a UNet')} (cross-attention width {width}, the base model's is {ours})"
    return None


def unet_table(config: Any) -> KeyTable:
    """The UNet's key table (CompVis ``model.diffusion_model.*`` ↔ diffusers ``UNet2DConditionModel``)."""
    a = unet_arch(config)
    modules = _unet_modules(len(a["channel_mult"]), a["num_res_blocks"], a["attention"])
    source = _compvis_shapes(_node(config, "unet_config", UNET_TARGET), UNET_PREFIX)

    def inner(_src: str, dst: str) -> Mapping[str, str]:
        return _RESBLOCK if ".resnets." in dst else {}

    forward = {k: _rename(k[len(UNET_PREFIX) :], modules, inner) for k in source}
    return KeyTable("UNet", UNET_PREFIX, forward, source, diffusers_unet_shapes(unet_diffusers_config(config)))


def vae_table(config: Any) -> KeyTable:
    """The autoencoder's key table (CompVis ``first_stage_model.*`` ↔ diffusers ``AutoencoderKL``)."""
    dd = vae_arch(config)
    modules = _vae_modules(len(dd["ch_mult"]), dd["num_res_blocks"])
    source = _compvis_shapes(_node(config, "first_stage_config", VAE_TARGET), VAE_PREFIX)

    def inner(src: str, _dst: str) -> Mapping[str, str]:
        return _VAE_ATTN if src.endswith("attn_1") else _VAE_RESBLOCK

    forward = {k: _rename(k[len(VAE_PREFIX) :], modules, inner) for k in source}
    squeeze = frozenset(d for d in forward.values() if ".attentions.0.to_" in d and d.endswith(".weight"))
    return KeyTable(
        "autoencoder", VAE_PREFIX, forward, source, diffusers_vae_shapes(vae_diffusers_config(config)), squeeze
    )


def text_table(config: Any) -> KeyTable:
    """The text encoder's key table (CompVis ``cond_stage_model.transformer.*`` ↔ ``text_model.*``)."""
    from ldm.modules.encoders.clip import CLIPTextTransformer

    text_cfg, _ = _text_encoder_parts(config)
    with torch.device("meta"):
        module = CLIPTextTransformer(text_cfg)
    source = {TEXT_PREFIX + k: tuple(v.shape) for k, v in module.state_dict().items() if not _ignorable(k)}
    forward = {k: TEXT_MODEL + k[len(TEXT_PREFIX) :] for k in source}
    return KeyTable("text encoder", TEXT_PREFIX, forward, source, transformers_text_shapes(text_encoder_config(config)))


def unet_key_map(config: Any) -> dict[str, str]:
    """CompVis UNet key (``model.diffusion_model.…``) → diffusers key."""
    return dict(unet_table(config).forward)


def vae_key_map(config: Any) -> dict[str, str]:
    """CompVis autoencoder key (``first_stage_model.…``) → diffusers key."""
    return dict(vae_table(config).forward)


def text_key_map(config: Any) -> dict[str, str]:
    """CompVis text-encoder key (``cond_stage_model.transformer.…``) → transformers key (``text_model.…``)."""
    return dict(text_table(config).forward)


def unet_to_diffusers(state_dict: Mapping[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Full CompVis state dict → diffusers ``UNet2DConditionModel`` state dict."""
    return unet_table(config).to_diffusers(state_dict)


def unet_from_diffusers(state_dict: Mapping[str, torch.Tensor], config: Any, source: str = "file") -> dict:
    """diffusers ``UNet2DConditionModel`` state dict → CompVis UNet tensors (``model.diffusion_model.*``)."""
    return unet_table(config).from_diffusers(state_dict, source)


def vae_to_diffusers(state_dict: Mapping[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """CompVis ``first_stage_model.*`` → diffusers AutoencoderKL (1×1 attention convs become linear weights)."""
    return vae_table(config).to_diffusers(state_dict)


def text_encoder_to_transformers(state_dict: Mapping[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """CompVis ``cond_stage_model.transformer.*`` → transformers ``CLIPTextModel`` (``text_model.*`` keys)."""
    return text_table(config).to_diffusers(state_dict)


# ---------------------------------------------------------------------------------------- diffusers-format files
def _strip_unet_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Some tools save ``pipe.state_dict()``-style keys (``unet.down_blocks…``); keep the UNet's own names."""
    if sd and all(k.startswith("unet.") for k in sd):
        return {k[len("unet.") :]: v for k, v in sd.items()}
    return dict(sd)


def looks_like_diffusers_unet(keys: Iterable[str]) -> bool:
    """Whether state-dict keys are a diffusers UNet's (``down_blocks.…``, ``conv_in.weight``, optionally
    ``unet.``-prefixed) rather than a CompVis checkpoint's."""
    keys = [k[len("unet.") :] if k.startswith("unet.") else k for k in keys]
    return any(k.startswith("down_blocks.") for k in keys) and any(k.startswith("conv_in.") for k in keys)


def file_shapes(path: PathLike) -> dict[str, tuple[int, ...]]:
    """Key → shape of a weights file without reading its tensors (safetensors header; torch files memory-mapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - unreadable file → one line
            raise ConversionError(f"cannot read {path}: {str(e)[:200]}") from None
    from ldm.checkpoint import read_state_dict

    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def is_diffusers_unet_file(path: PathLike) -> bool:
    """Whether ``path`` holds a diffusers-format UNet state dict (reads keys only)."""
    return looks_like_diffusers_unet(file_shapes(path))


def check_diffusers_unet_file(path: PathLike, config: Any) -> None:
    """Fail with one line, before any weights are read, unless ``path`` is a diffusers UNet of the architecture
    ``config`` describes (same key set and shapes)."""
    unet_table(config).check_diffusers(_strip_unet_prefix(file_shapes(path)), str(path))


def read_diffusers_unet(path: PathLike, config: Any) -> dict[str, torch.Tensor]:
    """A diffusers-format UNet state dict (``.safetensors``/``.pt``/``.bin``, as ESD's diffusers scripts, UCE and
    others publish erased UNets) → CompVis UNet tensors (``model.diffusion_model.*``), after checking that its key
    set and shapes are those of the base model's UNet (``config``). Errors name the file and the difference."""
    from ldm.checkpoint import read_state_dict

    sd = _strip_unet_prefix(read_state_dict(path))
    if not looks_like_diffusers_unet(sd):
        raise ConversionError(
            f"{path} is not a diffusers UNet state dict (no down_blocks.*/conv_in.* keys); a CompVis checkpoint "
            "is used as a full checkpoint instead"
        )
    return unet_table(config).from_diffusers(sd, str(path))


@torch.no_grad()
def load_diffusers_unet_into(model: torch.nn.Module, path: PathLike, config: Any) -> None:
    """Replace the UNet of a loaded CompVis ``model`` (the base) by the diffusers-format UNet in ``path``."""
    tensors = read_diffusers_unet(path, config)
    unet = model.model.diffusion_model
    unet.load_state_dict({k[len(UNET_PREFIX) :]: v for k, v in tensors.items()}, strict=True)


# ------------------------------------------------------------------------------------------------ writing
def _cast(tensors: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> dict[str, torch.Tensor]:
    return {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in tensors.items()
    }


def pipeline_parts(
    state_dict: Mapping[str, torch.Tensor], config: Any, dtype: Optional[torch.dtype] = None
) -> dict[str, tuple[dict, dict[str, torch.Tensor]]]:
    """``{component: (config.json, state dict)}`` of the UNet, autoencoder and text encoder."""
    scale = state_dict.get("scale_factor")
    return {
        "unet": (unet_diffusers_config(config), _cast(unet_to_diffusers(state_dict, config), dtype)),
        "vae": (
            vae_diffusers_config(config, float(scale) if scale is not None else None),
            _cast(vae_to_diffusers(state_dict, config), dtype),
        ),
        "text_encoder": (text_encoder_config(config), _cast(text_encoder_to_transformers(state_dict, config), dtype)),
    }


def _write_component(folder: Path, name: str, cfg: dict, tensors: dict, overwrite: bool) -> list[Path]:
    from sepce.io import write_json
    from sepce.records import save_safetensors

    weights = save_safetensors(folder / name / WEIGHT_FILES[name], tensors, overwrite=overwrite)
    return [weights, write_json(folder / name / "config.json", cfg, overwrite=overwrite)]


def export_components(
    state_dict: Mapping[str, torch.Tensor],
    config: Any,
    output_dir: PathLike,
    components: Sequence[str] = ("unet",),
    dtype: Optional[torch.dtype] = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``<output_dir>/<component>/{config.json, weights}`` for the chosen components (each file atomic)."""
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ConversionError(f"unknown component {unknown[0]!r}; expected some of {list(COMPONENTS)}")
    parts = pipeline_parts(state_dict, config, dtype)
    written = []
    for name in components:
        cfg, tensors = parts[name]
        check_with_diffusers(name, cfg, tensors)
        written += _write_component(Path(output_dir), name, cfg, tensors, overwrite)
    return written


def export_pipeline(
    state_dict: Mapping[str, torch.Tensor],
    config: Any,
    output_dir: PathLike,
    dtype: Optional[torch.dtype] = None,
    overwrite: bool = False,
) -> Path:
    """A complete ``StableDiffusionPipeline`` folder that ``from_pretrained(output_dir)`` loads offline.

    Written into a temporary folder beside ``output_dir`` and renamed into place, so an interrupted export leaves
    no half-written pipeline; an existing ``output_dir`` is replaced only with ``overwrite``."""
    from sepce.io import write_json, write_text

    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; refusing to overwrite it (pass --overwrite)")
    parts = pipeline_parts(state_dict, config, dtype)
    for name, (cfg, tensors) in parts.items():
        check_with_diffusers(name, cfg, tensors)
    tokenizer, scheduler = tokenizer_files(config), scheduler_config(config)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        for name, (cfg, tensors) in parts.items():
            _write_component(tmp, name, cfg, tensors, overwrite=True)
        for fname, text in tokenizer.items():
            write_text(tmp / "tokenizer" / fname, text)
        write_json(tmp / "scheduler" / "scheduler_config.json", scheduler)
        write_json(tmp / "model_index.json", model_index())
        old = None
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


def export_unet_file(
    state_dict: Mapping[str, torch.Tensor],
    config: Any,
    path: PathLike,
    dtype: Optional[torch.dtype] = None,
    overwrite: bool = False,
) -> Path:
    """The bare diffusers UNet state dict as one file: ``.pt`` (``torch.save``, as the ESD scripts wrote) or
    ``.safetensors``."""
    from sepce.io import save_torch
    from sepce.records import save_safetensors

    path = Path(path)
    if path.suffix not in UNET_FILE_SUFFIXES:
        raise ConversionError(f"{path}: a UNet state-dict file ends in {', '.join(UNET_FILE_SUFFIXES)}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (pass --overwrite)")
    tensors = _cast(unet_to_diffusers(state_dict, config), dtype)
    check_with_diffusers("unet", unet_diffusers_config(config), tensors)
    if path.suffix == ".safetensors":
        return save_safetensors(path, tensors, overwrite=overwrite)
    return save_torch(path, tensors, overwrite=overwrite)


def check_config_against(generated: Mapping[str, Any], path: PathLike) -> None:
    """Fail if a given diffusers ``config.json`` disagrees with the generated one on any field both have."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"diffusers config {path} does not exist")
    try:
        given = json.loads(path.read_text())
    except ValueError as e:
        raise ConversionError(f"{path} is not JSON: {e}") from None

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a = list(a) if isinstance(a, (list, tuple)) else [a] * len(b)
            b = list(b) if isinstance(b, (list, tuple)) else [b] * len(a)
        return a == b

    for k, v in generated.items():
        if not k.startswith("_") and k in given and not same(given[k], v):
            raise ConversionError(f"{path}: {k} = {given[k]!r} but the CompVis config gives {v!r}")


# ------------------------------------------------------------------------------ the other tool, when present
def check_with_diffusers(component: str, cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> bool:
    """Instantiate diffusers' (transformers') model for ``cfg`` on the meta device and compare its state dict's
    keys and shapes with ``tensors``. Returns False, checking nothing, when the library is not installed (it is
    not a runtime dependency); raises :class:`ConversionError` on any difference."""
    try:
        if component == "text_encoder":
            from transformers import CLIPTextConfig, CLIPTextModel

            def build():
                fields = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
                return CLIPTextModel(CLIPTextConfig(**fields))
        else:
            import diffusers

            cls = {"unet": diffusers.UNet2DConditionModel, "vae": diffusers.AutoencoderKL}[component]

            def build():
                return cls.from_config(dict(cfg))
    except ImportError:
        return False
    with torch.device("meta"):
        model = build()
    theirs = {
        (TEXT_MODEL + k if component == "text_encoder" and not k.startswith(TEXT_MODEL) else k): tuple(v.shape)
        for k, v in model.state_dict().items()
        if "position_ids" not in k
    }
    ours = {k: tuple(v.shape) for k, v in tensors.items()}
    missing, extra = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    wrong = [k for k in theirs if k in ours and theirs[k] != ours[k]]
    if missing or extra or wrong:
        first = f"; first shape mismatch {wrong[0]}: ours {list(ours[wrong[0]])} vs {list(theirs[wrong[0]])}"
        raise ConversionError(
            f"the converted {component} does not load strictly into {type(model).__name__}: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}){first if wrong else ''}"
        )
    return True
