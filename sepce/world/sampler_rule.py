"""The pre-registered rule that chooses the concept world's sampler (docs/world-benchmark.md, "Sampler").

Candidates, fewest network evaluations first (:data:`CANDIDATES`): DPM-Solver++(2M) with 10, 12, 15, 20, 25 steps,
then DDIM 25; the reference is DDIM 50 (:data:`REFERENCE`). All with guidance 7.5, fp32 and the same start noise
per seed. Data: the shipped ORIGINAL world model only, the held-out styles only (``grid``, ``stripes``), the 50
seeds of each in ``data/world/evaluate.csv``, prompt ``in the style of <style>``, one image per seed. A candidate
passes when

(a) on each held-out style its style accuracy (world classifier) lies inside the 95 % Wilson interval of DDIM 50's
    accuracy on that style, and
(b) the mean world feature distance (the benchmark's LPIPS column) between its image and DDIM 50's image of the
    same seed is at most one quarter of the mean distance between DDIM-50 images of the same style from different
    seeds, and its per-image style prediction agrees with DDIM 50's on at least 90 % of the images.

The passing candidate with the fewest network evaluations is chosen; if none passes, DDIM 50 stays.
Images are drawn by :func:`sepce.generation.generate_rows` (what ``generate-images.py`` runs), one folder per
setting under the work folder, so the evaluation sees exactly the PNGs the benchmark would, and a re-run resumes.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from sepce.classes import load_class_map
from sepce.cli import Runtime
from sepce.generation import GenerationSetup, SamplingSettings, generate_rows
from sepce.modeling import resolve_model
from sepce.prompt_csv import PromptRow, read_prompt_csv
from sepce.stats import Estimate, wilson
from sepce.world.benchmark import CLASS_MAP, EVAL_CSV, HELD_OUT, IMAGE_SIZE, classify_paths
from sepce.world.concept_classifier import SHIPPED_CLASSIFIER, WorldClassifier, feature_distance, load_classifier
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG

log = logging.getLogger(__name__)

#: (sampler, steps), fewest network evaluations first; the rule picks the first that passes.
CANDIDATES: Tuple[Tuple[str, int], ...] = (
    ("dpmpp_2m", 10),
    ("dpmpp_2m", 12),
    ("dpmpp_2m", 15),
    ("dpmpp_2m", 20),
    ("dpmpp_2m", 25),
    ("ddim", 25),
)
REFERENCE: Tuple[str, int] = ("ddim", 50)
GUIDANCE = 7.5
CLOSENESS_FRACTION = 0.25  # (b): mean same-seed distance <= this x the mean different-seed distance
MIN_AGREEMENT = 0.90  # (b): per-image style predictions equal to DDIM 50's on at least this share


@dataclass(frozen=True)
class RuleSettings:
    """Where the rule draws and reads its images, and how (the defaults are the registered rule)."""

    work_dir: Path
    seeds_per_style: int = 50
    styles: Tuple[str, ...] = HELD_OUT
    batch_size: int = 32
    ckpt_path: Path = SHIPPED_CKPT
    config_path: Path = SHIPPED_CONFIG
    classifier: Path = SHIPPED_CLASSIFIER
    classes: Path = CLASS_MAP
    prompts: Path = EVAL_CSV
    candidates: Tuple[Tuple[str, int], ...] = CANDIDATES
    reference: Tuple[str, int] = REFERENCE

    def __post_init__(self) -> None:
        if self.seeds_per_style < 2:
            raise ValueError(f"--seeds_per_style {self.seeds_per_style}: expected at least 2 (pairs of seeds)")
        for sampler, steps in (self.reference, *self.candidates):
            SamplingSettings(sampler, steps, GUIDANCE, IMAGE_SIZE)  # refuses a bad setting with one line


@dataclass
class StyleCheck:
    """One held-out style: the candidate's accuracy against DDIM 50's Wilson interval (part a)."""

    style: str
    images: int
    correct: int
    accuracy: float
    reference: Estimate  # DDIM 50's accuracy and 95 % Wilson interval (fractions)
    inside: bool


@dataclass
class CandidateResult:
    """A setting's numbers under the rule (the reference's own row has ``distance`` 0 and agreement 1)."""

    sampler: str
    steps: int
    evaluations: int  # UNet evaluations per image (2 per step with guidance)
    styles: List[StyleCheck]
    distance: float  # mean feature distance to DDIM 50's image of the same seed
    agreement: float  # share of images whose predicted style equals DDIM 50's
    passes_accuracy: bool
    passes_closeness: bool

    @property
    def passes(self) -> bool:
        return self.passes_accuracy and self.passes_closeness

    @property
    def label(self) -> str:
        return setting_label(self.sampler, self.steps)


@dataclass
class RuleResult:
    """Every candidate's result, the reference spread and the choice."""

    images_per_style: int
    spread: float  # mean feature distance between DDIM-50 images of one style from different seeds
    threshold: float  # CLOSENESS_FRACTION * spread
    reference: CandidateResult
    candidates: List[CandidateResult] = field(default_factory=list)

    @property
    def chosen(self) -> Tuple[str, int]:
        """(sampler, steps): the first passing candidate (fewest evaluations), else the reference (DDIM 50)."""
        for c in self.candidates:
            if c.passes:
                return c.sampler, c.steps
        return self.reference.sampler, self.reference.steps


def setting_label(sampler: str, steps: int) -> str:
    return {"dpmpp_2m": "DPM-Solver++(2M)", "ddim": "DDIM"}.get(sampler, sampler) + f" {steps}"


def held_out_rows(settings: RuleSettings) -> List[PromptRow]:
    """The first ``seeds_per_style`` rows of each held-out style in the evaluation CSV (one line on a bad name)."""
    classes = load_class_map(settings.classes)
    names = {c.index: c.name for c in classes}
    unknown = [s for s in settings.styles if s not in names.values()]
    if unknown:
        raise ValueError(f"--styles {unknown}: not styles of {settings.classes} ({sorted(names.values())})")
    taken: Dict[str, int] = {}
    rows = []
    for row in read_prompt_csv(settings.prompts, classes, require_class=True):
        style = names[row.class_index]
        if style in settings.styles and taken.get(style, 0) < settings.seeds_per_style:
            taken[style] = taken.get(style, 0) + 1
            rows.append(row)
    short = [s for s in settings.styles if taken.get(s, 0) < settings.seeds_per_style]
    if short:
        raise ValueError(f"{settings.prompts} has fewer than {settings.seeds_per_style} seeds of {short}")
    return rows


def draw(settings: RuleSettings, rows: Sequence[PromptRow], sampler: str, steps: int, progress: bool) -> Path:
    """The original model's images of ``rows`` with one setting, into ``<work>/<sampler>-<steps>/`` (resumes)."""
    folder = Path(settings.work_dir) / f"{sampler}-{steps}"
    resolved = resolve_model("original", settings.ckpt_path, settings.config_path)
    setup = GenerationSetup(
        SamplingSettings(sampler, steps, GUIDANCE, IMAGE_SIZE),
        Runtime.from_flags("cpu", "fp32"),
        batch_size=settings.batch_size,
        progress=progress,
    )
    setup.check_folder(folder, resolved, overwrite=False)
    generate_rows(rows, resolved, folder, setup, num_samples=1)
    return folder


def _paths(folder: Path, rows: Sequence[PromptRow]) -> List[Path]:
    return [folder / f"{row.case_number}_0.png" for row in rows]


def _images(paths: Sequence[Path]) -> torch.Tensor:
    from sepce.evaluation.loading import load_images

    return load_images(paths, IMAGE_SIZE)


def different_seed_spread(classifier: WorldClassifier, images: torch.Tensor, labels: Sequence[int]) -> float:
    """Mean feature distance over every pair of images (i < j) of the same style (different seeds)."""
    total, count = 0.0, 0
    labels = np.asarray(labels)
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        pairs = np.array(list(itertools.combinations(index, 2)))
        for chunk in np.array_split(pairs, max(1, len(pairs) // 512)):
            d = feature_distance(classifier, images[chunk[:, 0]], images[chunk[:, 1]])
            total, count = total + float(d.sum()), count + len(chunk)
    return total / count


def evaluate(
    sampler: str,
    steps: int,
    predicted: np.ndarray,
    reference_predicted: np.ndarray,
    labels: np.ndarray,
    distance: float,
    threshold: float,
    style_names: Dict[int, str],
) -> CandidateResult:
    """Parts (a) and (b) of the rule for one setting's predictions and mean same-seed distance."""
    checks = []
    for label in sorted(set(labels.tolist())):
        mine = labels == label
        reference = wilson(int((reference_predicted[mine] == label).sum()), int(mine.sum()))
        correct = int((predicted[mine] == label).sum())
        accuracy = correct / int(mine.sum())
        inside = reference.low <= accuracy <= reference.high
        checks.append(StyleCheck(style_names[label], int(mine.sum()), correct, accuracy, reference, inside))
    agreement = float((predicted == reference_predicted).mean())
    closeness = distance <= threshold and agreement >= MIN_AGREEMENT
    return CandidateResult(
        sampler, steps, 2 * steps, checks, distance, agreement, all(c.inside for c in checks), closeness
    )


def run_rule(settings: RuleSettings, progress: bool = True) -> RuleResult:
    """Draw DDIM 50 and every candidate on the held-out seeds (resuming), then apply the rule."""
    rows = held_out_rows(settings)
    classifier, _ = load_classifier(settings.classifier)
    classifier.eval()
    names = {c.index: c.name for c in load_class_map(settings.classes)}
    labels = np.array([row.class_index for row in rows])
    ref_folder = draw(settings, rows, *settings.reference, progress)
    ref_paths = _paths(ref_folder, rows)
    ref_images = _images(ref_paths)
    ref_predicted = np.array(classify_paths(classifier, ref_paths))
    spread = different_seed_spread(classifier, ref_images, labels)
    threshold = CLOSENESS_FRACTION * spread
    reference = evaluate(*settings.reference, ref_predicted, ref_predicted, labels, 0.0, threshold, names)
    result = RuleResult(len(rows) // len(settings.styles), spread, threshold, reference)
    for sampler, steps in settings.candidates:
        paths = _paths(draw(settings, rows, sampler, steps, progress), rows)
        predicted = np.array(classify_paths(classifier, paths))
        distance = float(feature_distance(classifier, _images(paths), ref_images).mean())
        result.candidates.append(evaluate(sampler, steps, predicted, ref_predicted, labels, distance, threshold, names))
        log.info("%s: %s", setting_label(sampler, steps), "passes" if result.candidates[-1].passes else "fails")
    return result


def rule_markdown(result: RuleResult) -> str:
    """The rule's table: one row per setting, the reference first, then the choice."""
    styles = [s.style for s in result.reference.styles]
    head = ["setting", "UNet evals / image", *[f"{s} accuracy [DDIM-50 interval]" for s in styles]]
    head += ["same-seed distance", "agreement", "(a)", "(b)", "passes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(c: CandidateResult, reference: bool = False) -> str:
        cells = [c.label + (" (reference)" if reference else ""), str(c.evaluations)]
        for s in c.styles:
            cells.append(f"{100 * s.accuracy:.0f} % ({s.correct}/{s.images}) {s.reference.scaled(100).text()}")
        if reference:
            cells += ["0", "100 %", "–", "–", "–"]
        else:
            yes = {True: "yes", False: "no"}
            cells += [f"{c.distance:.4f}", f"{100 * c.agreement:.0f} %", yes[c.passes_accuracy]]
            cells += [yes[c.passes_closeness], yes[c.passes]]
        return "| " + " | ".join(cells) + " |"

    lines.append(row(result.reference, reference=True))
    lines += [row(c) for c in result.candidates]
    chosen = setting_label(*result.chosen)
    stays = (result.reference.sampler, result.reference.steps)
    verdict = f"**Chosen: {chosen}**" if result.chosen != stays else f"**No candidate passes: {chosen} stays**"
    lines += [
        "",
        f"{result.images_per_style} seeds per style. Mean feature distance between DDIM-50 images of the same style "
        f"from different seeds: {result.spread:.4f}; closeness threshold (one quarter): {result.threshold:.4f}; "
        f"agreement needed: {100 * MIN_AGREEMENT:.0f} %. {verdict}.",
    ]
    return "\n".join(lines) + "\n"
