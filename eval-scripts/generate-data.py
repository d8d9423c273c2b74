"""Generate training images of one concept with the ORIGINAL model (seed README "Training Guide", step 1).

    python eval-scripts/generate-data.py --prompt 'Van Gogh' --model_name '0' --save_path './data/' \\
        --num_samples 1 --device 'cuda:0'

Writes ``--num_cases`` cases × ``--num_samples`` images of ``--prompt`` to ``<save_path>/<prompt>/`` as
``<case>_<k>.png`` — the folder the erasure scripts read (``./data/Van Gogh/``; the empty prompt goes to
``<save_path>/blank/``) — with ``manifest.csv`` beside them (``case_number, prompt, evaluation_seed, class``:
a prompt CSV, so ``generate-images.py --prompts_path`` can redo any image) and ``generation.json`` (settings).
Case i's seed is derived from ``--seed`` (first 4 bytes of SHA-256("<seed>:<i>") mod 2^31), image k of a case
starts from row k of ``torch.randn((num_samples, 4, H/8, W/8), generator=manual_seed(case seed))``.
Defaults follow the paper: K-LMS, 100 steps, guidance 7.5, 512 px, 1000 cases. Existing images are skipped.

``--model_name`` is the class index of the prompt in ``data/classes.csv`` (the seed README's '0' = Van Gogh;
default: looked up from the prompt; ``none``: no class folder). Every image is also placed in the
classifier's class folder ``<class_dir>/<index>/`` (default ``<save_path>/train/<index>/``, the folders
``artist-cls-train.py`` reads) as ``<prompt-slug>_<case>_<k>.png`` — a hard link by default (``--link``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from sepce.classes import DEFAULT_CLASS_MAP, ConceptClass, class_by_name, load_class_map
from sepce.data_generation import LINK_MODES, data_folder_name, data_rows, link_file, write_manifest
from sepce.evaluation.common import run_script
from sepce.generation import (
    GenerationReport,
    add_model_arguments,
    add_sampling_arguments,
    check_folder_settings,
    check_runtime,
    folder_settings,
    generate_rows,
    image_name,
    settings_from_args,
    slug,
)
from sepce.modeling import resolve_model

log = logging.getLogger("generate-data")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--prompt", required=True, help="concept prompt, e.g. 'Van Gogh' ('' for the blank class)")
    parser.add_argument(
        "--model_name",
        default=None,
        help="class index (or class name) of the prompt in --classes; 'none' for no class folder "
        "(None: the class whose prompt is --prompt, if any)",
    )
    parser.add_argument("--save_path", type=Path, default=Path("data"), help="images go to <save_path>/<prompt>/")
    parser.add_argument("--num_cases", type=int, default=1000, help="number of cases (seeds)")
    parser.add_argument("--num_samples", type=int, default=1, help="images per case")
    parser.add_argument("--seed", type=int, default=0, help="run seed from which the per-case seeds are derived")
    parser.add_argument(
        "--class_dir",
        type=Path,
        default=None,
        help="classifier class folders <class_dir>/<index>/ (None: <save_path>/train)",
    )
    parser.add_argument(
        "--link", choices=LINK_MODES, default="hardlink", help="how images are placed in the class folder"
    )
    parser.add_argument("--classes", type=Path, default=DEFAULT_CLASS_MAP, help="class map CSV (index,name,prompt)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="regenerate existing images and replace a manifest made with another --seed/--prompt",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampling_arguments(parser)
    add_model_arguments(parser, erase=False)
    args = parser.parse_args(argv)
    for name in ("num_cases", "num_samples", "batch_size", "ddim_steps", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} must be >= 1")
    if args.seed < 0:
        parser.error(f"--seed {args.seed} must be >= 0")
    return args


def concept_class(prompt: str, model_name: Optional[str], classes: Sequence[ConceptClass]) -> Optional[ConceptClass]:
    """The class the images belong to (``--model_name``), checked against the class map's prompt."""
    if model_name is not None and model_name.strip().lower() == "none":
        return None
    if model_name is None:
        try:
            return class_by_name(list(classes), prompt)
        except KeyError:
            log.warning("prompt %r is not in the class map; no class folder is filled (pass --model_name)", prompt)
            return None
    text = model_name.strip()
    if text.isdigit():
        match = [c for c in classes if c.index == int(text)]
        if not match:
            raise ValueError(f"--model_name {text}: not a class index of the class map (0..{len(classes) - 1})")
        chosen = match[0]
    else:
        try:
            chosen = class_by_name(list(classes), text)
        except KeyError:
            raise ValueError(
                f"--model_name {text!r} is neither a class index, a class name nor 'none'; "
                f"classes: {[f'{c.index}={c.name}' for c in classes]}"
            ) from None
    if chosen.prompt.replace(" ", "").lower() != prompt.replace(" ", "").lower():
        raise ValueError(
            f"--model_name {text} is class {chosen.name!r} (prompt {chosen.prompt!r}), but --prompt is "
            f"{prompt!r}; use the matching class index, edit the class map, or pass --model_name none"
        )
    return chosen


def main(args: argparse.Namespace) -> GenerationReport:
    settings = settings_from_args(args)
    check_runtime(args.device, args.precision)
    prompt = args.prompt.strip()
    chosen = concept_class(prompt, args.model_name, load_class_map(args.classes))
    folder = Path(args.save_path) / data_folder_name(prompt, chosen.name if chosen else None)
    resolved = resolve_model("SD-v1-4", args.ckpt_path, args.config_path, args.models_dir)
    rows = data_rows(prompt, args.num_cases, args.seed, chosen.index if chosen else None)
    extra = {"prompt": prompt, "seed": args.seed}
    check_folder_settings(folder, folder_settings(resolved, settings, args.precision), args.overwrite, extra)
    write_manifest(folder, rows, args.overwrite)
    report = generate_rows(
        rows,
        resolved,
        settings,
        folder,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        overwrite=args.overwrite,
        progress=not args.quiet,
        extra=extra,
    )
    where = "" if report.rank.world_size == 1 else f" (rank {report.rank.rank}/{report.rank.world_size})"
    print(f"{folder}: wrote {report.written} image(s), {report.skipped} already existed{where}")
    if chosen is not None and args.link != "none":
        class_folder = Path(args.class_dir or Path(args.save_path) / "train") / str(chosen.index)
        placed, conflicts = 0, []
        for row in report.rows:
            for k in range(args.num_samples):
                source = folder / image_name(row.case_number, k)
                target = class_folder / f"{slug(prompt)}_{image_name(row.case_number, k)}"
                if source.is_file():
                    if link_file(source, target, args.link, args.overwrite):
                        placed += 1
                    else:
                        conflicts.append(target.name)
        if conflicts:
            log.warning(
                "%d image(s) in %s differ from the new ones and were left in place (e.g. %s)",
                len(conflicts),
                class_folder,
                conflicts[:3],
            )
        print(f"{class_folder}: {placed} image(s) of class {chosen.index} ({chosen.name}) in place")
    return report


if __name__ == "__main__":
    run_script(parse_args, main)
