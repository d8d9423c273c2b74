"""The run folder of a training run (:class:`Run`): ``args.json``, ``losses.csv`` (one row per iteration, flushed
as it goes), ``summary.json`` (:data:`SUMMARY_KEYS`), ``loss.png``, ``erasure.safetensors`` (:mod:`sepce.records`)
and optional full CompVis checkpoints, with the wall time and peak memory of the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from sepce import records
from sepce.io import atomic_path, write_json

RUN_FILES = ("args.json", "losses.csv", "summary.json", "loss.png", records.RECORD_NAME)
#: The keys of every run's ``summary.json``, whatever the method (:meth:`TrainingSession.finish`).
SUMMARY_KEYS = (
    "method",
    "concepts",
    "iterations",
    "stop_reason",
    "ok",
    "reference",
    "devices",
    "data",
    "settings",
    "output_dir",
    "wall_time_s",
    "cpu_peak_rss_bytes",
    "cuda_max_allocated_bytes",
    "files",
)


def cpu_peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, in bytes (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss * (1 if sys.platform == "darwin" else 1024))


def peak_memory() -> dict:
    """Peak resident memory of this process (bytes) and, per CUDA device used, ``torch.cuda.max_memory_allocated``."""
    out: dict[str, Any] = {"cpu_peak_rss_bytes": cpu_peak_rss_bytes(), "cuda_max_allocated_bytes": {}}
    if torch.cuda.is_available():
        out["cuda_max_allocated_bytes"] = {
            f"cuda:{i}": int(torch.cuda.max_memory_allocated(i))
            for i in range(torch.cuda.device_count())
            if torch.cuda.max_memory_allocated(i) > 0
        }
    return out


class Run:
    """A run folder: ``args.json`` now, ``losses.csv`` row by row (:meth:`log`), ``summary.json`` and ``loss.png``
    at :meth:`finish`. With ``overwrite`` the run files of an earlier run there (and the checkpoints its summary
    lists) are removed first, so the folder never mixes two runs."""

    def __init__(
        self,
        directory: Union[str, Path],
        args: Union[argparse.Namespace, Mapping, None],
        method: str,
        overwrite: bool = False,
    ):
        self.dir = Path(directory)
        self.method = method
        check_output_dir(self.dir, overwrite)
        self.dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self._clear_previous()
        self.started = time.time()
        self.rows: list[dict] = []
        self.files: list[str] = []
        self._csv = None
        self._writer = None
        payload = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        self.write_json("args.json", {"method": method, **payload})

    def _clear_previous(self) -> None:
        old = self.dir / "summary.json"
        extra: list[str] = []
        if old.is_file():
            try:
                extra = [f for f in json.loads(old.read_text()).get("files", []) if "/" not in f]
            except (ValueError, AttributeError):
                extra = []
        for name in {*RUN_FILES, *extra}:
            p = self.dir / name
            if p.is_file():
                p.unlink()

    def path(self, name: str) -> Path:
        return self.dir / name

    def write_json(self, name: str, obj: Any) -> Path:
        path = write_json(self.path(name), obj)
        self.add_file(name)
        return path

    def add_file(self, name: str) -> Path:
        """The path of run file ``name``, listed from now on in ``summary.json``'s ``files`` (the caller writes it)."""
        if name not in self.files:
            self.files.append(name)
        return self.path(name)

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one row to ``losses.csv`` (columns fixed by the first row; a later row may leave some blank)."""
        row = dict(row)
        if self._writer is None:
            self._csv = self.path("losses.csv").open("w", newline="")
            self._writer = csv.DictWriter(self._csv, fieldnames=list(row), restval="")
            self._writer.writeheader()
            self.add_file("losses.csv")
        unknown = [k for k in row if k not in self._writer.fieldnames]
        if unknown:
            raise ValueError(f"losses.csv row has columns {unknown} that the first row did not declare")
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._csv.flush()
        self.rows.append(row)

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None

    def plot(self, name: str = "loss.png", x: str = "iteration", group: str = "concept") -> Optional[Path]:
        """Loss curves (matplotlib, Agg backend): one panel per numeric quantity against ``x``; columns named
        ``quantity[label]`` share a panel (one line per label), and rows with a ``group`` column (SepCE's
        one-at-a-time mode) give one line per group value. ``seconds`` and ``flag[...]`` columns are left out."""
        if not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def numeric(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        panels: dict[str, list[tuple[str, str]]] = {}  # quantity → [(column, label)]
        for col in self.rows[0]:
            if (
                col in (x, "seconds", group)
                or col.startswith("flag[")
                or not any(numeric(r.get(col)) for r in self.rows)
            ):
                continue
            quantity, _, label = col.partition("[")
            panels.setdefault(quantity, []).append((col, label.rstrip("]")))
        if not panels:
            return None
        fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
        style = "o-" if len(self.rows) < 30 else "-"
        for ax, (quantity, cols) in zip(axes[:, 0], panels.items()):
            for col, label in cols:
                groups = dict.fromkeys(str(r.get(group)) for r in self.rows) if group in self.rows[0] else {"": None}
                for g in groups:
                    pts = [
                        (r[x], r[col]) for r in self.rows if numeric(r.get(col)) and (not g or str(r.get(group)) == g)
                    ]
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, lw=1, ms=3, label=label or g or None)
            if len(cols) > 1 or (group in self.rows[0]):
                ax.legend(fontsize=7)
            ax.set_ylabel(quantity, fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel(x)
        fig.suptitle(f"{self.method}: {self.dir.name}", fontsize=10)
        fig.tight_layout()
        with atomic_path(self.path(name)) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        self.add_file(name)
        return self.path(name)

    def finish(self, iterations: int, stop_reason: str, **extra: Any) -> dict:
        """Write ``loss.png`` and ``summary.json`` (iterations, stop reason, wall time, peak memory, ``extra``)."""
        self.close()
        self.plot()
        summary = {
            "method": self.method,
            "iterations": iterations,
            "stop_reason": stop_reason,
            "wall_time_s": round(time.time() - self.started, 3),
            **peak_memory(),
            **extra,
        }
        self.add_file("summary.json")
        summary["files"] = list(self.files)
        write_json(self.path("summary.json"), summary)
        return summary


def _fmt(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        return repr(v)
    return v


def check_output_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--output_dir {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--output_dir {path} is not empty; refusing to overwrite a run (pass --overwrite "
            f"or choose another --output_dir)"
        )
