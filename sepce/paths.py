"""Default locations, relative to the repository root (scripts also accept explicit paths)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "stable-diffusion" / "v1-inference.yaml"
DEFAULT_CKPT = REPO_ROOT / "models" / "ldm" / "sd-v1-4-full-ema.ckpt"
MODELS_DIR = REPO_ROOT / "models"
DATA_DIR = REPO_ROOT / "data"
