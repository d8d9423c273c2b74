"""Compose an erasure record onto its base checkpoint: erase any subset of a SepCE run's concepts, or restore some.

    python train-scripts/compose_erasure.py --record models/SepCE-VanGogh+Cezanne+Picasso \\
        --erase VanGogh Picasso --output models/sd-no-VanGogh-Picasso.ckpt
    # later: restore VanGogh = drop its increment (same base, Picasso still erased)
    python train-scripts/compose_erasure.py --record models/SepCE-VanGogh+Cezanne+Picasso \\
        --erase VanGogh Picasso --restore VanGogh --output models/sd-no-Picasso.ckpt

Writes W = W_orig + Σ_{c ∈ erase − restore} A_c (β S_c) into a full CompVis checkpoint (``.ckpt``, or
``.safetensors`` by suffix) equal to the base in every other tensor, plus ``<output>.json`` naming the record, the
base and the erased concepts. Replaced-tensor records (CiE, ESD, FMN, Ablating Concepts) compose only as a whole.
The record must have been made from ``--ckpt_path`` (SHA-256 compared); otherwise nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ldm.checkpoint import read_state_dict

from sepce import records
from sepce.cli import parser, run
from sepce.io import write_json
from sepce.paths import DEFAULT_CKPT, run_name


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--record", type=Path, required=True, help="run folder or erasure.safetensors file")
    p.add_argument("--erase", nargs="*", default=None, help="concepts to erase (default: all in the record)")
    p.add_argument(
        "--restore",
        nargs="*",
        default=[],
        help="concepts to keep (not erase) — removed from --erase, i.e. their increment is dropped",
    )
    p.add_argument("--ckpt_path", type=Path, default=DEFAULT_CKPT, help="base CompVis checkpoint of the record")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="checkpoint to write (default: <record folder>/composed-<concepts>.ckpt)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--list", action="store_true", help="print the record's concepts and exit")
    return p.parse_args(argv)


def resolve_subset(record: records.ErasureRecord, erase: Optional[Sequence[str]], restore: Sequence[str]) -> list[str]:
    """The concepts to erase: ``erase`` (default all) minus ``restore``, both matched to the record's concept names
    (:func:`sepce.records.match_concepts`); only a separable record erases a subset of its concepts."""
    chosen = list(record.concepts) if erase is None else records.match_concepts(record, erase)
    kept = records.match_concepts(record, restore, "--restore") if restore else []
    subset = [c for c in chosen if c not in kept]
    if not subset:
        raise ValueError("nothing to erase: --erase minus --restore is empty (the base checkpoint is the result)")
    return record.check_concepts(subset)


def main(args: argparse.Namespace) -> Path:
    record = records.load_record(args.record)
    if args.list:
        print("\n".join(record.concepts))
        return record.path
    subset = resolve_subset(record, args.erase, args.restore)
    output = args.output or record.path.parent / f"{run_name('composed', subset)}.ckpt"
    if output.suffix not in (".ckpt", ".safetensors"):
        raise ValueError(f"--output {output}: expected a .ckpt or .safetensors file name")
    sidecar = output.with_name(output.name + ".json")
    for p in (output, sidecar):
        if p.exists() and not args.overwrite:
            raise FileExistsError(f"{p} already exists; refusing to overwrite it (pass --overwrite)")
    if not Path(args.ckpt_path).is_file():
        raise FileNotFoundError(f"base checkpoint {args.ckpt_path} does not exist (--ckpt_path)")
    records.check_base(record, args.ckpt_path)
    changed = records.erased_tensors(read_state_dict(args.ckpt_path), record, subset)
    records.write_full_checkpoint(args.ckpt_path, output, changed, overwrite=args.overwrite)
    write_json(
        sidecar,
        {
            "record": str(record.path),
            "record_sha256": records.file_digest(record.path),
            "method": record.method,
            "erased": subset,
            "not_erased": [c for c in record.concepts if c not in subset],
            "base": record.base,
        },
        overwrite=True,
    )
    print(f"wrote {output}: erased {subset} from {args.ckpt_path}")
    return output


if __name__ == "__main__":
    run(parse_args, main)
