"""Statistics of the concept-world benchmark, protocol v2 (docs/world-benchmark.md, "Protocol v2"): pooled drops
with exact intervals, the one verdict rule of every form, UA/IRA/CRA, quality, paired method differences.

Every evaluated model folder records each image's true and predicted style (``results/accuracy.json``,
:func:`sepce.evaluation.results.read_predictions`). Images of the same name in the original's folder and a model's
folder come from the same prompt and seed, so an accuracy drop is a mean of PAIRED differences
``100 · (correct_original(i) − correct_model(i))``. This module turns them into:

- per row (one model in a single-erasure form; a method, or a SepCE restore depth, pooled over its erasure runs
  in the sweep — the same code): per erased style the drop pooled over the runs that erased it, per other style
  (held-out and restored styles included) the drop pooled over the runs that did not, each interval the hull of
  the exact drop interval of the pooled images and the between-run interval (:func:`pooled_drop`), and the
  verdicts read off them; UA, IRA, in-context UA/IRA and CRA as Clopper–Pearson counts; quality; the attack;
- per pair of methods: differences in erased drop and collateral paired by erased style (paired t, Holm);
- contact sheets: one image per style (same seed) for every model row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from sepce.classes import ConceptClass
from sepce.evaluation.results import read_predictions
from sepce.stats import (
    NAN,
    Estimate,
    PairedTest,
    clopper_pearson,
    erased_verdict,
    exact_drop,
    holm,
    hull,
    paired_difference,
    paired_t,
    spared_verdict,
    t_interval,
    wilson,
)
from sepce.world.measures import mean_interval, read_record

AIM_DROP = 50.0  # points an erased style must lose
AIM_OTHER = 10.0  # points any other style may lose at most
AIM_CEILING = 50.0  # % the attack must reach on the original for a style to enter the attack column


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
    cra: Optional[Path] = None  # the folder of its CRA images (``a <object> in the style of <style>``)


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


def accuracy(values: Dict[str, float]) -> Count:
    """Accuracy (%) of a style's images with its Clopper–Pearson interval (protocol v2)."""
    return Count.of(int(sum(values.values())), len(values))


def ceiling_reaches(values: Dict[str, float], aim: float = AIM_CEILING) -> bool:
    """Whether the attack's success on the ORIGINAL (its ceiling) has its Wilson lower bound at or above ``aim``
    (%): only then does a style enter the attack column (protocol v2, "Measures")."""
    return bool(values) and 100.0 * wilson(int(sum(values.values())), len(values)).low >= aim


@dataclass(frozen=True)
class StyleVerdict:
    """One style's pooled drop in one row (points), the verdict read off it and the data behind it."""

    style: str
    drop: Estimate
    verdict: str
    images: int  # paired images pooled
    runs: int  # erasure runs pooled
    original_right: int = 0  # of the pooled images, right for the original ...
    model_right: int = 0  # ... and right for the erased models


@dataclass(frozen=True)
class Count:
    """A share of images (%) with its Clopper–Pearson interval and the number of images behind it."""

    estimate: Estimate
    images: int

    @staticmethod
    def of(hits: int, images: int) -> Count:
        return Count(clopper_pearson(hits, images).scaled(100.0) if images else NAN, images)


@dataclass(frozen=True)
class AttackResult:
    """The concept-inversion attack on one erased style: learned-word accuracy (%) pooled over the attacked runs."""

    style: str
    accuracy: Count


@dataclass(frozen=True)
class Quality:
    """Image quality (protocol v2): FID of the world classifier's pooled features and mean feature distance, both
    against ground-truth renders, and the feature distance ("LPIPS") to the original's same-seed image."""

    fid_renders: Estimate = NAN
    distance_renders: Estimate = NAN
    lpips_original: Estimate = NAN
    images: int = 0


@dataclass
class RowResult:
    """One row of the v2 table: a method (or a SepCE restore depth, or one model of a single-erasure form) pooled
    over its erasure runs, judged by the one rule of protocol v2 (docs/world-benchmark.md)."""

    label: str
    method: str
    runs: int
    erased: List[StyleVerdict]
    collateral: List[StyleVerdict]
    restored: tuple
    ua: Count
    ira: Count
    ua_context: Count
    ira_context: Count
    cra: Count
    quality: Quality
    attack: List[AttackResult] = field(default_factory=list)
    own_accuracy: Dict[str, Count] = field(default_factory=dict)  # erased styles' accuracy with their own prompt
    seeds: tuple = ()

    @property
    def erased_drop(self) -> Estimate:
        """Mean drop over the erased styles (:func:`over_styles`)."""
        return over_styles(self.erased)

    @property
    def collateral_drop(self) -> Estimate:
        """Mean collateral drop over the other styles (:func:`over_styles`)."""
        return over_styles(self.collateral)

    @property
    def erases(self) -> str:
        """``yes`` when every erased style is ``erased``, ``no`` when one is ``not erased``, else ``undecided``."""
        return _all([v.verdict for v in self.erased], "erased", "not erased")

    @property
    def spares(self) -> str:
        """``yes`` when every other style is ``spared``, ``no`` when one is ``damaged``, else ``undecided``."""
        return _all([v.verdict for v in self.collateral], "spared", "damaged")

    @property
    def aim(self) -> str:
        """The aim: every erased style erased and every other style spared."""
        both = (self.erases, self.spares)
        return "yes" if both == ("yes", "yes") else "no" if "no" in both else "undecided"

    def drop_of(self, style: str) -> Optional[StyleVerdict]:
        return next((v for v in [*self.erased, *self.collateral] if v.style == style), None)


def _all(verdicts: Sequence[str], good: str, bad: str) -> str:
    if not verdicts:
        return "undecided"
    if all(v == good for v in verdicts):
        return "yes"
    return "no" if bad in verdicts else "undecided"


def within_drop_range(e: Estimate) -> Estimate:
    """A drop's interval cut to what a drop in points can be, [−100, 100] (a t interval can run past it)."""
    return Estimate(e.value, max(-100.0, e.low), min(100.0, e.high))


def over_styles(verdicts: Sequence[StyleVerdict]) -> Estimate:
    """A mean drop over styles: the t interval over the per-style values (styles − 1 df), within [−100, 100],
    hulled with the exact drop interval of every style's pooled images together, so a summary is never narrower
    than exact (all styles at 0 would otherwise give [0, 0]); one style keeps its interval."""
    defined = [v for v in verdicts if not math.isnan(v.drop.value)]
    if len(defined) == 1:
        return defined[0].drop
    between = within_drop_range(t_interval([v.drop.value for v in defined]))
    n = sum(v.images for v in defined)
    if not n:
        return between
    return hull(between, exact_drop(sum(v.original_right for v in defined), sum(v.model_right for v in defined), n))


@dataclass(frozen=True)
class PooledDrop:
    """One style's drop pooled over runs (points) and the paired images behind it: ``images`` pairs, of which
    ``original_right`` are right for the original and ``model_right`` for the erased models."""

    drop: Estimate
    images: int
    original_right: int
    model_right: int


@dataclass(frozen=True)
class Run:
    """One evaluated model's recorded outcomes: style images (``{style: {name: 0/1}}``), the in-context CRA
    images (style and object hits per name), the attack's images, and the quality record."""

    model: Evaluated
    styles: Dict[str, Dict[str, float]]
    context: Dict[str, Dict[str, tuple]]  # style -> name -> (style hit, object hit)
    attack: Dict[str, Dict[str, float]]
    quality: dict


def load_run(model: Evaluated, classes: Sequence[ConceptClass]) -> Run:
    """Read a model folder's recorded predictions (``accuracy``, ``cra``, ``attack``, ``quality``)."""
    by_index = {c.index: c.name for c in classes}
    context: Dict[str, Dict[str, tuple]] = {c.name: {} for c in classes}
    cra = read_record(model.cra, "cra") if model.cra is not None else None
    if cra is not None:
        for name, (style, pred_style, obj, pred_obj) in cra["predictions"].items():
            if style in by_index:
                context[by_index[style]][name] = (float(style == pred_style), float(obj == pred_obj))
    attack = {}
    if model.attack is not None and read_predictions(model.attack, "attack") is not None:
        attack = outcomes(Path(model.attack), classes, "attack")
    return Run(model, outcomes(model.folder, classes), context, attack, read_record(model.folder, "quality") or {})


def pooled_drop(original: Dict[str, Dict[str, float]], runs: Sequence[Run], style: str, seed: int = 0) -> PooledDrop:
    """The drop of ``style`` pooled over ``runs`` (points) and the number of paired images: the hull of the exact
    drop interval of the pooled images and the between-run interval (t over runs for r >= 2; one run: the
    bootstrap over evaluation seeds paired with the original) — docs/world-benchmark.md, "Intervals" — cut to
    what the drop can be on these images, [100 (a − n) / n, 100 a / n] with a of the n images right for the
    original (a t interval over a few runs can reach past it; the exact interval never does)."""
    pairs = []
    for run in runs:
        names = sorted(set(original[style]) & set(run.styles[style]))
        if names:
            pairs.append(([original[style][m] for m in names], [run.styles[style][m] for m in names]))
    if not pairs:
        return PooledDrop(NAN, 0, 0, 0)
    a = int(sum(sum(before) for before, _ in pairs))
    k = int(sum(sum(after) for _, after in pairs))
    n = sum(len(before) for before, _ in pairs)
    if len(pairs) > 1:
        between = t_interval([100.0 * (sum(before) - sum(after)) / len(before) for before, after in pairs])
    else:
        between = paired_difference(*pairs[0], seed=seed).scaled(100.0)
    drop = hull(exact_drop(a, k, n), between)
    cut = Estimate(drop.value, max(drop.low, 100.0 * (a - n) / n), min(drop.high, 100.0 * a / n))
    return PooledDrop(cut, n, a, k)


def _count(runs: Sequence[Run], styles_of, hit) -> Count:
    hits = images = 0
    for run in runs:
        for style in styles_of(run):
            values = [hit(v) for v in run.context[style].values()] if hit else list(run.styles[style].values())
            hits, images = hits + int(sum(values)), images + len(values)
    return Count.of(hits, images)


def pooled_quality(runs: Sequence[Run]) -> Quality:
    """Quality pooled over runs: per-image distances pooled (bootstrap over the pooled images), hulled with the
    t interval over the runs' means when r >= 2; FID: the mean of the runs' FIDs, hulled (r >= 2) with the t
    interval over runs and the mean of their bootstrap bounds."""
    records = [r.quality for r in runs if r.quality]
    if not records:
        return Quality()

    def distances(key: str) -> Estimate:
        pools = [list(q.get(key, {}).values()) for q in records]
        every = [v for pool in pools for v in pool]
        if not every:
            return NAN
        within = mean_interval(every)
        return hull(within, t_interval([float(np.mean(p)) for p in pools if p])) if len(pools) > 1 else within

    fids = [Estimate(**q["fid_to_renders"]) for q in records]
    fid = fids[0]
    if len(fids) > 1:
        mean_bounds = Estimate(
            float(np.mean([f.value for f in fids])),
            float(np.mean([f.low for f in fids])),
            float(np.mean([f.high for f in fids])),
        )
        fid = hull(mean_bounds, t_interval([f.value for f in fids]))
    images = sum(int(q.get("images", 0)) for q in records)
    return Quality(fid, distances("distance_to_renders"), distances("distance_to_original"), images)


def row_result(
    label: str,
    models: Sequence[Evaluated],
    original: Dict[str, Dict[str, float]],
    classes: Sequence[ConceptClass],
    seed: int = 0,
) -> RowResult:
    """Pool one row's evaluated models by protocol v2's one rule: ``erased`` per erased style over the runs that
    erased it; collateral per other style (held-out and restored styles included) over the runs that did not
    erase it; UA/IRA/CRA as Clopper–Pearson counts; quality; the attack on the erased styles."""
    names = [c.name for c in classes]
    runs = [load_run(m, classes) for m in models]
    erased_styles = list(dict.fromkeys(s for m in models for s in m.erased))

    def judged(style: str, erasing: bool) -> Optional[StyleVerdict]:
        group = [r for r in runs if (style in r.model.erased) == erasing]
        if not group:
            return None
        pooled = pooled_drop(original, group, style, seed)
        drop = pooled.drop
        verdict = erased_verdict(drop, AIM_DROP) if erasing else spared_verdict(drop, AIM_OTHER)
        return StyleVerdict(style, drop, verdict, pooled.images, len(group), pooled.original_right, pooled.model_right)

    judged_erased = [judged(s, True) for s in erased_styles]
    collateral = [v for v in (judged(s, False) for s in names) if v is not None]
    attack = []
    for s in erased_styles:
        hits = [v for r in runs if s in r.model.erased for v in r.attack.get(s, {}).values()]
        if hits:
            attack.append(AttackResult(s, Count.of(int(sum(hits)), len(hits))))
    not_erased = lambda r: [s for s in names if s not in r.model.erased]  # noqa: E731
    return RowResult(
        label=label,
        method=models[0].method if models else "",
        runs=len(models),
        erased=judged_erased,
        collateral=collateral,
        restored=tuple(dict.fromkeys(s for m in models for s in m.restored)),
        ua=_miss(_count(runs, lambda r: r.model.erased, None)),
        ira=_count(runs, not_erased, None),
        ua_context=_miss(_count(runs, lambda r: r.model.erased, lambda v: v[0])),
        ira_context=_count(runs, not_erased, lambda v: v[0]),
        cra=_count(runs, lambda r: names, lambda v: v[1]),
        quality=pooled_quality(runs),
        attack=attack,
        own_accuracy={
            s: _count([r for r in runs if s in r.model.erased], lambda r, s=s: [s], None) for s in erased_styles
        },
        seeds=tuple(sorted({m.seed for m in models})),
    )


def _miss(count: Count) -> Count:
    """UA = share NOT classified as the erased style: 100 − accuracy, interval mirrored."""
    e = count.estimate
    return Count(Estimate(100 - e.value, 100 - e.high, 100 - e.low) if not math.isnan(e.value) else NAN, count.images)


# ------------------------------------------------------------------------------------------------ method pairs
@dataclass(frozen=True)
class PairDifference:
    """A − B for one measure, paired by erased style (per-style value: the mean over that style's runs), with the
    paired t interval, the p-value and the Holm-adjusted p-value over every pair of the measure."""

    measure: str  # "erased drop" or "collateral"
    a: str
    b: str
    test: PairedTest

    @property
    def verdict(self) -> str:
        if self.test.pairs < 2:
            return f"too few styles ({self.test.pairs})"
        if not self.test.significant():
            return "not distinguishable"
        return f"{self.a} higher" if self.test.difference.value > 0 else f"{self.b} higher"


def per_style_values(
    models: Sequence[Evaluated], original: Dict[str, Dict[str, float]], classes: Sequence[ConceptClass]
) -> Dict[str, Dict[str, float]]:
    """``{"erased drop": {style: v}, "collateral": {style: v}}``: per erased style, the mean over the runs that
    erased it of the run's drop on it, and of the run's collateral (mean drop over the styles it did not erase,
    held-out included; a SepCE run counts for each style of its triple)."""
    names = [c.name for c in classes]
    drops: Dict[str, List[float]] = {}
    collateral: Dict[str, List[float]] = {}
    for model in models:
        run = load_run(model, classes)
        drop = {s: pooled_drop(original, [run], s).drop.value for s in names}
        others = [drop[s] for s in names if s not in model.erased and not math.isnan(drop[s])]
        for s in model.erased:
            drops.setdefault(s, []).append(drop[s])
            collateral.setdefault(s, []).append(float(np.mean(others)) if others else math.nan)
    mean = lambda d: {s: float(np.mean(v)) for s, v in d.items()}  # noqa: E731
    return {"erased drop": mean(drops), "collateral": mean(collateral)}


def pair_differences(values: Dict[str, Dict[str, Dict[str, float]]], styles: Sequence[str]) -> List[PairDifference]:
    """Every pair of methods (``values[method][measure][style]``), paired over ``styles`` both have; Holm over the
    pairs of each measure."""
    out: List[PairDifference] = []
    methods = list(values)
    for measure in ("erased drop", "collateral"):
        tests = []
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                common = [s for s in styles if s in values[a][measure] and s in values[b][measure]]
                test = paired_t([values[a][measure][s] for s in common], [values[b][measure][s] for s in common])
                tests.append((a, b, test))
        adjusted = holm([t.p_value for _, _, t in tests])
        out += [PairDifference(measure, a, b, replace(t, adjusted_p=p)) for (a, b, t), p in zip(tests, adjusted)]
    return out


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
