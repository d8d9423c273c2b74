"""Convert a CompVis Stable Diffusion v1 checkpoint (original, full erased checkpoint, or the base with an erasure
record applied) to diffusers.

Outputs (nothing is downloaded; every diffusers config is derived from --config_path):
  --pipeline                 a complete StableDiffusionPipeline folder (unet, vae, text_encoder, tokenizer,
                             scheduler, model_index.json; no safety checker) for
                             StableDiffusionPipeline.from_pretrained(folder)
  --components unet [vae ...] only those parts, as <output_path>/<part>/{config.json, weights}
  --output_path X.pt / X.safetensors   the bare diffusers UNet state dict (as the ESD scripts wrote it)

An erased run: --ckpt_path <base checkpoint> --record <run folder or erasure.safetensors> [--erase CONCEPT ...]
(a SepCE record erases every concept it holds unless --erase names a subset).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sepce import cli, convert, records
from sepce.paths import DEFAULT_CKPT, DEFAULT_CONFIG


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.parser(__doc__)
    p.add_argument(
        "--ckpt_path",
        "--original_ckpt_path",
        dest="ckpt_path",
        type=Path,
        default=DEFAULT_CKPT,
        help="CompVis checkpoint (.ckpt or .safetensors) to convert; the base checkpoint with --record",
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
        help="output folder (diffusers layout), or a .pt/.safetensors file for the bare UNet state dict",
    )
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="write a complete StableDiffusionPipeline folder (all components, tokenizer, scheduler, model_index)",
    )
    p.add_argument(
        "--components",
        nargs="+",
        choices=convert.COMPONENTS,
        default=None,
        help="which parts to write into the output folder (default: unet); not with --pipeline",
    )
    p.add_argument(
        "--record",
        type=Path,
        default=None,
        help="erasure record (run folder or erasure.safetensors) to apply onto --ckpt_path before converting",
    )
    p.add_argument(
        "--erase",
        nargs="+",
        default=None,
        help="with a SepCE --record: the concepts to erase (default: all it holds; the others stay restored)",
    )
    p.add_argument(
        "--diffusers_config_path",
        type=Path,
        default=None,
        help="optional diffusers unet/config.json to check the generated config against",
    )
    p.add_argument("--half", action="store_true", help="store weights in float16")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", type=str, default="cpu", help="unused (conversion runs on the CPU); kept for ESD")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> str:
    """Validate the flags before anything is read; returns the output kind: pipeline, components or unet_file."""
    for flag, path in (("--ckpt_path", args.ckpt_path), ("--config_path", args.config_path)):
        if not path.is_file():
            raise FileNotFoundError(f"{flag} {path} does not exist")
    if args.erase and args.record is None:
        raise ValueError("--erase needs --record (a SepCE erasure record to take the concepts from)")
    is_file = args.output_path.suffix in convert.UNET_FILE_SUFFIXES
    if is_file and (args.pipeline or args.components):
        raise ValueError(
            f"--output_path {args.output_path} is a file name (the bare UNet); --pipeline/--components need a folder"
        )
    if args.pipeline and args.components:
        raise ValueError("--pipeline writes every component; drop --components")
    kind = "unet_file" if is_file else "pipeline" if args.pipeline else "components"
    targets = [args.output_path]
    if kind == "components":
        parts = args.components or ["unet"]
        targets = [args.output_path / c / f for c in parts for f in ("config.json", convert.WEIGHT_FILES[c])]
    existing = [t for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing[0]} already exists; refusing to overwrite it (pass --overwrite)")
    return kind


def main(args: argparse.Namespace) -> list[Path]:
    from ldm.checkpoint import load_config, read_checked_state_dict

    kind = check_args(args)
    config = load_config(args.config_path)
    if args.diffusers_config_path is not None:
        convert.check_config_against(convert.unet_diffusers_config(config), args.diffusers_config_path)
    record = erase = None
    if args.record is not None:
        record = records.load_record(args.record)
        erase = records.match_concepts(record, args.erase) if args.erase else None
        records.check_base(record, args.ckpt_path)
    sd = read_checked_state_dict(config, args.ckpt_path)
    if record is not None:
        sd = records.erased_state_dict(sd, record, erase)
    dtype = torch.float16 if args.half else None
    if kind == "unet_file":
        written = [convert.export_unet_file(sd, config, args.output_path, dtype, overwrite=args.overwrite)]
    elif kind == "pipeline":
        written = [convert.export_pipeline(sd, config, args.output_path, dtype, overwrite=args.overwrite)]
    else:
        components = args.components or ["unet"]
        written = convert.export_components(sd, config, args.output_path, components, dtype, args.overwrite)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    cli.run(parse_args, main)
