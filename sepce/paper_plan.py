"""The paper's plan: its main experiment as steps for the pipeline runner (:mod:`sepce.pipeline`;
``eval-scripts/reproduce.py``), each step with what it reads and writes and its resources on a GPU machine.

Stages, in order (each a call of a repository script, exactly as a user would type it):

1. ``model`` (``--tiny`` only): ``python -m sepce.tiny`` writes the tiny base model (the wide-context variant
   ``configs/tiny/v1-tiny-wide.yaml``, since SepCE's null spaces need a text context wider than 3 × 77 tokens).
2. ``data``: ``generate-data.py`` for every class of the class map → ``<data_dir>/<prompt>/`` (erasure training
   images) and ``<data_dir>/train/<index>/`` (classifier images).
3. ``classifier``: ``artist-cls-train.py``.
4. ``erase``: CiE, SepCE (several concepts at once), ESD, FMN and Ablating Concepts with the seed README's
   hyperparameters; one run folder each under ``<models_dir>``.
5. ``generate``: ``generate-images.py`` from the evaluation CSV for the original model (folder ``default``), each
   erased model and each SepCE subset (``--erase``: erase the first i concepts, the rest are *restored*).
6. ``sort``: ``move_image.py``; 7. ``classify``: ``artist-cls-test.py``; 8. ``metrics``: ``lpips_eval.py``
   (LPIPS and FID of every erased model against ``default``); 9. ``table``: ``make-table.py`` with a spec naming
   which concepts each row erased or restored.

Every stage is resumable: finished training runs and the classifier are skipped (their output exists), the
generation scripts skip existing images, and the metric scripts reuse results of unchanged inputs. ``--tiny``
runs the same stages on the tiny random model with few images, steps and iterations, random LPIPS/FID/ResNet
backbones, and a class map reduced to the concepts involved plus the blank class. The table stage
(:func:`table_steps`) and the original's folder name are shared with the concept-world benchmark.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sepce.classes import ConceptClass, class_by_name, classes_by_names, load_class_map
from sepce.data_generation import data_folder_name
from sepce.evaluation.table import ModelSpec, spec_of
from sepce.generation import file_slug
from sepce.paths import ARTIST_CLASSIFIER, near, run_name
from sepce.pipeline.steps import Resources, ScriptStep
from sepce.prompt_csv import read_prompt_csv
from sepce.tiny import TINY_WIDE_CONFIG

STAGES = ("model", "data", "classifier", "erase", "generate", "sort", "classify", "metrics", "table")
ORIGINAL_FOLDER = "default"


@dataclass(frozen=True)
class Method:
    """An erasure method: its training script, its seed README flags and the tiny-run overrides."""

    name: str
    script: str
    flags: tuple  # seed README hyperparameters
    tiny_flags: tuple  # overrides for --tiny (larger steps so a few iterations change the tiny model visibly)
    uses_data: bool = True  # reads <data_dir>/<prompt>/
    multi: bool = False  # SepCE: several concepts via --prompts
    run_method: Optional[str] = None  # the method part of the script's run names (None: ``name``)
    run_suffix: Optional[str] = None  # the suffix the script adds to its run names (ESD: its --train_method)
    label: Optional[str] = None  # the table row (None: ``name``); FMN/AC say they are the authors' variants

    def run_name(self, concepts: Sequence[str]) -> str:
        """The run folder the training script writes for ``concepts`` when no ``--output_dir`` is given
        (:func:`sepce.paths.run_name`): ``CiE-VanGogh``, ``SepCE-VanGogh+Picasso+Cezanne``, ``ESD-VanGogh-xattn``."""
        return run_name(self.run_method or self.name, concepts, self.run_suffix)


METHODS: Dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "CiE", "train-scripts/CiE.py", ("--threshold", "0", "--lr", "1e-6", "--reg_beta", "3e-5"), ("--lr", "1e-2")
        ),
        Method(
            "SepCE",
            "train-scripts/SepCE.py",
            ("--lr", "1e-2", "--scale_factor", "1e-4", "--reg_beta", "3e-5"),
            ("--lr", "1", "--scale_factor", "1"),
            multi=True,
        ),
        Method(
            "ESD",
            "train-scripts/Esd.py",
            ("--train_method", "xattn", "--iterations", "1000"),
            ("--lr", "1e-2"),
            uses_data=False,
            run_suffix="xattn",
        ),
        Method(
            "FMN",
            "train-scripts/FMN.py",
            ("--lr", "1e-5", "--iter_break", "10"),
            ("--lr", "1e-2"),
            label="FMN (authors' variant)",
        ),
        Method(
            "AC",
            "train-scripts/Abconcept.py",
            ("--lr", "1e-5", "--iter_break", "50"),
            ("--lr", "1e-2"),
            run_method="Abconcept",
            label="AC (authors' variant)",
        ),
    )
}


@dataclass
class Row:
    """A table row: an output folder of generate-images.py and what the model erased / restored."""

    name: str
    folder: str
    model_name: str
    erase: Optional[List[str]] = None
    erased: List[str] = field(default_factory=list)
    restored: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReproductionSettings:
    """The checked settings of one reproduction (``eval-scripts/reproduce.py`` builds them from its flags)."""

    tiny: bool
    stages: tuple
    methods: tuple
    concept: str
    sepce_concepts: tuple
    classes: Path  # the class map the run starts from (--tiny writes a reduced copy into the layout)
    prompts_path: Path  # the evaluation CSV the run starts from (likewise)
    num_cases: int
    num_samples: int
    cases_per_class: Optional[int]
    ddim_steps: int
    image_size: int
    iterations: Optional[int]
    batch_size: int
    precision: str
    device: str
    devices: str
    nproc_per_node: int
    quiet: bool = False
    fid_weights: Optional[Path] = None  # lpips_eval.py --fid_weights (None: the torch hub cache)
    lpips_backbone_weights: Optional[Path] = None  # lpips_eval.py --backbone_weights (None: torchvision's cache)


@dataclass(frozen=True)
class ReproductionLayout:
    """Where a reproduction reads and writes everything."""

    data_dir: Path
    models_dir: Path
    eval_dir: Path
    table_dir: Path
    classifier: Path
    classes: Path
    prompts_path: Path
    ckpt_path: Path
    config_path: Path
    run_dir: Path  # the runner's books (timings.json, invocations.json) and job folders (jobs/)


def reproduction_layout(
    tiny: bool,
    work_dir: Optional[Path],
    data_dir: Optional[Path],
    models_dir: Optional[Path],
    classifier: Optional[Path],
    classes: Path,
    prompts_path: Path,
    ckpt_path: Path,
    config_path: Path,
) -> ReproductionLayout:
    """Paths for a full run (under ``work_dir``, default the current folder, unless given one by one) or a
    ``--tiny`` run (everything under ``work_dir``, default ``outputs/reproduce-tiny``)."""
    if tiny:
        work = Path(work_dir or "outputs/reproduce-tiny")
        return ReproductionLayout(
            work / "data",
            work / "models",
            work / "evaluation_folder",
            work / "table",
            work / "classifier" / "resnet18.pt",
            work / "classes.csv",
            work / "evaluate.csv",
            work / "tiny" / "model.ckpt",
            work / "tiny" / "config.yaml",
            work,
        )
    work = Path(work_dir or ".")
    return ReproductionLayout(
        Path(data_dir or work / "data"),
        Path(models_dir or work / "models"),
        work / "evaluation_folder",
        work / "outputs" / "table",
        Path(classifier or work / ARTIST_CLASSIFIER),
        near(classes),
        near(prompts_path),
        near(ckpt_path),
        near(config_path),
        work / "outputs" / "reproduce",
    )


def tiny_inputs(
    classes: Sequence[ConceptClass], prompts_path: Path, concepts: Sequence[str], cases_per_class: int
) -> tuple:
    """A class map of ``concepts`` + the blank class (re-indexed 0..K-1) and the first ``cases_per_class`` rows of
    each of those classes from the evaluation CSV (class indices remapped). Returns the two CSV texts."""
    chosen = list(dict.fromkeys(class_by_name(list(classes), c) for c in concepts))
    chosen += [c for c in classes if not c.prompt and c not in chosen]
    new_index = {c.index: i for i, c in enumerate(chosen)}
    map_text = io.StringIO()
    writer = csv.writer(map_text, lineterminator="\n")
    writer.writerow(["index", "name", "prompt"])
    for c in chosen:
        writer.writerow([new_index[c.index], c.name, c.prompt])
    rows_text = io.StringIO()
    writer = csv.writer(rows_text, lineterminator="\n")
    writer.writerow(["case_number", "prompt", "evaluation_seed", "class"])
    taken: Dict[int, int] = {}
    for row in read_prompt_csv(prompts_path, list(classes), require_class=True):
        if row.class_index in new_index and taken.get(row.class_index, 0) < cases_per_class:
            taken[row.class_index] = taken.get(row.class_index, 0) + 1
            writer.writerow([row.case_number, row.prompt, row.evaluation_seed, new_index[row.class_index]])
    return map_text.getvalue(), rows_text.getvalue()


def model_rows(methods: Sequence[str], concept: str, sepce_concepts: Sequence[str]) -> List[Row]:
    """Table rows: the original, one per single-concept method, and the SepCE subsets (erase the first i concepts,
    the others restored, for i = n..1). Evaluation folders are named with :func:`sepce.generation.file_slug`."""
    rows = [Row("ORI", ORIGINAL_FOLDER, "SD-v1-4")]
    for name in methods:
        method = METHODS[name]
        if not method.multi:
            rows.append(Row(method.label or name, name.lower(), method.run_name([concept]), erased=[concept]))
            continue
        for i in range(len(sepce_concepts), 0, -1):
            erased, restored = list(sepce_concepts[:i]), list(sepce_concepts[i:])
            label = name if not restored else f"{name} (restore {'+'.join(restored)})"
            folder = name.lower() if not restored else f"{name.lower()}-restore-{'-'.join(map(file_slug, restored))}"
            rows.append(Row(label, folder, method.run_name(sepce_concepts), erased, erased, restored))
    return rows


# ------------------------------------------------------------------------------------------------ stages
def _model_flags(lay: ReproductionLayout) -> List[str]:
    return ["--ckpt_path", str(lay.ckpt_path), "--config_path", str(lay.config_path)]


def _class_flags(lay: ReproductionLayout) -> List[str]:
    return ["--classes", str(lay.classes)]


def _quiet_flags(s: ReproductionSettings) -> List[str]:
    return ["--quiet"] if s.quiet else []


def _sample_flags(s: ReproductionSettings) -> List[str]:
    flags = ["--ddim_steps", str(s.ddim_steps), "--image_size", str(s.image_size), "--batch_size", str(s.batch_size)]
    flags += ["--device", s.device] + (["--precision", s.precision] if s.precision != "fp32" else [])
    return flags + _quiet_flags(s)


#: Time limit of one step of the full-size experiment on one GPU (minutes; generous: README "Running on a cluster").
STAGE_MINUTES = {"data": 120, "classifier": 60, "erase": 240, "generate": 240, "metrics": 60, "classify": 60}


def _resources(s: ReproductionSettings, stage: str, gpus: int = 1) -> Resources:
    """A step's resources: ``gpus`` GPUs (none when the run is on the CPU), 8 cores and 32 GB beside a GPU, the
    stage's time limit (:data:`STAGE_MINUTES`; 10 min for steps without GPU work and for ``--tiny``)."""
    if s.device == "cpu" or gpus == 0:
        return Resources(0, 2, 8 if s.tiny else 16, 30 if s.tiny else STAGE_MINUTES.get(stage, 10) * 4)
    return Resources(gpus, 8, 32, 30 if s.tiny else STAGE_MINUTES.get(stage, 10))


def _training_gpus(devices: str) -> int:
    """GPUs a training script uses with ``--devices`` (``0,1``: two)."""
    return 0 if devices == "cpu" else len([d for d in devices.split(",") if d.strip()])


def tiny_model_step(s: ReproductionSettings, lay: ReproductionLayout) -> ScriptStep:
    """``python -m sepce.tiny``: the tiny base model of a ``--tiny`` run (skipped when it exists)."""
    argv = ["-m", "sepce.tiny", "--config", str(near(TINY_WIDE_CONFIG)), "--out", str(lay.ckpt_path.parent)]
    return ScriptStep(
        "model",
        "tiny base model",
        [*argv, "--if_missing"],
        writes=(lay.ckpt_path.parent,),
        resources=_resources(s, "model", 0),
    )


def model_stage(s: ReproductionSettings, lay: ReproductionLayout, classes: List[ConceptClass]) -> tuple:
    """Stage 1 (``--tiny`` only): the tiny base model, the reduced class map and evaluation CSV. Returns the
    steps and the class map the later stages use."""
    if not s.tiny:
        return [], classes
    class_text, rows_text = tiny_inputs(classes, s.prompts_path, [s.concept, *s.sepce_concepts], s.cases_per_class)
    steps = [
        tiny_model_step(s, lay),
        ScriptStep("model", "tiny class map", write=lay.classes, content=class_text),
        ScriptStep("model", "tiny evaluation CSV", write=lay.prompts_path, content=rows_text),
    ]
    tiny_classes = [
        ConceptClass(int(r["index"]), r["name"], r["prompt"]) for r in csv.DictReader(io.StringIO(class_text))
    ]
    return steps, tiny_classes


def _model_inputs(lay: ReproductionLayout) -> tuple:
    return lay.ckpt_path, lay.config_path, lay.classes


def data_stage(s: ReproductionSettings, lay: ReproductionLayout, classes: Sequence[ConceptClass]) -> List[ScriptStep]:
    """Stage 2: ``generate-data.py`` for every class (erasure training images and classifier class folders)."""
    steps = []
    for c in classes:
        argv = ["eval-scripts/generate-data.py", "--prompt", c.prompt, "--model_name", str(c.index)]
        argv += ["--save_path", str(lay.data_dir), "--num_cases", str(s.num_cases), "--num_samples", "1"]
        argv += [*_class_flags(lay), *_model_flags(lay), *_sample_flags(s)]
        writes = (lay.data_dir / data_folder_name(c.prompt), lay.data_dir / "train" / str(c.index))
        steps.append(
            ScriptStep(
                "data",
                f"training images of {c.name}",
                argv,
                nproc=s.nproc_per_node,
                resumes=True,
                reads=_model_inputs(lay),
                writes=writes,
                resources=_resources(s, "data", s.nproc_per_node),
            )
        )
    return steps


def classifier_stage(s: ReproductionSettings, lay: ReproductionLayout) -> List[ScriptStep]:
    """Stage 3: ``artist-cls-train.py`` (skipped when the classifier exists)."""
    argv = ["train-scripts/artist-cls-train.py", "--train_dir", str(lay.data_dir / "train")]
    argv += ["--eval_dir", str(lay.data_dir / "eval"), "--output", str(lay.classifier), "--device", s.device]
    argv += [*_class_flags(lay), *_quiet_flags(s)]
    if s.tiny:
        argv += ["--no_pretrained", "--epochs", "3", "--image_size", str(s.image_size), "--batch_size", "8"]
    return [
        ScriptStep(
            "classifier",
            "style classifier",
            argv,
            skip_if=lay.classifier,
            reads=(lay.data_dir / "train", lay.data_dir / "eval", lay.classes),
            writes=(lay.classifier.parent,),
            resources=_resources(s, "classifier"),
        )
    ]


def erase_stage(s: ReproductionSettings, lay: ReproductionLayout) -> List[ScriptStep]:
    """Stage 4: every method's training script, one run folder each (named as the script names it)."""
    steps = []
    for name in s.methods:
        method = METHODS[name]
        concepts = list(s.sepce_concepts) if method.multi else [s.concept]
        out = lay.models_dir / method.run_name(concepts)
        argv = [method.script, *(["--prompts", *concepts] if method.multi else ["--prompt", s.concept])]
        argv += [*method.flags, *_model_flags(lay), "--devices", s.devices, "--output_dir", str(out)]
        if method.uses_data:
            argv += ["--data_dir", str(lay.data_dir)]
        if s.tiny:
            argv += [*method.tiny_flags, "--image_size", str(s.image_size)]
        if s.iterations is not None:
            argv += ["--iterations", str(s.iterations)]
        steps.append(
            ScriptStep(
                "erase",
                f"{name} on {', '.join(concepts)}",
                argv,
                skip_if=out / "erasure.safetensors",
                reads=(*_model_inputs(lay), *((lay.data_dir,) if method.uses_data else ())),
                writes=(out,),
                resources=_resources(s, "erase", _training_gpus(s.devices)),
            )
        )
    return steps


def generate_stage(s: ReproductionSettings, lay: ReproductionLayout, rows: Sequence[Row]) -> List[ScriptStep]:
    """Stage 5: ``generate-images.py`` from the evaluation CSV for every table row."""
    steps = []
    for row in rows:
        argv = ["eval-scripts/generate-images.py", "--model_name", row.model_name]
        argv += ["--prompts_path", str(lay.prompts_path), "--save_path", str(lay.eval_dir), "--output_name", row.folder]
        argv += ["--num_samples", str(s.num_samples), "--models_dir", str(lay.models_dir)]
        argv += [*_class_flags(lay), *_model_flags(lay), *_sample_flags(s)]
        if row.erase is not None:
            argv += ["--erase", *row.erase]
        run = () if row.folder == ORIGINAL_FOLDER else (lay.models_dir / row.model_name,)
        steps.append(
            ScriptStep(
                "generate",
                f"evaluation images of {row.name}",
                argv,
                nproc=s.nproc_per_node,
                resumes=True,
                reads=(*_model_inputs(lay), lay.prompts_path, *run),
                writes=(lay.eval_dir / row.folder,),
                resources=_resources(s, "generate", s.nproc_per_node),
            )
        )
    return steps


def sort_stage(s: ReproductionSettings, lay: ReproductionLayout, rows: Sequence[Row]) -> List[ScriptStep]:
    """Stage 6: ``move_image.py`` sorts every row's images into class folders."""
    argv = ["train-scripts/move_image.py", "--path", str(lay.eval_dir), "--folders", *[r.folder for r in rows]]
    argv += ["--prompts_path", str(lay.prompts_path), *_class_flags(lay)]
    folders = tuple(lay.eval_dir / r.folder for r in rows)
    resources = _resources(s, "sort", 0)
    return [ScriptStep("sort", "sort into class folders", argv, reads=folders, writes=folders, resources=resources)]


def classify_stage(s: ReproductionSettings, lay: ReproductionLayout, rows: Sequence[Row]) -> List[ScriptStep]:
    """Stage 7: ``artist-cls-test.py`` (accuracy per class of every model folder)."""
    argv = ["train-scripts/artist-cls-test.py", "--path", str(lay.eval_dir), "--classifier", str(lay.classifier)]
    argv += ["--device", s.device, "--overwrite", *_class_flags(lay), *_quiet_flags(s)]
    reads = (lay.classifier, *(lay.eval_dir / r.folder for r in rows))
    writes = tuple(lay.eval_dir / r.folder / "results" for r in rows)
    resources = _resources(s, "classify")
    return [ScriptStep("classify", "classifier accuracy", argv, reads=reads, writes=writes, resources=resources)]


def metrics_stage(s: ReproductionSettings, lay: ReproductionLayout, rows: Sequence[Row]) -> List[ScriptStep]:
    """Stage 8: ``lpips_eval.py`` (LPIPS and FID) of every erased row against the original."""
    steps = []
    for row in rows[1:]:
        argv = ["eval-scripts/lpips_eval.py", "--original_path", str(lay.eval_dir / ORIGINAL_FOLDER)]
        argv += ["--edited_path", str(lay.eval_dir / row.folder), "--prompts_path", str(lay.prompts_path)]
        argv += ["--device", s.device, "--overwrite", *_class_flags(lay), *_quiet_flags(s)]
        for flag, weights in (("--fid_weights", s.fid_weights), ("--backbone_weights", s.lpips_backbone_weights)):
            argv += [flag, str(weights)] if weights is not None else []
        if s.tiny:
            argv += ["--no_pretrained", "--fid_size", "75", "--batch_size", "16"]
        steps.append(
            ScriptStep(
                "metrics",
                f"LPIPS and FID of {row.name}",
                argv,
                reads=(lay.eval_dir / ORIGINAL_FOLDER, lay.eval_dir / row.folder, lay.prompts_path),
                writes=(lay.eval_dir / row.folder / "results",),
                resources=_resources(s, "metrics"),
            )
        )
    return steps


def table_steps(models: Sequence[ModelSpec], table_dir: Path, classes: Path) -> List[ScriptStep]:
    """The last stage of both pipelines: the table spec (which concepts each model erased or restored;
    :func:`sepce.evaluation.table.spec_of`) and ``make-table.py`` over it, in ``table_dir``."""
    spec_path = table_dir / "spec.json"
    spec = json.dumps(spec_of(list(models), spec_path), indent=2) + "\n"
    argv = ["eval-scripts/make-table.py", "--spec", str(spec_path), "--output_dir", str(table_dir)]
    reads = (spec_path, *(m.path for m in models))
    return [
        ScriptStep("table", "table spec", write=spec_path, content=spec),
        ScriptStep(
            "table", "table", [*argv, "--overwrite", "--classes", str(classes)], reads=reads, writes=(table_dir,)
        ),
    ]


def table_stage(lay: ReproductionLayout, rows: Sequence[Row]) -> List[ScriptStep]:
    """Stage 9: the table of the rows (the first is the original)."""
    models = [
        ModelSpec(r.name, lay.eval_dir / r.folder, r.erased, r.restored, original=i == 0) for i, r in enumerate(rows)
    ]
    return table_steps(models, lay.table_dir, lay.classes)


def plan_reproduction(s: ReproductionSettings, lay: ReproductionLayout) -> List[ScriptStep]:
    """Every step of the experiment, stage by stage, keeping those of ``s.stages`` (nothing is run or written).
    Concepts must be classes of the class map (the table names concepts by class)."""
    classes = load_class_map(s.classes)
    classes_by_names(classes, [s.concept, *s.sepce_concepts], "--concept/--sepce_concepts")
    model_steps, classes = model_stage(s, lay, classes)
    rows = model_rows(s.methods, s.concept, s.sepce_concepts)
    steps = [
        *model_steps,
        *data_stage(s, lay, classes),
        *classifier_stage(s, lay),
        *erase_stage(s, lay),
        *generate_stage(s, lay, rows),
        *sort_stage(s, lay, rows),
        *classify_stage(s, lay, rows),
        *metrics_stage(s, lay, rows),
        *table_stage(lay, rows),
    ]
    return [step for step in steps if step.stage in s.stages]
