"""Statistics of the concept-world benchmark: drops with intervals, verdicts, pooled sweep results, contact sheets.

Every evaluated model folder records each image's true and predicted style (``results/accuracy.json``,
:func:`sepce.evaluation.results.read_predictions`). Images of the same name in the original's folder and a model's
folder come from the same prompt and seed, so an accuracy drop is a mean of PAIRED differences
``100 · (correct_original(i) − correct_model(i))``. This module turns them into:

- per model: each style's accuracy (Wilson interval) and drop (bootstrap over seeds), the "erased"/"spared"
  verdicts read off the intervals (docs/method.md, "Evaluation");
- per method, pooled over a sweep's erasures (styles × training seeds): the mean drop of the erased styles, the
  mean and the largest drop on the other styles, the drop of restored styles, the accuracy with the concept's
  own prompt and under the concept-inversion attack — each with a hierarchical-bootstrap interval
  (:func:`sepce.stats.hierarchical_bootstrap`: erasure units, then training seeds, then evaluation seeds);
- contact sheets: one image per style (same seed) for every model row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from sepce.classes import ConceptClass
from sepce.evaluation.results import read_predictions
from sepce.stats import NAN, Estimate, erased_verdict, hierarchical_bootstrap, paired_difference, spared_verdict, wilson

AIM_DROP = 50.0  # points an erased style must lose
AIM_OTHER = 10.0  # points any other style may lose at most


@dataclass(frozen=True)
class Evaluated:
    """One evaluated model: its images folder and what it erased / restored.

    ``method`` is the key results are pooled under, ``unit`` the erasure it belongs to (the erased style, or a
    SepCE triple), ``seed`` the training seed. ``attack`` is the folder of images generated with the learned word of
    the concept-inversion attack (styles = the erased ones), if the attack was run: a model folder whose
    ``results/attack.json`` records the attack images' predictions."""

    label: str
    method: str
    folder: Path
    erased: tuple = ()
    restored: tuple = ()
    unit: str = ""
    seed: int = 0
    attack: Optional[Path] = None


def outcomes(folder: Path, classes: Sequence[ConceptClass], metric: str = "accuracy") -> Dict[str, Dict[str, float]]:
    """``{style: {image name: 1.0 if classified as its style else 0.0}}`` from a folder's recorded predictions
    (``metric`` ``accuracy``: the model's own images; ``attack``: the concept-inversion attack's images)."""
    predictions = read_predictions(folder, metric)
    if predictions is None:
        raise FileNotFoundError(
            f"{folder} has no recorded predictions (results/{metric}.json); run the metrics/attack stage"
        )
    by_index = {c.index: c.name for c in classes}
    out: Dict[str, Dict[str, float]] = {c.name: {} for c in classes}
    for name, (label, predicted) in predictions.items():
        if label in by_index:
            out[by_index[label]][name] = float(label == predicted)
    return out


def paired_matrix(
    original: Dict[str, Dict[str, float]], model: Dict[str, Dict[str, float]], styles: Sequence[str]
) -> np.ndarray:
    """(seeds, styles) matrix of paired differences in points: row i holds, for each style, ``100 · (original −
    model)`` of that style's i-th image (sorted by name) among the images both folders have."""
    columns = []
    for s in styles:
        names = sorted(set(original[s]) & set(model[s]))
        columns.append(np.array([100.0 * (original[s][n] - model[s][n]) for n in names]))
    rows = min((len(c) for c in columns), default=0)
    if rows == 0:
        raise ValueError(f"no image of styles {list(styles)} is in both folders; were they generated from one CSV?")
    return np.stack([c[:rows] for c in columns], axis=1)


def accuracy(values: Dict[str, float]) -> Estimate:
    """Accuracy (%) of a style's images with its Wilson interval."""
    return wilson(int(sum(values.values())), len(values)).scaled(100.0) if values else NAN


@dataclass
class ModelReport:
    """One model row: per-style accuracy and drop, verdicts, and the attack's accuracy."""

    label: str
    erased: tuple
    restored: tuple
    accuracy: Dict[str, Estimate]
    drop: Dict[str, Estimate]
    erased_verdicts: Dict[str, str]
    worst_other: str
    other_verdict: str
    attack: Dict[str, Estimate] = field(default_factory=dict)

    @property
    def meets_aim(self) -> bool:
        return all(v == "erased" for v in self.erased_verdicts.values()) and self.other_verdict == "spared"


def model_report(
    model: Evaluated,
    original: Dict[str, Dict[str, float]],
    classes: Sequence[ConceptClass],
    held_out: Sequence[str] = (),
    attacked: Optional[Sequence[str]] = None,
) -> ModelReport:
    """Per-style accuracy and paired drop of one model, its verdicts, and (if run) the attack's accuracy on the
    ``attacked`` styles (default: the erased ones; the original model's attack is the ceiling for any style).
    The "spared" verdict covers every style neither erased, restored nor in ``held_out``."""
    names = [c.name for c in classes]
    mine = outcomes(model.folder, classes)
    drop = {}
    for s in names:
        common = sorted(set(original[s]) & set(mine[s]))
        drop[s] = paired_difference([original[s][n] for n in common], [mine[s][n] for n in common]).scaled(100.0)
    others = [s for s in names if s not in model.erased and s not in model.restored and s not in held_out]
    worst = max(others, key=lambda s: (drop[s].high, drop[s].value)) if others else ""
    verdicts = [spared_verdict(drop[s], AIM_OTHER) for s in others]
    other_verdict = (
        "damaged" if "damaged" in verdicts else "spared" if verdicts and set(verdicts) == {"spared"} else "undecided"
    )
    attack = {}
    if model.attack is not None and read_predictions(model.attack, "attack") is not None:
        found = outcomes(Path(model.attack), classes, "attack")
        attack = {s: accuracy(found[s]) for s in (model.erased if attacked is None else attacked) if found[s]}
    return ModelReport(
        model.label,
        tuple(model.erased),
        tuple(model.restored),
        {s: accuracy(mine[s]) for s in names},
        drop,
        {s: erased_verdict(drop[s], AIM_DROP) for s in model.erased},
        worst,
        other_verdict,
        attack,
    )


# ------------------------------------------------------------------------------------------------ sweep pooling
@dataclass
class MethodSummary:
    """A method's results pooled over a sweep's erasures (each number with its hierarchical-bootstrap interval)."""

    method: str
    units: int
    runs: int
    erased_drop: Estimate
    other_mean_drop: Estimate
    other_max_drop: Estimate
    restored_drop: Estimate
    own_prompt_accuracy: Estimate
    attack_accuracy: Estimate
    per_style_collateral: Dict[str, Estimate]

    @property
    def erased_verdict(self) -> str:
        return erased_verdict(self.erased_drop, AIM_DROP)

    @property
    def spared_verdict(self) -> str:
        """Spared when EVERY style's pooled collateral drop is at most :data:`AIM_OTHER` points (upper bounds),
        damaged when any style's lower bound exceeds it."""
        verdicts = [spared_verdict(e, AIM_OTHER) for e in self.per_style_collateral.values() if not math.isnan(e.value)]
        if "damaged" in verdicts:
            return "damaged"
        return "spared" if verdicts and set(verdicts) == {"spared"} else "undecided"


def _tree(models: Sequence[Evaluated], leaf) -> list:
    """Group per-model leaves (arrays, or None to skip) into units → runs."""
    units: Dict[str, list] = {}
    for m in models:
        value = leaf(m)
        if value is not None and len(value):
            units.setdefault(m.unit or m.label, []).append(value)
    return list(units.values())


def summarise_method(
    method: str,
    models: Sequence[Evaluated],
    original: Dict[str, Dict[str, float]],
    classes: Sequence[ConceptClass],
    held_out: Sequence[str] = (),
    draws: int = 2000,
    seed: int = 0,
) -> MethodSummary:
    """Pool a method's evaluated models (see the module docstring). Other styles exclude the model's erased and
    restored styles and the ``held_out`` (preset-tuning) styles."""
    names = [c.name for c in classes]
    outs = {m.folder: outcomes(m.folder, classes) for m in models}
    matrices = {m.folder: paired_matrix(original, outs[m.folder], names) for m in models}

    def cols(m: Evaluated, which: str) -> List[int]:
        if which == "erased":
            return [names.index(s) for s in m.erased]
        if which == "restored":
            return [names.index(s) for s in m.restored]
        skip = set(m.erased) | set(m.restored) | set(held_out)
        return [i for i, s in enumerate(names) if s not in skip]

    def pooled(which: str, statistic) -> Estimate:
        tree = _tree(models, lambda m: matrices[m.folder][:, cols(m, which)] if cols(m, which) else None)
        return hierarchical_bootstrap(tree, statistic, draws=draws, seed=seed)

    def accuracy_leaf(m: Evaluated, folder: Optional[Path], metric: str = "accuracy"):
        if folder is None or not m.erased or read_predictions(folder, metric) is None:
            return None
        out = outs[folder] if metric == "accuracy" else outcomes(Path(folder), classes, metric)
        columns = [np.array([100.0 * v for _, v in sorted(out[s].items())]) for s in m.erased if out[s]]
        if not columns:
            return None
        rows = min(len(c) for c in columns)
        return np.stack([c[:rows] for c in columns], axis=1)

    collateral = {}
    for s in names:
        if s in held_out:
            continue
        tree = _tree(
            [m for m in models if s not in m.erased and s not in m.restored],
            lambda m, s=s: matrices[m.folder][:, [names.index(s)]],
        )
        collateral[s] = hierarchical_bootstrap(tree, np.mean, draws=draws, seed=seed)
    return MethodSummary(
        method=method,
        units=len({m.unit or m.label for m in models}),
        runs=len(models),
        erased_drop=pooled("erased", np.mean),
        other_mean_drop=pooled("other", np.mean),
        other_max_drop=pooled("other", np.max),
        restored_drop=pooled("restored", np.mean),
        own_prompt_accuracy=hierarchical_bootstrap(
            _tree(models, lambda m: accuracy_leaf(m, m.folder)), np.mean, draws=draws, seed=seed
        ),
        attack_accuracy=hierarchical_bootstrap(
            _tree(models, lambda m: accuracy_leaf(m, m.attack, "attack")), np.mean, draws=draws, seed=seed
        ),
        per_style_collateral=collateral,
    )


# ------------------------------------------------------------------------------------------------ contact sheet
def contact_sheet(
    rows: Sequence[tuple], styles: Sequence[str], image_for, cell: int = 64, label_width: int = 150, pad: int = 2
):
    """A PIL image: one row per ``(label, folder)`` in ``rows``, one column per style; ``image_for(folder, style)``
    returns the path of that style's image to show (the same seed in every row), or None (left blank)."""
    from PIL import Image, ImageDraw

    header = 14
    width = label_width + len(styles) * (cell + pad) + pad
    height = header + len(rows) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for j, style in enumerate(styles):
        draw.text((label_width + pad + j * (cell + pad), 1), style[: cell // 6], fill="black")
    for i, (label, folder) in enumerate(rows):
        top = header + pad + i * (cell + pad)
        draw.text((2, top + cell // 2 - 6), str(label)[: label_width // 6], fill="black")
        for j, style in enumerate(styles):
            path = image_for(folder, style)
            if path is None:
                continue
            with Image.open(path) as im:
                sheet.paste(im.convert("RGB").resize((cell, cell)), (label_width + pad + j * (cell + pad), top))
    return sheet
