"""Shared fixtures: the CompVis reference fixture, the tiny model, a helper to run scripts."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
COMPVIS_TINY = FIXTURES / "compvis-tiny"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def golden():
    return torch.load(COMPVIS_TINY / "golden.pt", weights_only=True)


@pytest.fixture(scope="session")
def compvis_tiny_model():
    """The reference tiny model (fixture checkpoint + config), loaded once."""
    from ldm.checkpoint import load_model_from_config

    return load_model_from_config(COMPVIS_TINY / "config.yaml", COMPVIS_TINY / "model.ckpt")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A freshly written tiny random checkpoint (``python -m sepce.tiny``); its config sits beside it."""
    from sepce.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    from sepce.modeling import load_model

    return load_model(tiny_ckpt.parent / "config.yaml", tiny_ckpt)


def run_script(
    script: str,
    *args: str,
    cwd: Path | None = None,
    check: bool = True,
    env: dict | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run ``python <repo>/<script> args...``; returns the completed process (stdout/stderr captured)."""
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@functools.lru_cache(maxsize=None)
def _load_script(relative: str):
    """Import a repository script (``eval-scripts/generate-images.py``) as a module, once per session."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location("script_" + path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """``load_script("train-scripts/CiE.py")`` → the script imported as a module (cached), to call its
    ``parse_args`` / ``main`` in-process."""
    return _load_script
