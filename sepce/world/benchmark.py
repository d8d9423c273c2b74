"""The paper's protocol on the concept-world model: erase styles with every method, attack, measure, report.

Stages (``eval-scripts/world-benchmark.py``; each a repository script as a user would run it, except the metrics,
which :class:`Metrics` computes with the world classifier, one step per model, ``python -m sepce.world.metrics``):

1. ``data`` -- ``generate-data.py``: training images from the ORIGINAL world model (``assets/world/``) of every
   style that is erased or attacked, and of the blank anchor ``""`` when the original Ablating Concepts runs,
   under ``<work>/data/<prompt>/``.
2. ``erase`` -- every method of :data:`WORLD_METHODS` with its world preset (:data:`PRESETS`), one run folder per
   (method, erased styles, training seed) under ``<work>/models/`` (:func:`sepce.paths.run_name`).
3. ``generate`` -- ``generate-images.py`` from the evaluation CSV (``seeds_per_class`` seeds of each style in
   ``data/world/evaluate.csv`` per seed block, prompt ``in the style of <style>``; the sweep's training seed i on
   block i) and from the CRA CSV (``a <object> in the style of <style>``, 64 prompts, under ``images-cra/``) for
   the original (folder ``default``, generated once and shared), every erased model and SepCE's subsets (erase the
   first i styles, restore the rest).
4. ``attack`` -- ``attack-inversion.py``: the concept-inversion attack (docs/method.md) on every erased style of
   every model, and on the original for every such style (the ceiling), one preset for all
   (:data:`sepce.attack.PRESETS` ``world``); results in each model folder's ``results/attack.*``.
5. ``metrics`` -- per model folder, as soon as its images and attacks (and the original's metrics) are there, in
   ``results/`` (:mod:`sepce.evaluation.results`): ``accuracy.csv`` (the
   world classifier's style accuracy per class, each image's prediction in ``accuracy.json``), ``cra.json`` and
   ``quality.json`` (:mod:`sepce.world.measures`: CRA predictions; distances and FID against ground-truth renders
   and the distance to the original), and for erased models
   ``lpips.csv`` and ``fid.csv`` against ``default`` through :func:`sepce.evaluation.compare.compare_folders`. The
   "LPIPS" column holds the world classifier's feature distance (the LPIPS construction on features trained for
   this world); FID uses the classifier's pooled features ("FID (world classifier features)") -- LPIPS and
   Inception with random weights would be meaningless, and no pretrained weights can be downloaded.
6. ``table`` -- single-erasure forms: ``make-table.py`` (``table.md``, ``table.csv``, ``table.png``) and
   ``report.md``; the ``sweep`` form ``sweep.md`` (:mod:`sepce.world.report`). Both judge every row by protocol
   v2's one rule (:mod:`sepce.world.analysis`, docs/world-benchmark.md "Protocol v2"): drops with exact-hulled
   intervals and per-style verdicts, UA/IRA/CRA, quality, the attack, paired method differences.

Every stage resumes (finished runs, images, attacks and unchanged metrics are skipped). Forms (:data:`FORMS`):
``full`` (one erasure per method, 40 seeds per style), ``sweep`` (every method erases every reported style with
training seeds 0-4; SepCE two disjoint triples), ``short`` (the README quick start, 8 seeds per style), ``tune``
(preset selection on the held-out styles, 40 seeds so that ``spared`` is reachable) and ``smoke`` (CI: seconds,
numbers meaningless).

Presets were chosen on the held-out styles (:data:`HELD_OUT`) only, by the rule in docs/world-benchmark.md.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from sepce.classes import ConceptClass, classes_by_names, load_class_map
from sepce.cli import show_progress
from sepce.data_generation import data_folder_name
from sepce.evaluation.artist_classifier import accuracy_table
from sepce.evaluation.common import fingerprint
from sepce.evaluation.compare import CompareSettings, compare_folders
from sepce.evaluation.fid import FID_WORLD_CLASSIFIER_NETWORK
from sepce.evaluation.folder_accuracy import labelled_images
from sepce.evaluation.results import stored_rows, write_metric
from sepce.evaluation.table import ModelSpec
from sepce.evaluation.verify import verify_folders
from sepce.paper_plan import ORIGINAL_FOLDER, table_steps
from sepce.paths import REPO_ROOT, near, run_name
from sepce.pipeline.steps import Resources, ScriptStep
from sepce.prompt_csv import case_classes, read_prompt_csv
from sepce.world.concept_classifier import (
    IMAGE_SIZE,
    SHIPPED_CLASSIFIER,
    WorldClassifier,
    classify_paths,
    feature_distance,
    load_classifier,
)
from sepce.world.measures import cra_results, quality_results
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG
from sepce.world.prompts import build_prompt
from sepce.world.render import OBJECTS

log = logging.getLogger(__name__)

CLASS_MAP = REPO_ROOT / "data" / "world" / "classes.csv"
EVAL_CSV = REPO_ROOT / "data" / "world" / "evaluate.csv"
STAGES = ("data", "erase", "generate", "attack", "metrics", "table")
ACCURACY_COLUMNS = ["class", "name", "correct", "images", "accuracy_pct"]
#: Styles the presets were tuned on (single-concept methods erased ``grid``; SepCE erased both); every other style
#: is reported. Fixed before any result of the retrained model was seen (docs/world-benchmark.md).
HELD_OUT = ("grid", "stripes")
TUNE_CONCEPT = "grid"
DEFAULT_CONCEPT = "waves"
DEFAULT_SEPCE = ("waves", "dots", "gradient")
#: The sweep: SepCE erases each of two disjoint triples of reported styles; every method trains with these seeds.
SWEEP_TRIPLES = (("waves", "dots", "gradient"), ("checker", "rings", "noise"))
SWEEP_SEEDS = (0, 1, 2, 3, 4)
#: Protocol v2: the sweep attacks the runs of these training seeds only (the attack would dominate the cost).
SWEEP_ATTACK_SEEDS = (0, 1)
#: Attack kinds the attack stage can run on every attacked style (--attacks): concept inversion (a new word) and
#: the adversarial-prompt attack (real tokens prepended, sepce.adversarial); each writes its own results file.
ATTACK_SCRIPTS = {
    "inversion": "eval-scripts/attack-inversion.py",
    "adversarial": "eval-scripts/attack-adversarial-prompt.py",
}
#: What each attack kind writes in the model's folder besides its results.
ATTACK_FOLDERS = {"inversion": "attack", "adversarial": "adversarial"}
ANCHOR_PROMPT = ""  # the world's generic caption: Ablating Concepts' anchor (docs/method.md)
#: Every step of the benchmark runs on one CPU core (a Slurm job: one core, 4 GB, a generous 2 h limit).
STEP_RESOURCES = Resources(gpus=0, cpus=1, mem_gb=4, minutes=120)


def step_resources(device: str) -> Resources:
    """A step's resources: :data:`STEP_RESOURCES`, plus one GPU when the scripts run on CUDA (``--device``)."""
    return STEP_RESOURCES if device == "cpu" else Resources(gpus=1, cpus=1, mem_gb=8, minutes=120)


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
    attack: bool = False  # run the concept-inversion attack
    attack_steps: Optional[int] = None  # overrides the attack preset's steps (smoke only)
    sweep: bool = False  # every reported style x training seeds, SepCE triples
    attack_seeds: Optional[tuple] = None  # sweep: attack only the runs of these training seeds (None: every run)
    cra_objects: int = 8  # CRA images per style and run: ``a <object> in the style of <style>``, the first objects


#: The sampler and steps of every image the protocol draws (training data, evaluation and attack images), chosen by
#: the pre-registered rule on the held-out styles (docs/world-benchmark.md, "The sampler"; was DDIM 50).
WORLD_SAMPLER = ("dpmpp_2m", 10)

#: Protocol v2 (docs/world-benchmark.md, "How much data"): ``seeds_per_class`` is per training seed; a
#: deterministic method (UCE) gets as many seeds from its one run as a seeded method has over all its seeds.
FORMS: Dict[str, Form] = {
    "full": Form("full", 40, 1, 128, *WORLD_SAMPLER, 7.5, attack=True),
    "sweep": Form("sweep", 16, 1, 128, *WORLD_SAMPLER, 7.5, attack=True, sweep=True, attack_seeds=SWEEP_ATTACK_SEEDS),
    "short": Form("short", 8, 1, 64, *WORLD_SAMPLER, 7.5),
    "tune": Form("tune", 40, 1, 64, *WORLD_SAMPLER, 7.5),  # v2 re-tuning rule needs spared reachable: >= 36
    "smoke": Form(
        "smoke", 1, 2, 2, WORLD_SAMPLER[0], 4, 7.5, iterations=2, attack=True, attack_steps=2, cra_objects=1
    ),
}


@dataclass(frozen=True)
class WorldMethod:
    """A row of the benchmark: a training script, how it names its concepts and which images it trains on."""

    key: str  # --methods name and run-folder prefix
    label: str  # row label in tables
    script: str
    concept_flag: str = "--prompt"  # "--prompt" (one), "--prompts" (several), "--edit_concepts" (';'-joined)
    data: str = "concept"  # training images: "concept", "anchor" (the blank caption) or "none"
    seeded: bool = True  # False: deterministic (closed form), one run whatever the seed
    latent_image_size: bool = False  # ESD: --image_size is 8x the latent side (its sampler assumes f = 8)
    image_size: bool = True  # the script takes --image_size

    @property
    def multi(self) -> bool:
        return self.concept_flag != "--prompt"

    def concept_argv(self, prompts: Sequence[str]) -> List[str]:
        if self.concept_flag == "--prompt":
            if len(prompts) != 1:
                raise ValueError(f"{self.label} erases one concept at a time, got {list(prompts)}")
            return ["--prompt", prompts[0]]
        if self.concept_flag == "--edit_concepts":
            return ["--edit_concepts", ";".join(prompts)]
        return [self.concept_flag, *prompts]


WORLD_METHODS: Dict[str, WorldMethod] = {
    m.key: m
    for m in (
        WorldMethod("CiE", "CiE", "train-scripts/CiE.py"),
        WorldMethod("SepCE", "SepCE", "train-scripts/SepCE.py", concept_flag="--prompts"),
        WorldMethod("ESD", "ESD", "train-scripts/Esd.py", data="none", latent_image_size=True),
        WorldMethod("FMN", "FMN (authors' variant)", "train-scripts/FMN.py"),
        WorldMethod("AC", "AC (authors' variant)", "train-scripts/Abconcept.py"),
        WorldMethod(
            "UCE",
            "UCE",
            "train-scripts/UCE.py",
            concept_flag="--edit_concepts",
            data="none",
            seeded=False,
            image_size=False,
        ),
        WorldMethod("FMN-original", "FMN (original)", "train-scripts/FMN.py"),
        WorldMethod("AC-original", "AC (original)", "train-scripts/Abconcept.py", data="anchor"),
    )
}
#: The paper's five methods, then the later baselines; --methods default.
DEFAULT_METHODS = tuple(WORLD_METHODS)

#: World presets: flags of each training script besides the concepts, seed and paths, chosen by the fixed rule on
#: the held-out styles (docs/world-benchmark.md, "Presets": the tuning run and its table). FMN/AC build their
#: prompts from world templates fixed before any result was seen: the class prompt itself (``in the style of
#: waves``), FMN's neutral prompt without the style word, AC's anchor the blank caption (docs/method.md).
#: ``{others}`` expands to the ';'-joined TRAINING-template prompts ``<style> style`` of every style not erased
#: (protocol v2, "No leaks": never an evaluation prompt).
PRESETS: Dict[str, tuple] = {
    "CiE": ("--lr", "1e-5", "--threshold", "0", "--reg_beta", "3e-5", "--iterations", "120"),
    "SepCE": ("--lr", "1e-2", "--scale_factor", "0.003", "--reg_beta", "3e-5", "--iterations", "200"),
    "ESD": ("--train_method", "xattn", "--lr", "1e-4", "--iterations", "100"),
    "FMN": ("--lr", "1e-3", "--iter_break", "20", "--concept_template", "{}", "--neutral_prompt", "in the style of"),
    "AC": ("--lr", "3e-5", "--iter_break", "50", "--concept_template", "{}", "--anchor_prompt", ANCHOR_PROMPT),
    "UCE": ("--erase_scale", "1", "--preserve_scale", "1", "--lamb", "0.5", "--preserve_concepts", "{others}"),
    "FMN-original": ("--variant", "original", "--concept_template", "{}", "--lr", "2e-5"),
    "AC-original": (
        "--variant",
        "original",
        "--concept_template",
        "{}",
        "--anchor_prompt",
        ANCHOR_PROMPT,
        "--lr",
        "1e-4",
    ),
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
    cra_dir: Path  # CRA images (``a <object> in the style of <style>``), one folder per model as under eval_dir
    cra_prompts: Path  # their prompt CSV (with an ``object`` column)


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
        near(ckpt),
        near(config),
        near(classifier),
        near(CLASS_MAP),
        work / "images-cra",
        work / "evaluate-cra.csv",
    )


def concept_prompts(classes: Sequence[ConceptClass], names: Sequence[str]) -> List[str]:
    """Class-map prompts of style names (``waves`` → ``in the style of waves``); unknown names fail with one line."""
    return [c.prompt for c in classes_by_names(classes, names, "unknown style")]


def reported_styles(classes: Sequence[ConceptClass]) -> List[str]:
    """Every style except the held-out ones (what the sweep erases)."""
    return [c.name for c in classes if c.name not in HELD_OUT]


# ------------------------------------------------------------------------------------------------ cells
@dataclass(frozen=True)
class Cell:
    """One evaluated model: a run (method, the styles it was trained to erase, training seed), the subset of them
    erased at generation time (SepCE), the restored rest, and the images folder under ``images/``."""

    label: str
    method: str  # WORLD_METHODS key, or "ORI"
    styles: tuple = ()  # every style the run erases
    seed: int = 0
    erased: tuple = ()  # styles erased in this model (== styles except for SepCE subsets)
    restored: tuple = ()
    preset: Optional[tuple] = None  # a candidate's flags (tune form); None: the method's preset
    tag: str = ""  # names the candidate in run folders and labels ("c2")
    block: int = 0  # evaluated on the evaluation seeds of blocks block .. block+blocks-1 (seeds_per_class each)
    blocks: int = 1

    @property
    def candidate(self) -> bool:
        """A tuning candidate's own run (not one of its restore subsets)."""
        return bool(self.tag) and not self.restored

    @property
    def original(self) -> bool:
        return self.method == "ORI"

    @property
    def run(self) -> str:
        """The run folder under ``models/``: ``CiE-waves-seed0``, ``SepCE-waves+dots+gradient-seed1``,
        ``CiE-grid-seed0-c2`` (candidate 2 of a tuning run)."""
        suffix = f"seed{self.seed}" + (f"-{self.tag}" if self.tag else "")
        return "" if self.original else run_name(self.method, self.styles, suffix)

    @property
    def folder(self) -> str:
        """The images folder under ``images/``."""
        if self.original:
            return ORIGINAL_FOLDER
        return self.run + (f"-restore-{'+'.join(self.restored)}" if self.restored else "")

    @property
    def unit(self) -> str:
        """What the sweep pools over: the erased style, or SepCE's triple."""
        return "+".join(self.styles)


def method_cells(
    method: WorldMethod,
    styles: Sequence[str],
    seed: int,
    preset: Optional[tuple] = None,
    tag: str = "",
    block: int = 0,
    blocks: int = 1,
) -> List[Cell]:
    """The evaluated models of one run: the run itself, and for several styles (SepCE) the subsets that erase
    the first i styles and restore the rest (i = n-1..1); all evaluated on the seeds of ``block``..+``blocks``."""
    styles = tuple(styles)
    name = method.label + (f" [{tag}]" if tag else "")
    cells = [Cell(name, method.key, styles, seed, styles, (), preset, tag, block, blocks)]
    if method.key == "SepCE":
        for i in range(len(styles) - 1, 0, -1):
            restored = styles[i:]
            label = f"{name} (restore {'+'.join(restored)})"
            cells.append(Cell(label, method.key, styles, seed, styles[:i], restored, preset, tag, block, blocks))
    return cells


def single_cells(
    methods: Sequence[str],
    concept: str,
    sepce_concepts: Sequence[str],
    candidates: Optional[Dict[str, List[tuple]]] = None,
) -> List[Cell]:
    """The single-erasure forms: the original, each single-concept method on ``concept``, SepCE on
    ``sepce_concepts`` with its subsets; training seed 0. A method with several ``candidates`` presets (the tune
    form) gets one run per candidate, tagged ``c1``, ``c2``, ... in their order."""
    cells = [Cell("ORI", "ORI")]
    for key in methods:
        method = WORLD_METHODS[key]
        styles = sepce_concepts if key == "SepCE" else [concept]
        options = (candidates or {}).get(key) or [None]
        for k, preset in enumerate(options, 1):
            cells += method_cells(method, styles, 0, preset, f"c{k}" if len(options) > 1 else "")
    return cells


def sweep_cells(
    methods: Sequence[str],
    styles: Sequence[str],
    triples: Sequence[Sequence[str]] = SWEEP_TRIPLES,
    seeds: Sequence[int] = SWEEP_SEEDS,
) -> List[Cell]:
    """The sweep: every single-concept method erases each of ``styles`` with each training seed (deterministic
    methods once), SepCE each triple with each seed (and its restore subsets); the original once.

    Protocol v2: the i-th training seed is evaluated on the i-th block of evaluation seeds, so the runs of a style
    pool over distinct images; a deterministic method's one run and the original get every block (UCE: 80 seeds
    from one run against 5 x 16)."""
    cells = [Cell("ORI", "ORI", blocks=len(seeds))]
    for key in methods:
        method = WORLD_METHODS[key]
        groups = [tuple(t) for t in triples] if key == "SepCE" else [(s,) for s in styles]
        for group in groups:
            if not method.seeded:
                cells += method_cells(method, group, seeds[0], blocks=len(seeds))
                continue
            for i, seed in enumerate(seeds):
                cells += method_cells(method, group, seed, block=i)
    return cells


def original_cell(cells: Sequence[Cell]) -> Cell:
    """The original model's cell of a plan (every plan has exactly one)."""
    found = [c for c in cells if c.original]
    if len(found) != 1:
        raise ValueError(f"a benchmark plan needs exactly one original cell, found {len(found)}")
    return found[0]


def erased_cells(cells: Sequence[Cell]) -> List[Cell]:
    """Every cell but the original's."""
    return [c for c in cells if not c.original]


def eval_csv_text(
    classes: Sequence[ConceptClass], seeds_per_class: int, source: Path = EVAL_CSV, start: int = 0
) -> str:
    """Rows ``start`` .. ``start + seeds_per_class - 1`` of each style in ``source`` (a prompt CSV with a class
    column), case numbers kept, so images of one seed have one name in every folder."""
    rows = read_prompt_csv(source, list(classes), require_class=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_number", "prompt", "evaluation_seed", "class"])
    for c in classes:
        mine = [r for r in rows if r.class_index == c.index]
        if len(mine) < start + seeds_per_class:
            raise ValueError(
                f"{source} has {len(mine)} seeds of style {c.name!r}; the form needs {start + seeds_per_class}"
            )
        for r in mine[start : start + seeds_per_class]:
            writer.writerow([r.case_number, r.prompt, r.evaluation_seed, r.class_index])
    return buf.getvalue()


def cra_csv_text(classes: Sequence[ConceptClass], objects: int, source: Path = EVAL_CSV) -> str:
    """The CRA prompts (protocol v2): ``a <object> in the style of <style>`` for every style and the first
    ``objects`` objects, each once; the j-th object of a style takes the j-th seed of that style in ``source``.
    Columns: case_number, prompt, evaluation_seed, class (the style), object (the object index)."""
    rows = read_prompt_csv(source, list(classes), require_class=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_number", "prompt", "evaluation_seed", "class", "object"])
    for c in classes:
        seeds = [r.evaluation_seed for r in rows if r.class_index == c.index]
        for j, obj in enumerate(OBJECTS[:objects]):
            writer.writerow([c.index * len(OBJECTS) + j, build_prompt(c.name, obj), seeds[j], c.index, j])
    return buf.getvalue()


def training_prompt(style: str) -> str:
    """A style's training-template prompt ``<style> style`` (what UCE preserves; never an evaluation prompt)."""
    return build_prompt(style, None, "suffix")


def evaluation_prompts(classes: Sequence[ConceptClass], objects: int = len(OBJECTS)) -> set:
    """Every prompt the protocol evaluates on: the style prompts and the CRA prompts."""
    return {c.prompt for c in classes} | {build_prompt(c.name, o) for c in classes for o in OBJECTS[:objects]}


def seed_span(cells: Sequence[Cell]) -> int:
    """How many blocks of evaluation seeds a plan's cells cover together."""
    return max(c.block + c.blocks for c in cells)


def seed_csv(lay: BenchmarkLayout, block: int, blocks: int, span: int) -> Path:
    """The evaluation CSV of seed blocks ``block`` .. ``block + blocks - 1``: the whole ``evaluate.csv`` when that
    is every block of the plan (``span``), else ``evaluate-blocks<first>-<last>.csv`` beside it."""
    if block == 0 and blocks == span:
        return lay.prompts_path
    return lay.prompts_path.with_name(f"evaluate-blocks{block}-{block + blocks - 1}.csv")


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class BenchmarkPlan:
    """The steps of a benchmark and the models they produce. ``setup`` (the evaluation CSV, training images) comes
    first; each chain (one training run: erase, then generate and attack its models; or the original's images and
    attacks) depends only on the setup, so chains may run side by side (``--jobs``); then ``metrics`` and
    ``table``. The runner (:mod:`sepce.pipeline.runner`) reads the order off what each step reads and writes."""

    setup: List[ScriptStep]
    chains: List[List[ScriptStep]]
    table: List[ScriptStep]
    cells: List[Cell]
    attacked: Dict[str, List[str]] = field(default_factory=dict)  # images folder -> styles attacked there
    metrics: List[ScriptStep] = field(default_factory=list)

    @property
    def steps(self) -> List[ScriptStep]:
        return [*self.setup, *(step for chain in self.chains for step in chain), *self.metrics, *self.table]


def expand_preset(flags: Sequence[str], classes: Sequence[ConceptClass], erased: Sequence[str]) -> List[str]:
    """A preset's flags with ``{others}`` replaced by the ';'-joined training-template prompts (``<style> style``,
    :func:`training_prompt`) of the styles not erased."""
    others = ";".join(training_prompt(c.name) for c in classes if c.name not in erased)
    return [f.replace("{others}", others) for f in flags]


def attack_plan(cells: Sequence[Cell], seeds: Optional[Sequence[int]] = None) -> Dict[str, List[str]]:
    """Styles attacked in each images folder: every erased style of every erased model (of the training ``seeds``
    when given), and all of them on the original (the ceiling)."""
    attacked: Dict[str, List[str]] = {}
    for cell in cells:
        if not cell.original and (seeds is None or cell.seed in seeds):
            attacked[cell.folder] = list(cell.erased)
    ceiling = list(dict.fromkeys(s for styles in attacked.values() for s in styles))
    if ceiling:
        attacked[ORIGINAL_FOLDER] = ceiling
    return attacked


def data_prompts(cells: Sequence[Cell], attacked: Dict[str, List[str]], prompt_of: Dict[str, str]) -> List[str]:
    """Prompts whose training images (from the original model) some step reads."""
    needed = {prompt_of[s] for styles in attacked.values() for s in styles}
    for cell in cells:
        if cell.original:
            continue
        method = WORLD_METHODS[cell.method]
        if method.data == "concept":
            needed |= {prompt_of[s] for s in cell.styles}
        elif method.data == "anchor":
            needed.add(ANCHOR_PROMPT)
    return sorted(needed)


def plan_benchmark(
    lay: BenchmarkLayout,
    form: Form,
    cells: Sequence[Cell],
    presets: Optional[Dict[str, tuple]] = None,
    batch_size: int = 32,
    quiet: bool = False,
    device: str = "cpu",
    attacks: Sequence[str] = ("inversion",),
) -> BenchmarkPlan:
    """Every script step (stages data, erase, generate, attack and the table files) for ``cells``; ``device``: where
    the scripts train and sample (``--device`` / ``--devices``; the metrics stay on the CPU); ``attacks``: the kinds
    of :data:`ATTACK_SCRIPTS` the attack stage runs."""
    classes = load_class_map(lay.classes)
    presets = {**PRESETS, **(presets or {})}
    prompt_of = {c.name: c.prompt for c in classes}
    model_flags = ["--ckpt_path", str(lay.ckpt_path), "--config_path", str(lay.config_path)]
    sample_flags = ["--sampler", form.sampler, "--ddim_steps", str(form.steps)]
    sample_flags += ["--guidance_scale", str(form.guidance), "--image_size", str(IMAGE_SIZE), "--device", device]
    sample_flags += ["--batch_size", str(batch_size)] + (["--quiet"] if quiet else [])
    spc, span = form.seeds_per_class, seed_span(cells)
    content = eval_csv_text(classes, spc * span)
    setup = [ScriptStep("generate", "evaluation CSV", write=lay.prompts_path, content=content)]
    attacked = attack_plan(cells, form.attack_seeds) if form.attack else {}
    blocks = {(c.block, c.blocks) for c in cells} | {(c.block, 1) for c in cells if attacked.get(c.folder)}
    for block, count in sorted(blocks - {(0, span)}):
        text = eval_csv_text(classes, spc * count, start=spc * block)
        path = seed_csv(lay, block, count, span)
        setup.append(ScriptStep("generate", f"evaluation CSV {path.name}", write=path, content=text))
    cra_text = cra_csv_text(classes, form.cra_objects)
    setup.append(ScriptStep("generate", "CRA prompt CSV", write=lay.cra_prompts, content=cra_text))
    inputs = (lay.ckpt_path, lay.config_path, lay.classes)
    for prompt in data_prompts(cells, attacked, prompt_of):
        argv = ["eval-scripts/generate-data.py", "--prompt", prompt, "--model_name", "none", "--link", "none"]
        argv += ["--save_path", str(lay.data_dir), "--num_cases", str(form.train_images), "--classes", str(lay.classes)]
        setup.append(
            ScriptStep(
                "data",
                f"training images of {prompt!r}",
                argv + model_flags + sample_flags,
                resumes=True,
                reads=inputs,
                writes=(lay.data_dir / data_folder_name(prompt),),
                resources=step_resources(device),
            )
        )
    chains: Dict[str, List[ScriptStep]] = {}
    for cell in cells:
        chain = chains.setdefault(cell.run, [])
        if not chain and not cell.original:
            preset = presets[cell.method] if cell.preset is None else cell.preset
            chain.append(erase_step(lay, form, cell, preset, classes, model_flags, quiet, device))
        run = () if cell.original else (lay.models_dir / cell.run,)
        folder = lay.eval_dir / cell.folder
        for what, prompts, out in (
            ("evaluation images", seed_csv(lay, cell.block, cell.blocks, span), lay.eval_dir),
            ("CRA images", lay.cra_prompts, lay.cra_dir),
        ):
            argv = ["eval-scripts/generate-images.py", *model_argv(lay, cell), "--prompts_path", str(prompts)]
            argv += ["--save_path", str(out), "--output_name", cell.folder, "--num_samples", str(form.num_samples)]
            argv += ["--classes", str(lay.classes), *model_flags, *sample_flags]
            chain.append(
                ScriptStep(
                    "generate",
                    f"{what} of {cell.folder}",
                    argv,
                    resumes=True,
                    reads=(*inputs, prompts, *run),
                    writes=(out / cell.folder,),
                    resources=step_resources(device),
                )
            )
        for style in attacked.get(cell.folder, []):
            attack_csv = seed_csv(lay, cell.block, 1, span)
            for kind in attacks:
                argv = [ATTACK_SCRIPTS[kind], *model_argv(lay, cell), "--prompt", prompt_of[style]]
                argv += ["--data_dir", str(lay.data_dir), "--prompts_path", str(attack_csv)]
                argv += ["--classes", str(lay.classes), "--save_path", str(lay.eval_dir), "--output_name", cell.folder]
                argv += ["--num_samples", str(form.num_samples), "--classifier", str(lay.classifier)]
                argv += ["--domain", "world", *model_flags, *sample_flags]
                if form.attack_steps is not None:
                    argv += ["--attack_steps", str(form.attack_steps)]
                chain.append(
                    ScriptStep(
                        "attack",
                        f"attack on {style} in {cell.folder}" + ("" if kind == "inversion" else f" ({kind})"),
                        argv,
                        resumes=True,
                        reads=(*inputs, attack_csv, lay.data_dir, lay.classifier, *run),
                        writes=(folder / ATTACK_FOLDERS[kind], folder / "results"),
                        resources=step_resources(device),
                    )
                )
        chain.append(metrics_step(lay, cell, quiet))
    folders = tuple(lay.eval_dir / c.folder for c in cells) + tuple(lay.cra_dir / c.folder for c in cells)
    metrics = ScriptStep(
        "metrics",
        "accuracy, CRA, quality, feature distance and FID",
        call=functools.partial(run_metrics, lay, list(cells), progress=show_progress(quiet)),
        reads=(lay.prompts_path, lay.cra_prompts, lay.classifier, *folders),
        writes=tuple(f / "results" for f in folders),
        resources=STEP_RESOURCES,
    )
    table: List[ScriptStep] = []
    if not form.sweep:
        models = [
            ModelSpec(c.label, lay.eval_dir / c.folder, list(c.erased), list(c.restored), c.original) for c in cells
        ]
        table = table_steps(models, lay.table_dir, lay.classes)
    return BenchmarkPlan(setup, list(chains.values()), table, list(cells), attacked, [metrics])


def erase_step(
    lay: BenchmarkLayout,
    form: Form,
    cell: Cell,
    preset: Sequence[str],
    classes: Sequence[ConceptClass],
    model_flags: Sequence[str],
    quiet: bool,
    device: str = "cpu",
) -> ScriptStep:
    """The training script call of a cell's run (skipped once its erasure record exists)."""
    method = WORLD_METHODS[cell.method]
    prompt_of = {c.name: c.prompt for c in classes}
    out = lay.models_dir / cell.run
    argv = [method.script, *method.concept_argv([prompt_of[s] for s in cell.styles])]
    argv += [*expand_preset(preset, classes, cell.styles), *model_flags, "--devices", device, "--output_dir", str(out)]
    if method.seeded:
        argv += ["--seed", str(cell.seed)]
    if method.image_size:
        # ESD samples latents of image_size/8 pixels; the world model's latents are 16 = 64/4 pixels wide.
        argv += ["--image_size", str(IMAGE_SIZE * 8 // 4 if method.latent_image_size else IMAGE_SIZE)]
    if method.data != "none":
        argv += ["--data_dir", str(lay.data_dir)]
    if form.iterations is not None and method.seeded:
        argv += ["--iterations", str(form.iterations)]
    if quiet:
        argv += ["--quiet"]
    reads = (lay.ckpt_path, lay.config_path, *((lay.data_dir,) if method.data != "none" else ()))
    return ScriptStep(
        "erase",
        cell.run,
        argv,
        skip_if=out / "erasure.safetensors",
        reads=reads,
        writes=(out,),
        resources=step_resources(device),
    )


def model_argv(lay: BenchmarkLayout, cell: Cell) -> List[str]:
    """``--model_name`` (+ ``--models_dir``, ``--erase``) of a cell for generate-images.py / attack-inversion.py."""
    if cell.original:
        return ["--model_name", "original"]
    classes = load_class_map(lay.classes)
    argv = ["--model_name", cell.run, "--models_dir", str(lay.models_dir)]
    if cell.restored:
        argv += ["--erase", *concept_prompts(classes, cell.erased)]
    return argv


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


def accuracy_results(
    folder: Path, classifier: WorldClassifier, classifier_id: str, case_to_class: Dict[int, int], classes
) -> List[dict]:
    """Style accuracy per class of a model folder → ``results/accuracy.csv``, each image's true and predicted
    style in ``accuracy.json`` (reused when inputs are unchanged)."""
    verify_folders(folder)
    paths, labels = labelled_images(folder, case_to_class)
    if not paths:
        raise ValueError(f"{folder} holds no generated images of the evaluation CSV")
    key = fingerprint(
        {"images": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths], "net": classifier_id}
    )
    stored = stored_rows(folder, "accuracy", key, overwrite=True)
    if stored is not None:
        return stored
    predicted = classify_paths(classifier, paths)
    rows, confusion = accuracy_table(classes, labels, predicted)
    meta = {
        "classifier": classifier_id,
        "images": len(paths),
        "confusion": confusion,
        "predictions": {p.name: [label, pred] for p, label, pred in zip(paths, labels, predicted)},
        "fingerprint": key,
    }
    write_metric(folder, "accuracy", rows, ACCURACY_COLUMNS, meta)
    return rows


@dataclass
class Metrics:
    """What every model's metrics need, loaded once: the classes, the prompt CSVs, the world classifier and the
    settings of the feature distance and FID against the original (the table's columns)."""

    lay: BenchmarkLayout
    progress: bool = True

    def __post_init__(self) -> None:
        from sepce.records import file_digest

        lay = self.lay
        self.classes = load_class_map(lay.classes)
        self.rows = read_prompt_csv(lay.prompts_path, self.classes, require_class=True)
        self.cra_rows = read_prompt_csv(lay.cra_prompts, self.classes, require_class=True)
        self.case_to_class = case_classes(self.rows)
        self.classifier, _ = load_classifier(lay.classifier)
        self.classifier_id = f"world classifier {lay.classifier.name} sha256 {file_digest(lay.classifier)[:16]}"
        classifier = self.classifier
        self.compare = CompareSettings(
            lpips_factory=lambda: DistanceMetric(classifier),
            fid_factory=lambda: ClassifierFeatures(classifier),
            fid_network=FID_WORLD_CLASSIFIER_NETWORK,
            info={"classifier": self.classifier_id, "lpips_is": "world classifier feature distance"},
            batch_size=64,
            lpips_image_size=IMAGE_SIZE,
            fid_image_size=IMAGE_SIZE,
            overwrite=True,
            progress=self.progress,
        )

    def of(self, folder_name: str, original: bool) -> dict:
        """Accuracy of one model's images, its CRA predictions and quality measures (:mod:`sepce.world.measures`)
        and, for an erased model, feature distance and FID against the original; each stored in the folder's
        ``results/`` and reused while its inputs are unchanged."""
        lay = self.lay
        folder, original_folder = lay.eval_dir / folder_name, lay.eval_dir / ORIGINAL_FOLDER
        out = {
            "accuracy": accuracy_results(folder, self.classifier, self.classifier_id, self.case_to_class, self.classes),
            "cra": cra_results(lay.cra_dir / folder_name, self.cra_rows, self.classifier, self.classifier_id),
            "quality": quality_results(folder, original_folder, self.rows, self.classifier, self.classifier_id),
        }
        if not original:
            device = torch.device("cpu")
            out.update(compare_folders(original_folder, folder, self.case_to_class, self.classes, device, self.compare))
        return out


def run_metrics(lay: BenchmarkLayout, cells: Sequence[Cell], progress: bool = True) -> Dict[str, dict]:
    """:meth:`Metrics.of` every cell's model (a model whose metrics step ran already is read back);
    ``progress``: bars while feature distance and FID are computed (off with ``--quiet`` or without a
    terminal)."""
    metrics = Metrics(lay, progress)
    return {cell.folder: metrics.of(cell.folder, cell.original) for cell in cells}


def metrics_step(lay: BenchmarkLayout, cell: Cell, quiet: bool) -> ScriptStep:
    """One model's metrics as a step of its own (``python -m sepce.world.metrics``), so they run beside the other
    models' generation instead of all at the end; it waits for the model's images and attacks and for the
    original's images."""
    folder, cra = lay.eval_dir / cell.folder, lay.cra_dir / cell.folder
    argv = ["-m", "sepce.world.metrics", "--work_dir", str(lay.work), "--ckpt_path", str(lay.ckpt_path)]
    argv += ["--config_path", str(lay.config_path), "--classifier", str(lay.classifier), "--folder", cell.folder]
    argv += (["--original"] if cell.original else []) + (["--quiet"] if quiet else [])
    original = lay.eval_dir / ORIGINAL_FOLDER
    return ScriptStep(
        "metrics",
        f"metrics of {cell.folder}",
        argv,
        reads=(lay.prompts_path, lay.cra_prompts, lay.classifier, folder, cra, original, lay.cra_dir / ORIGINAL_FOLDER),
        writes=(folder / "results", cra / "results"),
        resources=STEP_RESOURCES,
    )
