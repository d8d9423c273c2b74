"""The paper's protocol on the concept-world model: erase styles with every method, measure, tabulate (issue 6).

Stages (``eval-scripts/world-benchmark.py``; each a repository script as a user would run it, except the metrics,
which this module computes in-process with the world classifier):

1. ``data`` -- ``generate-data.py``: training images of each erased style from the ORIGINAL world model
   (``assets/world/``), ``<work>/data/<prompt>/``.
2. ``erase`` -- CiE, SepCE (several styles at once), ESD, FMN and Ablating Concepts with the world presets
   (:data:`PRESETS`), one run folder each under ``<work>/models/``.
3. ``generate`` -- ``generate-images.py`` from the evaluation CSV (the first ``seeds_per_class`` seeds of each
   style in ``data/world/evaluate.csv``, prompt ``in the style of <style>``) for the original (folder
   ``default``), every erased model and the SepCE subsets (erase the first i styles, the others restored).
4. ``metrics`` -- per model folder, in ``results/`` (the layout of :mod:`sepce.evaluation.results`):
   ``accuracy.csv`` (the world classifier's style accuracy per class), and for erased models ``lpips.csv`` and
   ``fid.csv`` against ``default`` through :func:`sepce.evaluation.compare.compare_folders`. The "LPIPS" column
   holds the world classifier's feature distance (:func:`sepce.world.classifier.feature_distance`, the LPIPS
   construction on features trained for this world), and FID uses the classifier's pooled features -- LPIPS and
   Inception with random weights would be meaningless, and no pretrained weights can be downloaded.
5. ``table`` -- ``make-table.py`` (``table.md``, ``table.csv``, ``table.png``) and ``report.md``: the table, the
   original's accuracy per style, each method's erased-style drop and largest drop on another style, the SepCE
   restoration check (restored styles' images against the original's, pixel by pixel) and the run times.

Every stage resumes (finished runs, images and unchanged metrics are skipped). Forms (:data:`FORMS`): ``full``
(the documented table), ``short`` (a few minutes: the README quick start), ``tune`` (what the presets were chosen
with, on held-out styles) and ``smoke`` (CI: seconds, numbers meaningless).

Presets were chosen on held-out styles (:data:`HELD_OUT`), never on the reported ones; docs/world-benchmark.md
lists the candidates tried and what they gave.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from sepce.classes import ConceptClass, class_by_name, classes_by_names, load_class_map
from sepce.evaluation.classifier import accuracy_table
from sepce.evaluation.common import fingerprint
from sepce.evaluation.compare import compare_folders
from sepce.evaluation.fid import FID_WORLD_CLASSIFIER_NETWORK
from sepce.evaluation.images import index_images, parse_image_name
from sepce.evaluation.loading import load_images
from sepce.evaluation.results import read_metric, stored_rows, write_metric
from sepce.io import write_text
from sepce.paths import REPO_ROOT
from sepce.prompts import case_classes, read_prompt_csv
from sepce.reproduce import METHODS, ORIGINAL_FOLDER, Row, ScriptStep, table_spec, tiny_inputs
from sepce.world.classifier import SHIPPED_CLASSIFIER, WorldClassifier, feature_distance, load_classifier, predict
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG

log = logging.getLogger(__name__)

CLASS_MAP = REPO_ROOT / "data" / "world" / "classes.csv"
EVAL_CSV = REPO_ROOT / "data" / "world" / "evaluate.csv"
STAGES = ("data", "erase", "generate", "metrics", "table")
ACCURACY_COLUMNS = ["class", "name", "correct", "images", "accuracy_pct"]
IMAGE_SIZE = 64
#: Styles the presets were tuned on; the reported erasures use other styles.
HELD_OUT = ("grid", "noise", "stripes")
DEFAULT_CONCEPT = "waves"
DEFAULT_SEPCE = ("waves", "dots", "gradient")


@dataclass(frozen=True)
class Form:
    """How much of the protocol to run."""

    name: str
    seeds_per_class: int  # evaluation seeds per style (from data/world/evaluate.csv)
    num_samples: int  # images per seed
    train_images: int  # generated training images per erased style
    sampler: str
    steps: int
    guidance: float
    iterations: Optional[int] = None  # overrides every preset's iteration count (smoke only)


FORMS: Dict[str, Form] = {
    "full": Form("full", 25, 1, 128, "ddim", 50, 7.5),
    "short": Form("short", 8, 1, 64, "ddim", 25, 7.5),
    "tune": Form("tune", 16, 1, 64, "ddim", 50, 7.5),
    "smoke": Form("smoke", 1, 2, 2, "ddim", 4, 7.5, iterations=2),
}

#: World presets: flags of each training script (see docs/world-benchmark.md for how they were chosen).
PRESETS: Dict[str, tuple] = {
    "CiE": ("--lr", "1e-5", "--threshold", "0", "--reg_beta", "3e-5", "--iterations", "120"),
    "SepCE": ("--lr", "1e-2", "--scale_factor", "0.01", "--reg_beta", "3e-5", "--iterations", "200"),
    "ESD": ("--train_method", "xattn", "--lr", "5e-5", "--iterations", "100"),
    "FMN": ("--lr", "1e-3", "--iter_break", "20"),
    "AC": ("--lr", "3e-5", "--iter_break", "50"),
}


@dataclass
class BenchmarkLayout:
    """Where a world benchmark reads and writes everything (under ``work``)."""

    work: Path
    data_dir: Path
    models_dir: Path
    eval_dir: Path
    table_dir: Path
    prompts_path: Path
    ckpt_path: Path
    config_path: Path
    classifier: Path
    classes: Path


def _near(path: Path) -> Path:
    """``path`` relative to the current folder when it lies below it (readable commands), else unchanged."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return Path(path)


def benchmark_layout(
    work: Path, ckpt: Path = SHIPPED_CKPT, config: Path = SHIPPED_CONFIG, classifier: Path = SHIPPED_CLASSIFIER
) -> BenchmarkLayout:
    """Where everything goes (``work`` is the output root)."""
    work = Path(work)
    return BenchmarkLayout(
        work,
        work / "data",
        work / "models",
        work / "images",
        work / "table",
        work / "evaluate.csv",
        _near(ckpt),
        _near(config),
        _near(classifier),
        _near(CLASS_MAP),
    )


def concept_prompts(classes: Sequence[ConceptClass], names: Sequence[str]) -> List[str]:
    """Class-map prompts of style names (``waves`` → ``in the style of waves``); unknown names fail with one line."""
    return [c.prompt for c in classes_by_names(classes, names, "unknown style")]


def table_rows(methods: Sequence[str], concept: str, sepce_concepts: Sequence[str], classes) -> List[Row]:
    """The original, one row per single-concept method, and the SepCE subsets: erase the first i styles, the
    others restored (i = n..1). Rows name styles; ``erase``/``erased``/``restored`` hold their prompts. Run
    folders are :meth:`sepce.reproduce.Method.run_name` of the style names (``SepCE-waves+dots+gradient``)."""
    single = concept_prompts(classes, [concept])[0]
    multi = concept_prompts(classes, sepce_concepts)
    rows = [Row("ORI", ORIGINAL_FOLDER, "original")]
    for name in methods:
        method = METHODS[name]
        if not method.multi:
            rows.append(Row(name, name.lower(), method.run_name([concept]), erased=[single]))
            continue
        for i in range(len(multi), 0, -1):
            erased, restored = multi[:i], multi[i:]
            label = name if not restored else f"{name} (restore {'+'.join(sepce_concepts[i:])})"
            folder = name.lower() if not restored else f"{name.lower()}-restore-{'-'.join(sepce_concepts[i:])}"
            rows.append(Row(label, folder, method.run_name(sepce_concepts), erased, erased, restored))
    return rows


def eval_csv_text(classes: Sequence[ConceptClass], seeds_per_class: int, source: Path = EVAL_CSV) -> str:
    """The first ``seeds_per_class`` rows of each style in ``source`` (a prompt CSV with a class column)."""
    _, rows = tiny_inputs(classes, source, [c.name for c in classes], seeds_per_class)
    return rows


def plan_benchmark(
    lay: BenchmarkLayout,
    form: Form,
    methods: Sequence[str],
    concept: str,
    sepce_concepts: Sequence[str],
    presets: Optional[Dict[str, tuple]] = None,
    batch_size: int = 32,
    quiet: bool = False,
) -> tuple[List[ScriptStep], List[Row]]:
    """The script steps (stages data, erase, generate and the table files) and the table rows."""
    classes = load_class_map(lay.classes)
    presets = {**PRESETS, **(presets or {})}
    single = concept_prompts(classes, [concept])[0]
    multi = concept_prompts(classes, sepce_concepts)
    model_flags = ["--ckpt_path", str(lay.ckpt_path), "--config_path", str(lay.config_path)]
    sample_flags = ["--sampler", form.sampler, "--ddim_steps", str(form.steps)]
    sample_flags += ["--guidance_scale", str(form.guidance), "--image_size", str(IMAGE_SIZE), "--device", "cpu"]
    sample_flags += ["--batch_size", str(batch_size)] + (["--quiet"] if quiet else [])
    steps = [
        ScriptStep(
            "generate", "evaluation CSV", write=lay.prompts_path, content=eval_csv_text(classes, form.seeds_per_class)
        )
    ]
    needed = sorted({p for m in methods if METHODS[m].uses_data for p in (multi if METHODS[m].multi else [single])})
    for prompt in needed:
        argv = ["eval-scripts/generate-data.py", "--prompt", prompt, "--model_name", "none", "--link", "none"]
        argv += ["--save_path", str(lay.data_dir), "--num_cases", str(form.train_images), "--classes", str(lay.classes)]
        steps.append(ScriptStep("data", f"training images of {prompt!r}", argv + model_flags + sample_flags))
    for name in methods:
        method = METHODS[name]
        concepts = multi if method.multi else [single]
        out = lay.models_dir / method.run_name(sepce_concepts if method.multi else [concept])
        argv = [method.script, *(["--prompts", *concepts] if method.multi else ["--prompt", single])]
        argv += [*presets[name], *model_flags, "--devices", "cpu", "--output_dir", str(out)]
        # ESD samples latents of image_size/8 pixels; the world model's latents are 16 = 64/4 pixels wide.
        argv += ["--image_size", str(IMAGE_SIZE * 8 // 4 if name == "ESD" else IMAGE_SIZE)]
        if method.uses_data:
            argv += ["--data_dir", str(lay.data_dir)]
        if form.iterations is not None:
            argv += ["--iterations", str(form.iterations)]
        steps.append(ScriptStep("erase", f"{name} on {', '.join(concepts)}", argv, skip_if=out / "erasure.safetensors"))
    rows = table_rows(methods, concept, sepce_concepts, classes)
    for row in rows:
        argv = ["eval-scripts/generate-images.py", "--model_name", row.model_name, "--prompts_path"]
        argv += [str(lay.prompts_path), "--save_path", str(lay.eval_dir), "--output_name", row.folder]
        argv += ["--num_samples", str(form.num_samples), "--models_dir", str(lay.models_dir)]
        argv += ["--classes", str(lay.classes), *model_flags, *sample_flags]
        if row.erase is not None:
            argv += ["--erase", *row.erase]
        steps.append(ScriptStep("generate", f"evaluation images of {row.name}", argv))
    spec_path = lay.table_dir / "spec.json"
    spec = json.dumps(table_spec(rows, lay.eval_dir, spec_path), indent=2) + "\n"
    steps.append(ScriptStep("table", "table spec", write=spec_path, content=spec))
    argv = ["eval-scripts/make-table.py", "--spec", str(spec_path), "--output_dir", str(lay.table_dir)]
    steps.append(ScriptStep("table", "table", argv + ["--overwrite", "--classes", str(lay.classes)]))
    return steps, rows


# ------------------------------------------------------------------------------------------------ metrics
class DistanceMetric(torch.nn.Module):
    """LPIPS-style callable for :func:`compare_folders`: images in [-1, 1] → per-pair feature distance."""

    def __init__(self, classifier: WorldClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return feature_distance(self.classifier, (a + 1) / 2, (b + 1) / 2).float()


class ClassifierFeatures(torch.nn.Module):
    """FID feature extractor: images in [0, 1] → the classifier's pooled features."""

    def __init__(self, classifier: WorldClassifier):
        super().__init__()
        self.classifier = classifier

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


def folder_images(folder: Path, case_to_class: Dict[int, int]) -> tuple[List[Path], List[int]]:
    """Generated images of a model folder (flat or sorted into class folders) with their classes."""
    index, _ = index_images(folder)
    paths, labels = [], []
    for name in sorted(index):
        parsed = parse_image_name(name)
        if parsed is not None and parsed[0] in case_to_class:
            paths.append(index[name])
            labels.append(case_to_class[parsed[0]])
    return paths, labels


@torch.no_grad()
def classify_paths(classifier: WorldClassifier, paths: Sequence[Path], batch_size: int = 128) -> List[int]:
    """Predicted style index of each image file."""
    out: List[int] = []
    for start in range(0, len(paths), batch_size):
        out += predict(classifier, load_images(paths[start : start + batch_size], IMAGE_SIZE))[0].tolist()
    return out


def accuracy_results(
    folder: Path, classifier: WorldClassifier, classifier_id: str, case_to_class: Dict[int, int], classes
) -> List[dict]:
    """Style accuracy per class of a model folder → ``results/accuracy.csv`` (reused when inputs are unchanged)."""
    paths, labels = folder_images(folder, case_to_class)
    if not paths:
        raise ValueError(f"{folder} holds no generated images of the evaluation CSV")
    key = fingerprint(
        {"images": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths], "net": classifier_id}
    )
    stored = stored_rows(folder, "accuracy", key, overwrite=True)
    if stored is not None:
        return stored
    rows, confusion = accuracy_table(classes, labels, classify_paths(classifier, paths))
    meta = {"classifier": classifier_id, "images": len(paths), "confusion": confusion, "fingerprint": key}
    write_metric(folder, "accuracy", rows, ACCURACY_COLUMNS, meta)
    return rows


def run_metrics(lay: BenchmarkLayout, rows: Sequence[Row]) -> Dict[str, dict]:
    """Accuracy of every row, feature distance and FID of every erased row against the original."""
    classes = load_class_map(lay.classes)
    case_to_class = case_classes(read_prompt_csv(lay.prompts_path, classes, require_class=True))
    classifier, info = load_classifier(lay.classifier)
    from sepce.records import file_digest

    classifier_id = f"world classifier {lay.classifier.name} sha256 {file_digest(lay.classifier)[:16]}"
    original = lay.eval_dir / ORIGINAL_FOLDER
    out = {}
    for row in rows:
        folder = lay.eval_dir / row.folder
        out[row.name] = {"accuracy": accuracy_results(folder, classifier, classifier_id, case_to_class, classes)}
        if row.folder == ORIGINAL_FOLDER:
            continue
        out[row.name].update(
            compare_folders(
                original,
                folder,
                case_to_class,
                classes,
                torch.device("cpu"),
                lpips_factory=lambda: DistanceMetric(classifier),
                fid_factory=lambda: ClassifierFeatures(classifier),
                fid_network=FID_WORLD_CLASSIFIER_NETWORK,
                settings={"classifier": classifier_id, "lpips_is": "world classifier feature distance"},
                batch_size=64,
                lpips_image_size=IMAGE_SIZE,
                fid_image_size=IMAGE_SIZE,
                overwrite=True,
            )
        )
    return out


# ------------------------------------------------------------------------------------------------ report
def pixel_check(original: Path, edited: Path, case_to_class: Dict[int, int], class_index: int) -> dict:
    """Largest and mean absolute uint8 difference of same-named images of one class (restoration check)."""
    from PIL import Image

    left, _ = index_images(original)
    right, _ = index_images(edited)
    diffs = []
    for name in sorted(set(left) & set(right)):
        parsed = parse_image_name(name)
        if parsed is None or case_to_class.get(parsed[0]) != class_index:
            continue
        a = np.asarray(Image.open(left[name]).convert("RGB"), np.int16)
        b = np.asarray(Image.open(right[name]).convert("RGB"), np.int16)
        diffs.append(np.abs(a - b))
    if not diffs:
        return {"images": 0, "max_abs_diff": math.nan, "mean_abs_diff": math.nan, "identical": 0}
    return {
        "images": len(diffs),
        "max_abs_diff": int(max(d.max() for d in diffs)),
        "mean_abs_diff": float(np.mean([d.mean() for d in diffs])),
        "identical": int(sum(int(d.max() == 0) for d in diffs)),
    }


def summarise(lay: BenchmarkLayout, rows: Sequence[Row], aim_drop: float = 50.0, aim_other: float = 10.0) -> dict:
    """Per row: erased styles' accuracy drops, the largest drop on any other style, the aim verdict; SepCE
    restoration pixel checks."""
    classes = load_class_map(lay.classes)
    by_prompt = {c.prompt: c for c in classes}
    case_to_class = case_classes(read_prompt_csv(lay.prompts_path, classes, require_class=True))
    accuracy = {row.name: read_metric(lay.eval_dir / row.folder, "accuracy") or {} for row in rows}
    ori = accuracy[rows[0].name]
    out = {"original_accuracy": {c.name: ori.get(c.name, math.nan) for c in classes}, "rows": {}}
    for row in rows[1:]:
        acc = accuracy[row.name]
        erased = [by_prompt[p].name for p in row.erased]
        restored = [by_prompt[p].name for p in row.restored]
        drops = {c.name: ori.get(c.name, math.nan) - acc.get(c.name, math.nan) for c in classes}
        others = [d for n, d in drops.items() if n not in erased and not math.isnan(d)]
        entry = {
            "erased": erased,
            "restored": restored,
            "erased_drop": {n: drops[n] for n in erased},
            "largest_other_drop": max(others) if others else math.nan,
        }
        entry["meets_aim"] = bool(
            all(d >= aim_drop for d in entry["erased_drop"].values()) and entry["largest_other_drop"] <= aim_other
        )
        if restored:
            entry["restoration"] = {
                n: pixel_check(
                    lay.eval_dir / ORIGINAL_FOLDER,
                    lay.eval_dir / row.folder,
                    case_to_class,
                    class_by_name(list(classes), n).index,
                )
                for n in restored
            }
        out["rows"][row.name] = entry
    return out


def _num(value: float, fmt: str = "{:.1f}") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def report_markdown(
    form: Form, table_md: str, summary: dict, timings: Sequence[dict], presets: Dict[str, tuple]
) -> str:
    """``report.md``: the table, the original's accuracy, the drops and aim verdicts, restoration, run times."""
    lines = [
        f"# Concept-world benchmark ({form.name} form)",
        "",
        f"{form.seeds_per_class} seeds x {form.num_samples} image(s) per style, {form.sampler.upper()} {form.steps} "
        f"steps, guidance {form.guidance:g}, 64x64. ACC = world classifier style accuracy; the LPIPS column is the "
        "world classifier's feature distance (LPIPS construction, unit weights); FID uses the classifier's pooled "
        "features.",
        "",
        table_md.rstrip(),
        "",
        "## Original model accuracy per style (%)",
        "",
        "| " + " | ".join(summary["original_accuracy"]) + " |",
        "|" + "|".join([":---:"] * len(summary["original_accuracy"])) + "|",
        "| " + " | ".join(_num(v) for v in summary["original_accuracy"].values()) + " |",
        "",
        "## Erasure: accuracy drop of the erased styles vs. the largest drop of any other style (points)",
        "",
        "Aim: every erased style drops by >= 50 points, no other style by more than 10.",
        "",
        "| Model | erased (drop) | restored | largest other drop | aim met |",
        "|---|---|---|:---:|:---:|",
    ]
    for name, entry in summary["rows"].items():
        erased = ", ".join(f"{n} ({_num(d)})" for n, d in entry["erased_drop"].items())
        lines.append(
            f"| {name} | {erased} | {', '.join(entry['restored']) or '–'} | {_num(entry['largest_other_drop'])} | "
            f"{'yes' if entry['meets_aim'] else 'no'} |"
        )
    checks = [(n, s, c) for n, e in summary["rows"].items() for s, c in e.get("restoration", {}).items()]
    if checks:
        lines += [
            "",
            "## SepCE restoration: restored styles' images vs. the original's (same seeds, uint8 pixels)",
            "",
            "| Model | restored style | images | identical | max abs diff | mean abs diff |",
            "|---|---|:---:|:---:|:---:|:---:|",
        ]
        for name, style, c in checks:
            lines.append(
                f"| {name} | {style} | {c['images']} | {c['identical']} | {c['max_abs_diff']} | "
                f"{_num(c['mean_abs_diff'], '{:.4f}')} |"
            )
    lines += ["", "## Presets", "", "| Method | flags |", "|---|---|"]
    lines += [f"| {m} | `{' '.join(f)}` |" for m, f in presets.items()]
    lines += ["", "## Run times (wall clock, this machine)", "", "| Stage | Step | seconds |", "|---|---|---:|"]
    lines += [f"| {t['stage']} | {t['name']} | {t['seconds']:.0f} |" for t in timings]
    total = sum(t["seconds"] for t in timings)
    lines += [f"| | **total** | **{total:.0f}** |", ""]
    return "\n".join(lines)


def timings_csv(timings: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["stage", "name", "status", "seconds"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(timings)
    return buf.getvalue()


def write_report(lay: BenchmarkLayout, form: Form, rows, timings, presets) -> tuple[Path, dict]:
    summary = summarise(lay, rows)
    table_md = (lay.table_dir / "table.md").read_text()
    text = report_markdown(form, table_md, summary, timings, presets)
    write_text(lay.work / "report.md", text)
    write_text(lay.work / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    write_text(lay.work / "timings.csv", timings_csv(timings))
    return lay.work / "report.md", summary


class Timer:
    """Wall-clock seconds of a block."""

    def __enter__(self) -> Timer:
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.start
