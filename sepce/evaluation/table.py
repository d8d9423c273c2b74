"""The paper's results table: FID / ACC / LPIPS per concept for the original model and erased models.

Each model is a model folder with a ``results/`` subfolder (:mod:`sepce.evaluation.results`): ``accuracy.csv``
from ``artist-cls-test.py`` and, for erased models, ``lpips.csv`` / ``fid.csv`` from ``lpips_eval.py``
(measured against the original model's images). For every model the caller says which concepts it erased and
which it restored (SepCE can erase several concepts and restore some later); every other concept is *regular*.

The table has one row per model and one cell ``FID / ACC / LPIPS`` per concept (ACC in %), then the averages
over the model's erased, restored and regular concepts (NaN cells skipped). Erased cells are bold, restored
cells italic in the Markdown. The CSV has the same content with one numeric column per (concept, metric). The
chart (:func:`plot_table`) shows per-concept accuracy and the three role averages per metric.

A spec JSON for ``eval-scripts/make-table.py --spec``::

    {"original": {"name": "ORI", "path": "evaluation_folder/default"},
     "models": [{"name": "CiE", "path": "evaluation_folder/cie", "erased": ["Van Gogh"]},
                {"name": "SepCE", "path": "evaluation_folder/sepce", "erased": ["Van Gogh"],
                 "restored": ["Picasso"]}],
     "concepts": ["Van Gogh", "Picasso"]}          # optional: columns to show (default: the whole class map)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sepce.classes import ConceptClass, classes_by_names
from sepce.io import atomic_write

from .results import metric_paths, read_metric

log = logging.getLogger(__name__)

METRICS = ("fid", "accuracy", "lpips")
LABELS = {"fid": "FID", "accuracy": "ACC", "lpips": "LPIPS"}
ROLES = ("erased", "restored", "regular")


@dataclass
class ModelSpec:
    """One table row: a model folder and the concepts (class-map names) it erased / restored."""

    name: str
    path: Path
    erased: List[str] = field(default_factory=list)
    restored: List[str] = field(default_factory=list)
    original: bool = False

    def role(self, concept: str) -> str:
        if concept in self.erased:
            return "erased"
        if concept in self.restored:
            return "restored"
        return "regular"


@dataclass
class Table:
    """Collected ``values[model][concept][metric]`` and ``averages[model][role][metric]`` (NaN if none)."""

    models: List[ModelSpec]
    concepts: List[str]
    values: Dict[str, Dict[str, Dict[str, float]]]
    averages: Dict[str, Dict[str, Dict[str, float]]]


def _canonical(classes: Sequence[ConceptClass], names: Sequence[str], what: str) -> List[str]:
    return [c.name for c in classes_by_names(classes, names, what)]


def normalise_specs(models: Sequence[ModelSpec], classes: Sequence[ConceptClass]) -> List[ModelSpec]:
    """Check names, folders and concepts; concept names become the class map's display names."""
    seen = set()
    for spec in models:
        if spec.name in seen:
            raise ValueError(f"model name {spec.name!r} is used twice; table rows need distinct names")
        seen.add(spec.name)
        if not Path(spec.path).is_dir():
            raise NotADirectoryError(f"model {spec.name!r}: folder {spec.path} does not exist")
        spec.erased = _canonical(classes, spec.erased, f"model {spec.name!r} erased concept")
        spec.restored = _canonical(classes, spec.restored, f"model {spec.name!r} restored concept")
        both = sorted(set(spec.erased) & set(spec.restored))
        if both:
            raise ValueError(
                f"model {spec.name!r}: concept(s) {both} are listed as both erased and restored; "
                "list a concept that was erased and then restored under restored only"
            )
    return list(models)


def load_spec(path: str | Path) -> tuple:
    """``(models, concepts or None)`` from a spec JSON (see the module docstring); paths relative to it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table spec {path} does not exist")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"table spec {path} is not valid JSON: {error}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("models", []), list):
        raise ValueError(f"table spec {path} must be an object with 'original' and a 'models' list")

    def model(entry, original: bool) -> ModelSpec:
        if not isinstance(entry, dict) or "name" not in entry or "path" not in entry:
            raise ValueError(f"table spec {path}: each model needs 'name' and 'path', got {entry!r}")
        folder = Path(entry["path"])
        folder = folder if folder.is_absolute() else path.parent / folder
        return ModelSpec(
            str(entry["name"]),
            folder,
            list(entry.get("erased", [])),
            list(entry.get("restored", [])),
            original,
        )

    models = ([model(spec["original"], True)] if "original" in spec else []) + [
        model(entry, False) for entry in spec.get("models", [])
    ]
    return models, spec.get("concepts")


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def collect(
    models: Sequence[ModelSpec], classes: Sequence[ConceptClass], concepts: Optional[Sequence[str]] = None
) -> Table:
    """Read every model's results and compute the role averages.

    Missing result files are logged once per model and metric and leave NaN cells. The original model's FID
    and LPIPS are not applicable (NaN) unless its folder has such files.
    """
    models = normalise_specs(models, classes)
    names = _canonical(classes, concepts, "--concepts") if concepts else [c.name for c in classes]
    original = next((m for m in models if m.original), None)
    values: Dict[str, Dict[str, Dict[str, float]]] = {}
    averages: Dict[str, Dict[str, Dict[str, float]]] = {}
    for spec in models:
        per_metric = {}
        for metric in METRICS:
            stored = read_metric(spec.path, metric)
            if stored is None:
                if not (spec.original and metric != "accuracy"):
                    log.warning(
                        "model %r has no %s; its %s cells stay empty",
                        spec.name,
                        metric_paths(spec.path, metric)[0],
                        LABELS[metric],
                    )
                stored = {}
            else:
                absent = [c for c in names if c not in stored]
                if absent:
                    log.warning("model %r: %s has no row for %s", spec.name, metric_paths(spec.path, metric)[0], absent)
                if metric != "accuracy" and original is not None and not spec.original:
                    _check_reference(spec, metric, original)
            per_metric[metric] = stored
        values[spec.name] = {
            concept: {metric: per_metric[metric].get(concept, math.nan) for metric in METRICS} for concept in names
        }
        averages[spec.name] = {
            role: {
                metric: _mean([values[spec.name][c][metric] for c in names if spec.role(c) == role])
                for metric in METRICS
            }
            for role in ROLES
        }
    return Table(list(models), names, values, averages)


def _check_reference(spec: ModelSpec, metric: str, original: ModelSpec) -> None:
    """Warn when an edited model's LPIPS/FID were measured against another folder than the original."""
    _, json_path = metric_paths(spec.path, metric)
    if not json_path.is_file():
        return
    reference = json.loads(json_path.read_text()).get("original")
    if reference and Path(reference).resolve() != Path(original.path).resolve():
        log.warning(
            "model %r: %s was measured against %s, not the table's original %s",
            spec.name,
            LABELS[metric],
            reference,
            original.path,
        )


def _fmt(metric: str, value: float) -> str:
    if math.isnan(value):
        return "–"
    return {"fid": "{:.2f}", "accuracy": "{:.1f}", "lpips": "{:.3f}"}[metric].format(value)


def _cell(metrics: Dict[str, float]) -> str:
    return " / ".join(_fmt(m, metrics[m]) for m in METRICS)


def to_markdown(table: Table) -> str:
    """The Markdown table (cells ``FID / ACC / LPIPS``; erased bold, restored italic)."""
    header = ["Model"] + table.concepts + [f"{role.capitalize()} avg." for role in ROLES]
    lines = [
        "Each cell: " + " / ".join(LABELS[m] for m in METRICS) + " (ACC in %). Erased concepts in **bold**, "
        "restored in _italics_; averages skip empty cells; – = not available.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|",
    ]
    for spec in table.models:
        cells = [spec.name]
        for concept in table.concepts:
            text = _cell(table.values[spec.name][concept])
            role = spec.role(concept)
            cells.append(f"**{text}**" if role == "erased" else f"_{text}_" if role == "restored" else text)
        cells += [_cell(table.averages[spec.name][role]) for role in ROLES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """The table as CSV: model, erased/restored concepts, one column per (concept or average, metric)."""
    columns = ["model", "erased", "restored"]
    columns += [f"{c} {LABELS[m]}" for c in table.concepts for m in METRICS]
    columns += [f"{role} avg {LABELS[m]}" for role in ROLES for m in METRICS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for spec in table.models:
        row = [spec.name, ";".join(spec.erased), ";".join(spec.restored)]
        row += [table.values[spec.name][c][m] for c in table.concepts for m in METRICS]
        row += [table.averages[spec.name][role][m] for role in ROLES for m in METRICS]
        writer.writerow(
            [("" if isinstance(v, float) and math.isnan(v) else f"{v:.6g}" if isinstance(v, float) else v) for v in row]
        )
    return buffer.getvalue()


def plot_table(table: Table, path: str | Path) -> Path:
    """Bar chart PNG: per-concept accuracy by model, and erased/restored/regular averages of each metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_models = len(table.models)
    width = 0.8 / max(n_models, 1)
    fig, axes = plt.subplots(2, 2, figsize=(max(10, 1.1 * len(table.concepts) + 4), 8))
    panels = [(axes[0, 0], "accuracy", table.concepts, "per concept")] + [
        (ax, metric, list(ROLES), "averages")
        for ax, metric in zip([axes[0, 1], axes[1, 0], axes[1, 1]], ("accuracy", "lpips", "fid"))
    ]
    for ax, metric, groups, kind in panels:
        for i, spec in enumerate(table.models):
            if kind == "per concept":
                heights = [table.values[spec.name][c][metric] for c in groups]
            else:
                heights = [table.averages[spec.name][role][metric] for role in groups]
            heights = [0.0 if math.isnan(h) else h for h in heights]
            positions = [g + (i - (n_models - 1) / 2) * width for g in range(len(groups))]
            ax.bar(positions, heights, width, label=spec.name)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(
            groups,
            rotation=30 if kind == "per concept" else 0,
            ha="right" if kind == "per concept" else "center",
        )
        ax.set_title(f"{LABELS[metric]} {kind}" + (" (%)" if metric == "accuracy" else ""))
    axes[0, 0].legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return Path(path)
