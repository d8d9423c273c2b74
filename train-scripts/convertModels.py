"""Convert a CompVis Stable Diffusion v1 checkpoint (original or erased) to diffusers weights.

Writes ``<output_path>/unet/{config.json,diffusion_pytorch_model.safetensors}`` (and ``vae/``, ``text_encoder/``
when asked), or, when ``--output_path`` ends in ``.pt``, the bare diffusers UNet state dict as the ESD scripts did.
The diffusers configs are generated from the CompVis config, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from ldm.checkpoint import CheckpointError, load_config, read_checked_state_dict
from omegaconf import OmegaConf

from sepce import convert
from sepce.io import atomic_path, save_torch, write_json
from sepce.paths import DEFAULT_CKPT, DEFAULT_CONFIG

COMPONENTS = ("unet", "vae", "text_encoder")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--ckpt_path",
        "--original_ckpt_path",
        dest="ckpt_path",
        type=Path,
        default=DEFAULT_CKPT,
        help="CompVis checkpoint (.ckpt or .safetensors) to convert",
    )
    p.add_argument(
        "--config_path",
        "--compvis_config_path",
        dest="config_path",
        type=Path,
        default=DEFAULT_CONFIG,
        help="CompVis config of the checkpoint",
    )
    p.add_argument(
        "--output_path",
        type=Path,
        required=True,
        help="output folder (diffusers layout), or a .pt file for the bare UNet state dict",
    )
    p.add_argument(
        "--diffusers_config_path",
        type=Path,
        default=None,
        help="optional diffusers unet/config.json to check the generated config against",
    )
    p.add_argument(
        "--components",
        nargs="+",
        choices=COMPONENTS,
        default=["unet"],
        help="which parts to write (folder output only)",
    )
    p.add_argument("--half", action="store_true", help="store weights in float16")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", type=str, default="cpu", help="unused (conversion runs on the CPU); kept for ESD")
    return p.parse_args(argv)


def check_against(generated: dict, path: Path) -> None:
    """Fail if a given diffusers config disagrees with the generated one on any architectural field."""
    given = json.loads(path.read_text())
    diffs = [k for k, v in generated.items() if not k.startswith("_") and k in given and given[k] != v]
    if diffs:
        k = diffs[0]
        raise ValueError(f"{path}: {k} = {given[k]!r} but the CompVis config gives {generated[k]!r}")


def main(args: argparse.Namespace) -> list[Path]:
    if args.diffusers_config_path is not None and not args.diffusers_config_path.is_file():
        raise FileNotFoundError(f"diffusers config {args.diffusers_config_path} does not exist")
    config = load_config(args.config_path)
    sd = read_checked_state_dict(config, args.ckpt_path)
    cfg = OmegaConf.to_container(config, resolve=True)
    dtype = torch.float16 if args.half else None
    unet_cfg = convert.unet_diffusers_config(cfg)
    if args.diffusers_config_path is not None:
        check_against(unet_cfg, args.diffusers_config_path)
    cast = (
        (lambda d: {k: v.to(dtype).contiguous() for k, v in d.items()})
        if dtype
        else (lambda d: {k: v.contiguous() for k, v in d.items()})
    )
    if args.output_path.suffix == ".pt":
        return [save_torch(args.output_path, cast(convert.unet_to_diffusers(sd, cfg)), overwrite=args.overwrite)]
    from safetensors.torch import save_file

    parts = {
        "unet": (convert.unet_to_diffusers, unet_cfg),
        "vae": (convert.vae_to_diffusers, convert.vae_diffusers_config(cfg)),
        "text_encoder": (lambda s, _c: convert.text_encoder_to_transformers(s), None),
    }
    written = []
    for name in args.components:
        fn, comp_cfg = parts[name]
        folder = args.output_path / name
        weights = folder / ("model.safetensors" if name == "text_encoder" else "diffusion_pytorch_model.safetensors")
        tensors = cast(fn(sd, cfg))
        with atomic_path(weights, overwrite=args.overwrite) as tmp:
            save_file(tensors, str(tmp))
        if comp_cfg is None:
            comp_cfg = text_encoder_config(config)
        written += [weights, write_json(folder / "config.json", comp_cfg, overwrite=args.overwrite)]
    return written


def text_encoder_config(config) -> dict:
    """transformers ``CLIPTextConfig`` fields of the checkpoint's text encoder."""
    from ldm.modules.encoders.modules import resolve_text_encoder

    params = OmegaConf.to_container(config.model.params.cond_stage_config.get("params", {}) or {}, resolve=True)
    text_cfg, _, _ = resolve_text_encoder(
        params.get("version", "openai/clip-vit-large-patch14"),
        params.get("max_length", 77),
        params.get("text_config"),
    )
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        **text_cfg.to_dict(),
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


if __name__ == "__main__":
    try:
        for path in main(parse_args()):
            print(f"wrote {path}")
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        sys.exit(f"error: {e}")
