"""The paper's results table: FID / ACC / LPIPS per concept for the original model and erased models.

Each model is a model folder with a ``results/`` subfolder (:mod:`sepce.evaluation.results`): ``accuracy.csv``
from ``artist-cls-test.py`` and, for erased models, ``lpips.csv`` / ``fid.csv`` from ``lpips_eval.py``
(measured against the original model's images). For every model the caller says which concepts it erased and
which it restored (SepCE can erase several concepts and restore some later); every other concept is *regular*.

The table has one row per model and one cell ``FID / ACC / LPIPS`` per concept (ACC in % with its 95 % Wilson
interval from the stored counts, docs/method.md "Evaluation"), then the averages over the model's erased, restored
and regular concepts (NaN cells skipped; the ACC average's interval pools the counts). Erased cells are bold,
restored cells italic in the Markdown. The CSV has the same content with one numeric column per (concept, metric)
plus the interval bounds. The chart (:func:`plot_table`) shows per-concept accuracy and the three role averages per
metric, accuracy with its intervals as error bars, the legend above the panels. :func:`accuracy_drops` gives each
concept's drop against the original with a bootstrap-over-seeds interval, from the recorded per-image predictions.
When any model folder holds ``results/attack.csv`` (``eval-scripts/attack-inversion.py``), every cell gains a fourth
value, ATK: the accuracy (%) on the images of the concept-inversion attack's learned word (docs/method.md).

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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sepce.classes import ConceptClass, classes_by_names
from sepce.io import atomic_write
from sepce.stats import NAN, Estimate, paired_difference, wilson

from .results import metric_paths, read_counts, read_metric, read_predictions

log = logging.getLogger(__name__)

METRICS = ("fid", "accuracy", "lpips")
#: Metrics shown (after METRICS) only when some model has them: the concept-inversion attack's accuracy.
OPTIONAL_METRICS = ("attack",)
LABELS = {"fid": "FID", "accuracy": "ACC", "lpips": "LPIPS", "attack": "ATK"}
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
    #: ``accuracy_intervals[model][concept or role]``: the ACC value with its Wilson interval (%), NaN if unknown
    accuracy_intervals: Dict[str, Dict[str, Estimate]] = field(default_factory=dict)
    #: the metrics shown: METRICS, plus each of OPTIONAL_METRICS that some model has
    metrics: List[str] = field(default_factory=lambda: list(METRICS))


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


def spec_of(models: Sequence[ModelSpec], spec_path: str | Path) -> dict:
    """The spec JSON (the module docstring's format, what :func:`load_spec` reads) of ``models`` — the original
    one first — for a spec file at ``spec_path``: model paths relative to the spec's folder."""
    base = Path(spec_path).parent.resolve()

    def entry(m: ModelSpec) -> dict:
        out = {"name": m.name, "path": os.path.relpath(Path(m.path).resolve(), base)}
        return out if m.original else {**out, "erased": list(m.erased), "restored": list(m.restored)}

    original = [m for m in models if m.original]
    spec: dict = {"original": entry(original[0])} if original else {}
    return {**spec, "models": [entry(m) for m in models if not m.original]}


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
    intervals: Dict[str, Dict[str, Estimate]] = {}
    found = {(s.name, m): read_metric(s.path, m) for s in models for m in (*METRICS, *OPTIONAL_METRICS)}
    shown = list(METRICS) + [m for m in OPTIONAL_METRICS if any(found[s.name, m] for s in models)]
    for spec in models:
        per_metric = {}
        for metric in shown:
            stored = found[spec.name, metric]
            if stored is None:
                if not (spec.original and metric not in ("accuracy", *OPTIONAL_METRICS)):
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
            concept: {metric: per_metric[metric].get(concept, math.nan) for metric in shown} for concept in names
        }
        averages[spec.name] = {
            role: {
                metric: _mean([values[spec.name][c][metric] for c in names if spec.role(c) == role]) for metric in shown
            }
            for role in ROLES
        }
        intervals[spec.name] = accuracy_intervals(spec, names)
    return Table(list(models), names, values, averages, intervals, shown)


def accuracy_intervals(spec: ModelSpec, concepts: Sequence[str]) -> Dict[str, Estimate]:
    """Wilson intervals (%) of each concept's accuracy and of each role's pooled accuracy, from the stored
    ``correct``/``images`` counts (NaN where they are missing)."""
    counts = read_counts(spec.path) or {}

    def pooled(names: Sequence[str]) -> Estimate:
        known = [counts[c] for c in names if c in counts]
        if not known:
            return NAN
        return wilson(sum(k for k, _ in known), sum(n for _, n in known)).scaled(100.0)

    out = {c: pooled([c]) for c in concepts}
    out.update({role: pooled([c for c in concepts if spec.role(c) == role]) for role in ROLES})
    return out


def accuracy_drops(
    original: str | Path, edited: str | Path, classes: Sequence[ConceptClass], seed: int = 0
) -> Dict[str, Estimate]:
    """Per concept: original accuracy minus edited accuracy (points) on the images both folders hold under the
    same name (same case, same seed), with a bootstrap-over-images interval (:func:`sepce.stats.paired_difference`).
    Empty when either folder lacks recorded predictions."""
    left, right = read_predictions(original), read_predictions(edited)
    if not left or not right:
        return {}
    out = {}
    for c in classes:
        names = sorted(n for n in set(left) & set(right) if left[n][0] == c.index and right[n][0] == c.index)
        before = [float(left[n][1] == c.index) for n in names]
        after = [float(right[n][1] == c.index) for n in names]
        out[c.name] = paired_difference(before, after, seed=seed).scaled(100.0) if names else NAN
    return out


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
    return {"fid": "{:.2f}", "accuracy": "{:.1f}", "lpips": "{:.3f}", "attack": "{:.1f}"}[metric].format(value)


def _cell(metrics: Dict[str, float], accuracy: Estimate = NAN, shown: Sequence[str] = METRICS) -> str:
    parts = []
    for m in shown:
        text = _fmt(m, metrics[m])
        if m == "accuracy" and not math.isnan(metrics[m]) and not math.isnan(accuracy.low):
            text += f" [{accuracy.low:.0f}, {accuracy.high:.0f}]"
        parts.append(text)
    return " / ".join(parts)


def to_markdown(table: Table) -> str:
    """The Markdown table (cells ``FID / ACC / LPIPS``; erased bold, restored italic)."""
    header = ["Model"] + table.concepts + [f"{role.capitalize()} avg." for role in ROLES]
    lines = [
        "Each cell: "
        + " / ".join(LABELS[m] for m in table.metrics)
        + " (ACC in % with its 95 % Wilson interval"
        + ("; ATK: accuracy in % on the concept-inversion attack's images" if "attack" in table.metrics else "")
        + "). Erased concepts in **bold**, restored in _italics_; averages skip empty cells; – = not available.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|",
    ]
    for spec in table.models:
        cells = [spec.name]
        ci = table.accuracy_intervals.get(spec.name, {})
        for concept in table.concepts:
            text = _cell(table.values[spec.name][concept], ci.get(concept, NAN), table.metrics)
            role = spec.role(concept)
            cells.append(f"**{text}**" if role == "erased" else f"_{text}_" if role == "restored" else text)
        cells += [_cell(table.averages[spec.name][role], ci.get(role, NAN), table.metrics) for role in ROLES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """The table as CSV: model, erased/restored concepts, one column per (concept or average, metric)."""
    columns = ["model", "erased", "restored"]
    columns += [f"{c} {LABELS[m]}" for c in table.concepts for m in table.metrics]
    columns += [f"{role} avg {LABELS[m]}" for role in ROLES for m in table.metrics]
    groups = list(table.concepts) + list(ROLES)
    columns += [f"{g}{' avg' if g in ROLES else ''} ACC {bound}" for g in groups for bound in ("low", "high")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for spec in table.models:
        row = [spec.name, ";".join(spec.erased), ";".join(spec.restored)]
        row += [table.values[spec.name][c][m] for c in table.concepts for m in table.metrics]
        row += [table.averages[spec.name][role][m] for role in ROLES for m in table.metrics]
        ci = table.accuracy_intervals.get(spec.name, {})
        row += [getattr(ci.get(g, NAN), bound) for g in groups for bound in ("low", "high")]
        writer.writerow(
            [("" if isinstance(v, float) and math.isnan(v) else f"{v:.6g}" if isinstance(v, float) else v) for v in row]
        )
    return buffer.getvalue()


def plot_table(table: Table, path: str | Path) -> Path:
    """Bar chart PNG: per-concept accuracy by model (95 % intervals as error bars), and erased/restored/regular
    averages of each metric; one legend above the panels, so it hides no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_models = len(table.models)
    width = 0.8 / max(n_models, 1)
    fig, axes = plt.subplots(2, 2, figsize=(max(10, 1.1 * len(table.concepts) + 4), 8.5))
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
            errors = None
            if metric == "accuracy":
                ci = [table.accuracy_intervals.get(spec.name, {}).get(g, NAN) for g in groups]
                errors = [
                    [0.0 if math.isnan(e.low) else max(0.0, h - e.low) for h, e in zip(heights, ci)],
                    [0.0 if math.isnan(e.high) else max(0.0, e.high - h) for h, e in zip(heights, ci)],
                ]
            ax.bar(positions, heights, width, yerr=errors, capsize=2, error_kw={"elinewidth": 0.8}, label=spec.name)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(
            groups,
            rotation=30 if kind == "per concept" else 0,
            ha="right" if kind == "per concept" else "center",
        )
        ax.set_title(f"{LABELS[metric]} {kind}" + (" (%)" if metric == "accuracy" else ""))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    rows = math.ceil(n_models / 6)
    fig.legend(handles, labels, loc="upper center", ncol=min(n_models, 6), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.035 * rows))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return Path(path)
