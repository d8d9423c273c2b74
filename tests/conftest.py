"""Shared fixtures: the CompVis reference fixture, the tiny model, helpers to run scripts and check their errors."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def write_images(folder: Path, n: int = 3, size: int = 64, seed: int = 0) -> Path:
    """``n`` random RGB images ``<i>_0.png`` (size x size) in ``folder`` (training images of a concept)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}_0.png")
    return folder


def world_attack_argv(tmp_path: Path, tiny_ckpt: Path, *attack_flags: str) -> list[str]:
    """The argv of an attack script (attack-inversion.py, attack-adversarial-prompt.py) on the tiny model against
    the world concept 'in the style of waves', judged by the shipped world classifier: writes two training images
    under ``tmp_path/data`` and a two-row CSV; ``attack_flags`` go before the closing ``--classifier X --quiet``."""
    from sepce.world.concept_classifier import SHIPPED_CLASSIFIER

    write_images(tmp_path / "data" / "in the style of waves", n=2)
    (tmp_path / "eval.csv").write_text(
        "case_number,prompt,evaluation_seed,class\n0,in the style of waves,5,3\n1,in the style of dots,6,1\n"
    )
    config, classes = str(tiny_ckpt.parent / "config.yaml"), str(REPO / "data" / "world" / "classes.csv")
    return [
        "--model_name", "original", "--ckpt_path", str(tiny_ckpt), "--config_path", config,
        "--prompt", "in the style of waves", "--classes", classes, "--data_dir", str(tmp_path / "data"),
        "--prompts_path", str(tmp_path / "eval.csv"), "--save_path", str(tmp_path / "out"), "--num_samples", "2",
        "--sampler", "ddim", "--ddim_steps", "4", "--image_size", "64", "--device", "cpu", *attack_flags,
        "--classifier", str(SHIPPED_CLASSIFIER), "--quiet",
    ]  # fmt: skip


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


@functools.cache
def _load_script(relative: str):
    """Import a repository script (``eval-scripts/generate-images.py``) as a module, once per session."""
    from sepce.cli import import_script

    return import_script(REPO / relative)


@pytest.fixture(scope="session")
def load_script():
    """``load_script("train-scripts/CiE.py")`` → the script imported as a module (cached), to call its
    ``parse_args`` / ``main`` in-process."""
    return _load_script


@pytest.fixture(scope="session")
def wide_ckpt(tmp_path_factory) -> Path:
    """A tiny random checkpoint of ``configs/tiny/v1-tiny-wide.yaml`` (a text context wide enough for SepCE's
    null-space bases); its config sits beside it."""
    from sepce.tiny import TINY_WIDE_CONFIG, write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-wide"), config_path=TINY_WIDE_CONFIG)


@pytest.fixture()
def no_model_load(monkeypatch):
    """Any attempt to load a model fails the test: bad input must be refused before."""
    import sepce.training.session

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(sepce.training.session, "load_model", refuse)


def assert_one_line_error(
    result: subprocess.CompletedProcess | tuple[int, str],
    *needles: str,
    pattern: str | None = None,
    status: int | None = None,
) -> str:
    """``result`` (a finished script process, or ``(exit status, stderr)`` of an in-process run) ended as
    ``sepce.cli.run`` ends bad input: exit status 1 (or ``status``: 4 for a failed check), exactly ONE
    ``<script>: error: ...`` line on stderr and no traceback; that line holds every one of ``needles`` and matches
    the regular expression ``pattern``. Returns the line."""
    from sepce.cli import EXIT_USER_ERROR

    expected = EXIT_USER_ERROR if status is None else status
    code, stderr = (result.returncode, result.stderr) if hasattr(result, "returncode") else result
    assert code == expected, f"exit status {code}, expected {expected}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, stderr[-3000:]
    assert all(needle in lines[0] for needle in needles), (needles, lines[0])
    assert pattern is None or re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]


@contextlib.contextmanager
def one_line_error(capsys, *needles: str, pattern: str | None = None):
    """The block runs a script in-process through ``sepce.cli.run`` and must end with bad input's exit
    (:func:`assert_one_line_error`); the yielded list holds the error line afterwards."""
    found: list[str] = []
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        yield found
    found.append(assert_one_line_error((info.value.code, capsys.readouterr().err), *needles, pattern=pattern))


def projection_outputs(model, x_t, t, cond, projections=("to_q",)) -> dict:
    """``{(attn2 layer name, projection): output}`` of one forward without gradients, recorded with plain torch
    forward hooks on the named projections of every cross-attention layer — an oracle independent of sepce's
    attention capture."""
    from sepce.modeling import attn2_modules

    seen = {}
    handles = [
        getattr(mod, proj).register_forward_hook(lambda m_, inp, out, key=(name, proj): seen.__setitem__(key, out))
        for name, mod in attn2_modules(model).items()
        for proj in projections
    ]
    try:
        with torch.no_grad():
            model.apply_model(x_t, t, cond)
    finally:
        for h in handles:
            h.remove()
    return seen
