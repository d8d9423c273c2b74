"""What the benchmarks in ``bench/`` share: the model configs, a model with random weights, peak memory, one
measurement per subprocess, the parser and the JSON results.

A benchmark puts ``bench/`` on ``sys.path`` and imports this file (``from common import ...``), so it runs as
``python bench/<name>.py`` from a checkout and also when loaded by path (tests). On a bare checkout (a GPU box
without ``pip install -e .``) importing it makes ``sepce`` and ``ldm`` importable from the repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

REPO = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("sepce") is None:  # a bare checkout
    sys.path[:0] = [str(REPO), str(REPO / "ldm-replace")]

import torch  # noqa: E402

from sepce.cli import parser  # noqa: E402
from sepce.io import write_json  # noqa: E402
from sepce.paths import DEFAULT_CONFIG  # noqa: E402
from sepce.tiny import TINY_CONFIG  # noqa: E402
from sepce.training import cpu_peak_rss_bytes as peak_rss  # noqa: E402,F401 - the benchmarks' peak memory

GIB = 2**30


def model_config(tiny: bool, config_path: Union[str, Path, None] = None) -> Path:
    """``config_path``, else the tiny config with ``tiny``, else full-size SD v1 (``v1-inference.yaml``)."""
    return Path(config_path) if config_path else (TINY_CONFIG if tiny else DEFAULT_CONFIG)


def random_model(
    config_path: Union[str, Path],
    *,
    frozen: bool = True,
    gradient_checkpointing: Optional[bool] = None,
    device: Union[str, torch.device] = "cpu",
    seed: int = 0,
) -> torch.nn.Module:
    """The LatentDiffusion model of ``config_path`` with random weights (``torch.manual_seed(seed)``, built on the
    CPU by :func:`ldm.checkpoint.build_model`, no checkpoint read), in eval mode, then moved to ``device``.
    ``frozen``: every parameter without gradients; ``gradient_checkpointing`` None keeps the config's setting."""
    from ldm.checkpoint import build_model, load_config

    torch.manual_seed(seed)
    model = build_model(load_config(config_path), "cpu").eval()
    if frozen:
        for p in model.parameters():
            p.requires_grad_(False)
    if gradient_checkpointing is not None:
        model.model.diffusion_model.set_gradient_checkpointing(gradient_checkpointing)
    return model.to(device)


def run_child(argv: Sequence[str], what: str, stdin: str = "", timeout: Optional[float] = None) -> dict:
    """``python <argv>`` in its own process, so that its peak RSS (``ru_maxrss``) is its own measurement; returns
    the JSON object its last stdout line holds. A failed child ends the benchmark with its stderr."""
    out = subprocess.run(
        [sys.executable, *map(str, argv)], input=stdin, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise SystemExit(f"error: {what} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_parser(description: str, tiny_help: str) -> argparse.ArgumentParser:
    """A benchmark's parser (:func:`sepce.cli.parser`) with ``--tiny`` (the smoke test) and ``--json``."""
    p = parser(description)
    p.add_argument("--tiny", action="store_true", help=tiny_help)
    p.add_argument("--json", type=Path, default=None, help="also write the results here (JSON)")
    return p


def save_results(path: Optional[Path], results: Any) -> Any:
    """``results`` written to ``path`` as JSON (atomically) when a path is given; returns them."""
    if path is not None:
        write_json(path, results)
    return results
