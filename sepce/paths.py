"""Default locations, relative to the repository root (scripts also accept explicit paths), and run names.

Every default path and the run-folder naming scheme are defined here and nowhere else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "stable-diffusion" / "v1-inference.yaml"
DEFAULT_CKPT = REPO_ROOT / "models" / "ldm" / "sd-v1-4-full-ema.ckpt"
MODELS_DIR = REPO_ROOT / "models"
DATA_DIR = REPO_ROOT / "data"
EVALUATE_CSV = DATA_DIR / "evaluate.csv"  # the evaluation prompts (case_number, prompt, evaluation_seed, class)
#: Where evaluation images, results and tables go: relative to the WORKING directory, as the seed README's
#: ``./evaluation_folder`` (outputs of a run, not inputs of the repository).
EVALUATION_DIR = Path("evaluation_folder")
#: The style classifier artist-cls-train.py writes and artist-cls-test.py reads, relative to the working directory.
ARTIST_CLASSIFIER = Path("models") / "artist-classifier" / "resnet18.pt"


def concept_slug(concept: str) -> str:
    """A concept as it appears in run names: spaces dropped, only ``[A-Za-z0-9_=.-]`` kept (``'Van Gogh'`` →
    ``'VanGogh'``, as the released scripts named their runs); ``''`` → ``'blank'``."""
    return re.sub(r"[^A-Za-z0-9_=.-]", "", concept.replace(" ", "")) or "blank"


def run_name(method: str, concepts: Sequence[str], suffix: Optional[str] = None) -> str:
    """THE name of a training run's folder under ``models/`` (and of what generate-images.py's ``--model_name``
    finds): ``<method>-<concept>[+<concept>...][-<suffix>]`` — ``CiE-VanGogh``,
    ``SepCE-VanGogh+Cezanne+Picasso``, ``ESD-waves-seed1``."""
    if not concepts:
        raise ValueError(f"run_name({method!r}, []): a run erases at least one concept")
    name = f"{method}-{'+'.join(concept_slug(c) for c in concepts)}"
    return f"{name}-{suffix}" if suffix else name


def near(path: Path) -> Path:
    """``path`` relative to the current folder when it lies below it (readable commands), else unchanged."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return Path(path)


def code_version() -> str:
    """The commit this code runs from (``<sha>`` plus ``-dirty`` when the work tree has uncommitted changes to
    tracked files), or ``unknown`` outside a git checkout."""
    import subprocess

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")
