"""The paper's protocol on the concept-world model: erase styles with every method, attack, measure, report.

Stages (``eval-scripts/world-benchmark.py``; each a repository script as a user would run it, except the metrics,
which this module computes in-process with the world classifier):

1. ``data`` -- ``generate-data.py``: training images from the ORIGINAL world model (``assets/world/``) of every
   style that is erased or attacked, and of the blank anchor ``""`` when the original Ablating Concepts runs,
   under ``<work>/data/<prompt>/``.
2. ``erase`` -- every method of :data:`WORLD_METHODS` with its world preset (:data:`PRESETS`), one run folder per
   (method, erased styles, training seed) under ``<work>/models/`` (:func:`sepce.paths.run_name`).
3. ``generate`` -- ``generate-images.py`` from the evaluation CSV (the first ``seeds_per_class`` seeds of each
   style in ``data/world/evaluate.csv``, prompt ``in the style of <style>``) for the original (folder ``default``,
   generated once and shared), every erased model and SepCE's subsets (erase the first i styles, restore the rest).
4. ``attack`` -- ``attack-inversion.py``: the concept-inversion attack (docs/method.md) on every erased style of
   every model, and on the original for every such style (the ceiling), one preset for all
   (:data:`sepce.attack.PRESETS` ``world``); results in each model folder's ``results/attack.*``.
5. ``metrics`` -- per model folder, in ``results/`` (:mod:`sepce.evaluation.results`): ``accuracy.csv`` (the
   world classifier's style accuracy per class, each image's prediction in ``accuracy.json``), and for erased models
   ``lpips.csv`` and ``fid.csv`` against ``default`` through :func:`sepce.evaluation.compare.compare_folders`. The
   "LPIPS" column holds the world classifier's feature distance (the LPIPS construction on features trained for
   this world); FID uses the classifier's pooled features ("FID (world classifier features)") -- LPIPS and
   Inception with random weights would be meaningless, and no pretrained weights can be downloaded.
6. ``table`` -- single-erasure forms: ``make-table.py`` (``table.md``, ``table.csv``, ``table.png``) and
   ``report.md`` (:func:`report_markdown`): accuracies and drops with 95 % intervals and the verdicts read off them
   (:mod:`sepce.world.analysis`), the attack, the SepCE restoration check, a contact sheet, presets, run times.
   The ``sweep`` form writes ``sweep.md`` instead (:func:`sweep_markdown`): every method pooled over its erasures.

Every stage resumes (finished runs, images, attacks and unchanged metrics are skipped). Forms (:data:`FORMS`):
``full`` (one erasure per method, the documented table), ``sweep`` (every method erases every reported style with
two training seeds; SepCE two disjoint triples), ``short`` (a few minutes: the README quick start), ``tune``
(preset selection on the held-out styles) and ``smoke`` (CI: seconds, numbers meaningless).

Presets were chosen on the held-out styles (:data:`HELD_OUT`) only, by the rule in docs/world-benchmark.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from sepce.classes import ConceptClass, classes_by_names, load_class_map
from sepce.evaluation.artist_classifier import accuracy_table
from sepce.evaluation.common import fingerprint
from sepce.evaluation.compare import compare_folders
from sepce.evaluation.fid import FID_WORLD_CLASSIFIER_NETWORK
from sepce.evaluation.images import index_images, parse_image_name
from sepce.evaluation.results import stored_rows, write_metric
from sepce.evaluation.table import ModelSpec, spec_of
from sepce.paths import REPO_ROOT, run_name
from sepce.prompts import case_classes, read_prompt_csv
from sepce.reproduce import ORIGINAL_FOLDER, ScriptStep, tiny_inputs
from sepce.world.concept_classifier import (
    IMAGE_SIZE,
    SHIPPED_CLASSIFIER,
    WorldClassifier,
    classify_paths,
    feature_distance,
    load_classifier,
)
from sepce.world.model import SHIPPED_CKPT, SHIPPED_CONFIG

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
SWEEP_SEEDS = (0, 1)
#: Attack kinds the attack stage can run on every attacked style (--attacks): concept inversion (a new word) and
#: the adversarial-prompt attack (real tokens prepended, sepce.adversarial); each writes its own results file.
ATTACK_SCRIPTS = {
    "inversion": "eval-scripts/attack-inversion.py",
    "adversarial": "eval-scripts/attack-adversarial-prompt.py",
}
ANCHOR_PROMPT = ""  # the world's generic caption: Ablating Concepts' anchor (docs/method.md)


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


FORMS: Dict[str, Form] = {
    "full": Form("full", 25, 1, 128, "ddim", 50, 7.5, attack=True),
    "sweep": Form("sweep", 16, 1, 128, "ddim", 50, 7.5, attack=True, sweep=True),
    "short": Form("short", 8, 1, 64, "ddim", 25, 7.5),
    "tune": Form("tune", 16, 1, 64, "ddim", 50, 7.5),
    "smoke": Form("smoke", 1, 2, 2, "ddim", 4, 7.5, iterations=2, attack=True, attack_steps=2),
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
#: ``{others}`` expands to the ';'-joined prompts of every style not erased.
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
    method: WorldMethod, styles: Sequence[str], seed: int, preset: Optional[tuple] = None, tag: str = ""
) -> List[Cell]:
    """The evaluated models of one run: the run itself, and for several styles (SepCE) the subsets that erase
    the first i styles and restore the rest (i = n-1..1)."""
    styles = tuple(styles)
    name = method.label + (f" [{tag}]" if tag else "")
    cells = [Cell(name, method.key, styles, seed, styles, (), preset, tag)]
    if method.key == "SepCE":
        for i in range(len(styles) - 1, 0, -1):
            restored = styles[i:]
            label = f"{name} (restore {'+'.join(restored)})"
            cells.append(Cell(label, method.key, styles, seed, styles[:i], restored, preset, tag))
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
    methods once), SepCE each triple with each seed (and its restore subsets); the original once."""
    cells = [Cell("ORI", "ORI")]
    for key in methods:
        method = WORLD_METHODS[key]
        groups = [tuple(t) for t in triples] if key == "SepCE" else [(s,) for s in styles]
        for group in groups:
            for seed in seeds if method.seeded else seeds[:1]:
                cells += method_cells(method, group, seed)
    return cells


def eval_csv_text(classes: Sequence[ConceptClass], seeds_per_class: int, source: Path = EVAL_CSV) -> str:
    """The first ``seeds_per_class`` rows of each style in ``source`` (a prompt CSV with a class column)."""
    _, rows = tiny_inputs(classes, source, [c.name for c in classes], seeds_per_class)
    return rows


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class BenchmarkPlan:
    """The script steps of a benchmark and the models they produce. ``setup`` (the evaluation CSV, training
    images) runs first; each chain (one training run: erase, then generate and attack its models; or the
    original's images and attacks) depends only on the setup, so chains may run side by side (``--jobs``);
    ``table`` runs last."""

    setup: List[ScriptStep]
    chains: List[List[ScriptStep]]
    table: List[ScriptStep]
    cells: List[Cell]
    attacked: Dict[str, List[str]] = field(default_factory=dict)  # images folder -> styles attacked there

    @property
    def steps(self) -> List[ScriptStep]:
        return [*self.setup, *(step for chain in self.chains for step in chain), *self.table]


def expand_preset(flags: Sequence[str], classes: Sequence[ConceptClass], erased: Sequence[str]) -> List[str]:
    """A preset's flags with ``{others}`` replaced by the ';'-joined prompts of the styles not erased."""
    others = ";".join(c.prompt for c in classes if c.name not in erased)
    return [f.replace("{others}", others) for f in flags]


def attack_plan(cells: Sequence[Cell]) -> Dict[str, List[str]]:
    """Styles attacked in each images folder: every erased style of every erased model, and all of them on the
    original (the ceiling)."""
    attacked: Dict[str, List[str]] = {}
    for cell in cells:
        if not cell.original:
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
    attacks: Sequence[str] = ("inversion",),
) -> BenchmarkPlan:
    """Every script step (stages data, erase, generate, attack and the table files) for ``cells``; ``attacks``:
    the kinds of :data:`ATTACK_SCRIPTS` the attack stage runs."""
    classes = load_class_map(lay.classes)
    presets = {**PRESETS, **(presets or {})}
    prompt_of = {c.name: c.prompt for c in classes}
    model_flags = ["--ckpt_path", str(lay.ckpt_path), "--config_path", str(lay.config_path)]
    sample_flags = ["--sampler", form.sampler, "--ddim_steps", str(form.steps)]
    sample_flags += ["--guidance_scale", str(form.guidance), "--image_size", str(IMAGE_SIZE), "--device", "cpu"]
    sample_flags += ["--batch_size", str(batch_size)] + (["--quiet"] if quiet else [])
    content = eval_csv_text(classes, form.seeds_per_class)
    setup = [ScriptStep("generate", "evaluation CSV", write=lay.prompts_path, content=content)]
    attacked = attack_plan(cells) if form.attack else {}
    for prompt in data_prompts(cells, attacked, prompt_of):
        argv = ["eval-scripts/generate-data.py", "--prompt", prompt, "--model_name", "none", "--link", "none"]
        argv += ["--save_path", str(lay.data_dir), "--num_cases", str(form.train_images), "--classes", str(lay.classes)]
        setup.append(
            ScriptStep("data", f"training images of {prompt!r}", argv + model_flags + sample_flags, resumes=True)
        )
    chains: Dict[str, List[ScriptStep]] = {}
    for cell in cells:
        chain = chains.setdefault(cell.run, [])
        if not chain and not cell.original:
            preset = presets[cell.method] if cell.preset is None else cell.preset
            chain.append(erase_step(lay, form, cell, preset, classes, model_flags, quiet))
        argv = ["eval-scripts/generate-images.py", *model_argv(lay, cell), "--prompts_path", str(lay.prompts_path)]
        argv += ["--save_path", str(lay.eval_dir), "--output_name", cell.folder, "--num_samples", str(form.num_samples)]
        argv += ["--classes", str(lay.classes), *model_flags, *sample_flags]
        chain.append(ScriptStep("generate", f"evaluation images of {cell.folder}", argv, resumes=True))
        for style in attacked.get(cell.folder, []):
            for kind in attacks:
                argv = [ATTACK_SCRIPTS[kind], *model_argv(lay, cell), "--prompt", prompt_of[style]]
                argv += ["--data_dir", str(lay.data_dir), "--prompts_path", str(lay.prompts_path)]
                argv += ["--classes", str(lay.classes), "--save_path", str(lay.eval_dir), "--output_name", cell.folder]
                argv += ["--num_samples", str(form.num_samples), "--classifier", str(lay.classifier)]
                argv += ["--domain", "world", *model_flags, *sample_flags]
                if form.attack_steps is not None:
                    argv += ["--attack_steps", str(form.attack_steps)]
                name = f"attack on {style} in {cell.folder}" + ("" if kind == "inversion" else f" ({kind})")
                chain.append(ScriptStep("attack", name, argv, resumes=True))
    table: List[ScriptStep] = []
    if not form.sweep:
        spec_path = lay.table_dir / "spec.json"
        spec = json.dumps(table_spec(cells, lay.eval_dir, spec_path), indent=2) + "\n"
        table.append(ScriptStep("table", "table spec", write=spec_path, content=spec))
        argv = ["eval-scripts/make-table.py", "--spec", str(spec_path), "--output_dir", str(lay.table_dir)]
        table.append(ScriptStep("table", "table", argv + ["--overwrite", "--classes", str(lay.classes)]))
    return BenchmarkPlan(setup, list(chains.values()), table, list(cells), attacked)


def erase_step(
    lay: BenchmarkLayout,
    form: Form,
    cell: Cell,
    preset: Sequence[str],
    classes: Sequence[ConceptClass],
    model_flags: Sequence[str],
    quiet: bool,
) -> ScriptStep:
    """The training script call of a cell's run (skipped once its erasure record exists)."""
    method = WORLD_METHODS[cell.method]
    prompt_of = {c.name: c.prompt for c in classes}
    out = lay.models_dir / cell.run
    argv = [method.script, *method.concept_argv([prompt_of[s] for s in cell.styles])]
    argv += [*expand_preset(preset, classes, cell.styles), *model_flags, "--devices", "cpu", "--output_dir", str(out)]
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
    return ScriptStep("erase", cell.run, argv, skip_if=out / "erasure.safetensors")


def model_argv(lay: BenchmarkLayout, cell: Cell) -> List[str]:
    """``--model_name`` (+ ``--models_dir``, ``--erase``) of a cell for generate-images.py / attack-inversion.py."""
    if cell.original:
        return ["--model_name", "original"]
    classes = load_class_map(lay.classes)
    argv = ["--model_name", cell.run, "--models_dir", str(lay.models_dir)]
    if cell.restored:
        argv += ["--erase", *concept_prompts(classes, cell.erased)]
    return argv


def table_spec(cells: Sequence[Cell], eval_dir: Path, spec_path: Path) -> dict:
    """The make-table.py spec of the cells (:func:`sepce.evaluation.table.spec_of`; concepts by style name)."""
    models = [ModelSpec(c.label, eval_dir / c.folder, list(c.erased), list(c.restored), c.original) for c in cells]
    return spec_of(models, spec_path)


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


def accuracy_results(
    folder: Path, classifier: WorldClassifier, classifier_id: str, case_to_class: Dict[int, int], classes
) -> List[dict]:
    """Style accuracy per class of a model folder → ``results/accuracy.csv``, each image's true and predicted
    style in ``accuracy.json`` (reused when inputs are unchanged)."""
    paths, labels = folder_images(folder, case_to_class)
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


def run_metrics(lay: BenchmarkLayout, cells: Sequence[Cell]) -> Dict[str, dict]:
    """Accuracy of every model, feature distance and FID of every erased model against the original."""
    from sepce.records import file_digest

    classes = load_class_map(lay.classes)
    case_to_class = case_classes(read_prompt_csv(lay.prompts_path, classes, require_class=True))
    classifier, _ = load_classifier(lay.classifier)
    classifier_id = f"world classifier {lay.classifier.name} sha256 {file_digest(lay.classifier)[:16]}"
    original = lay.eval_dir / ORIGINAL_FOLDER
    out = {}
    for cell in cells:
        folder = lay.eval_dir / cell.folder
        out[cell.folder] = {"accuracy": accuracy_results(folder, classifier, classifier_id, case_to_class, classes)}
        if cell.original:
            continue
        out[cell.folder].update(
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
