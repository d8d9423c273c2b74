"""The paper's main experiment as a list of script invocations (``eval-scripts/reproduce.py``).

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
backbones, and a class map reduced to the concepts involved plus the blank class.
"""

from __future__ import annotations

import csv
import io
import json
import os
import runpy
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sepce.classes import ConceptClass, class_by_name, load_class_map
from sepce.generation import slug
from sepce.io import write_text
from sepce.paths import REPO_ROOT
from sepce.prompts import read_prompt_csv

STAGES = ("model", "data", "classifier", "erase", "generate", "sort", "classify", "metrics", "table")
TINY_CONFIG = "configs/tiny/v1-tiny-wide.yaml"
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
        ),
        Method("FMN", "train-scripts/FMN.py", ("--lr", "1e-5", "--iter_break", "10"), ("--lr", "1e-2")),
        Method("AC", "train-scripts/Abconcept.py", ("--lr", "1e-5", "--iter_break", "50"), ("--lr", "1e-2")),
    )
}


@dataclass
class Step:
    """One stage action: run a script (``argv[0]`` a repo script or ``-m module``) or write a small file."""

    stage: str
    name: str
    argv: List[str] = field(default_factory=list)
    skip_if: Optional[Path] = None  # an output whose existence means the step is done
    nproc: int = 1  # > 1: launched with torchrun
    write: Optional[Path] = None  # a file this step writes (content below) instead of running a script
    content: str = ""

    def shell(self) -> str:
        """The step as a shell command line."""
        if self.write is not None:
            return (
                f"mkdir -p {shlex.quote(str(self.write.parent))} && cat > {shlex.quote(str(self.write))} <<'EOF'\n"
                f"{self.content.rstrip()}\nEOF"
            )
        launcher = ["python"] if self.nproc == 1 else ["torchrun", "--standalone", "--nproc_per_node", str(self.nproc)]
        return shlex.join(launcher + self.argv)


@dataclass
class Row:
    """A table row: an output folder of generate-images.py and what the model erased / restored."""

    name: str
    folder: str
    model_name: str
    erase: Optional[List[str]] = None
    erased: List[str] = field(default_factory=list)
    restored: List[str] = field(default_factory=list)


@dataclass
class Layout:
    """Where everything goes."""

    data_dir: Path
    models_dir: Path
    eval_dir: Path
    table_dir: Path
    classifier: Path
    classes: Path
    prompts_path: Path
    ckpt_path: Path
    config_path: Path


def layout_of(args) -> Layout:
    """Paths for a full or a ``--tiny`` run (tiny: everything under ``--work_dir``)."""
    if args.tiny:
        work = Path(args.work_dir or "outputs/reproduce-tiny")
        return Layout(
            work / "data",
            work / "models",
            work / "evaluation_folder",
            work / "table",
            work / "classifier" / "resnet18.pt",
            work / "classes.csv",
            work / "evaluate.csv",
            work / "tiny" / "model.ckpt",
            work / "tiny" / "config.yaml",
        )
    work = Path(args.work_dir or ".")

    def near(path) -> Path:  # a path under the current folder, written relative to it (readable commands)
        path = Path(path)
        try:
            return path.resolve().relative_to(Path.cwd().resolve()) if path.is_absolute() else path
        except ValueError:
            return path

    return Layout(
        Path(args.data_dir or work / "data"),
        Path(args.models_dir or work / "models"),
        work / "evaluation_folder",
        work / "outputs" / "table",
        Path(args.classifier or work / "models" / "artist-classifier" / "resnet18.pt"),
        near(args.classes),
        near(args.prompts_path),
        near(args.ckpt_path),
        near(args.config_path),
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
    the others restored, for i = n..1)."""
    rows = [Row("ORI", ORIGINAL_FOLDER, "SD-v1-4")]
    for name in methods:
        method = METHODS[name]
        if not method.multi:
            rows.append(Row(name, name.lower(), run_folder(method, [concept]), erased=[concept]))
            continue
        for i in range(len(sepce_concepts), 0, -1):
            erased, restored = list(sepce_concepts[:i]), list(sepce_concepts[i:])
            label = name if not restored else f"{name} (restore {'+'.join(restored)})"
            folder = name.lower() if not restored else f"{name.lower()}-restore-{'-'.join(slug(c) for c in restored)}"
            rows.append(Row(label, folder, run_folder(method, sepce_concepts), erased, erased, restored))
    return rows


def run_folder(method: Method, concepts: Sequence[str]) -> str:
    return f"{method.name.lower()}-{'-'.join(slug(c) for c in concepts)}"


def table_spec(rows: Sequence[Row], eval_dir: Path, spec_path: Path) -> dict:
    """The make-table.py spec (paths relative to the spec file)."""

    def where(row: Row) -> str:
        return os.path.relpath((eval_dir / row.folder).resolve(), spec_path.parent.resolve())

    original, others = rows[0], rows[1:]
    return {
        "original": {"name": original.name, "path": where(original)},
        "models": [{"name": r.name, "path": where(r), "erased": r.erased, "restored": r.restored} for r in others],
    }


def plan(args) -> List[Step]:
    """Every step of the experiment for the parsed ``reproduce.py`` arguments (nothing is run or written)."""
    lay = layout_of(args)
    classes = load_class_map(args.classes)
    concept, sepce_concepts = args.concept, list(args.sepce_concepts)
    for name in (concept, *sepce_concepts):  # the table names concepts by class, so each must be a class
        try:
            class_by_name(classes, name)
        except KeyError as error:
            raise ValueError(f"--concept/--sepce_concepts: {error.args[0]}") from None
    steps: List[Step] = []
    model_flags = ["--ckpt_path", str(lay.ckpt_path), "--config_path", str(lay.config_path)]
    sample_flags = [
        "--ddim_steps",
        str(args.ddim_steps),
        "--image_size",
        str(args.image_size),
        "--batch_size",
        str(args.batch_size),
        "--device",
        args.device,
    ]
    if args.precision != "fp32":
        sample_flags += ["--precision", args.precision]
    quiet = ["--quiet"] if args.quiet else []

    if args.tiny:
        steps.append(
            Step(
                "model",
                "tiny base model",
                ["-m", "sepce.tiny", "--config", TINY_CONFIG, "--out", str(lay.ckpt_path.parent), "--if_missing"],
            )
        )
        class_text, rows_text = tiny_inputs(
            classes, args.prompts_path, [concept, *sepce_concepts], args.cases_per_class
        )
        steps.append(Step("model", "tiny class map", write=lay.classes, content=class_text))
        steps.append(Step("model", "tiny evaluation CSV", write=lay.prompts_path, content=rows_text))
        classes = [
            ConceptClass(int(r["index"]), r["name"], r["prompt"]) for r in csv.DictReader(io.StringIO(class_text))
        ]
    class_flag = ["--classes", str(lay.classes)]

    for c in classes:
        steps.append(
            Step(
                "data",
                f"training images of {c.name}",
                [
                    "eval-scripts/generate-data.py",
                    "--prompt",
                    c.prompt,
                    "--model_name",
                    str(c.index),
                    "--save_path",
                    str(lay.data_dir),
                    "--num_cases",
                    str(args.num_cases),
                    "--num_samples",
                    "1",
                    *class_flag,
                    *model_flags,
                    *sample_flags,
                    *quiet,
                ],
                nproc=args.nproc_per_node,
            )
        )

    cls = [
        "train-scripts/artist-cls-train.py",
        "--train_dir",
        str(lay.data_dir / "train"),
        "--eval_dir",
        str(lay.data_dir / "eval"),
        "--output",
        str(lay.classifier),
        "--device",
        args.device,
        *class_flag,
    ]
    if args.tiny:
        cls += ["--no_pretrained", "--epochs", "3", "--image_size", str(args.image_size), "--batch_size", "8"]
    steps.append(Step("classifier", "style classifier", cls, skip_if=lay.classifier))

    for name in args.methods:
        method = METHODS[name]
        concepts = sepce_concepts if method.multi else [concept]
        out = lay.models_dir / run_folder(method, concepts)
        argv = [
            method.script,
            *(["--prompts", *concepts] if method.multi else ["--prompt", concept]),
            *method.flags,
            *model_flags,
            "--devices",
            args.devices,
            "--output_dir",
            str(out),
        ]
        if method.uses_data:
            argv += ["--data_dir", str(lay.data_dir)]
        if args.tiny:
            argv += [*method.tiny_flags, "--image_size", str(args.image_size)]
        if args.iterations is not None:
            argv += ["--iterations", str(args.iterations)]
        steps.append(Step("erase", f"{name} on {', '.join(concepts)}", argv, skip_if=out / "erasure.safetensors"))

    rows = model_rows(args.methods, concept, sepce_concepts)
    for row in rows:
        argv = [
            "eval-scripts/generate-images.py",
            "--model_name",
            row.model_name,
            "--prompts_path",
            str(lay.prompts_path),
            "--save_path",
            str(lay.eval_dir),
            "--output_name",
            row.folder,
            "--num_samples",
            str(args.num_samples),
            "--models_dir",
            str(lay.models_dir),
            *class_flag,
            *model_flags,
            *sample_flags,
            *quiet,
        ]
        if row.erase is not None:
            argv += ["--erase", *row.erase]
        steps.append(Step("generate", f"evaluation images of {row.name}", argv, nproc=args.nproc_per_node))

    steps.append(
        Step(
            "sort",
            "sort into class folders",
            [
                "train-scripts/move_image.py",
                "--path",
                str(lay.eval_dir),
                "--folders",
                *[r.folder for r in rows],
                "--prompts_path",
                str(lay.prompts_path),
                *class_flag,
            ],
        )
    )
    steps.append(
        Step(
            "classify",
            "classifier accuracy",
            [
                "train-scripts/artist-cls-test.py",
                "--path",
                str(lay.eval_dir),
                "--classifier",
                str(lay.classifier),
                "--device",
                args.device,
                "--overwrite",
                *class_flag,
            ],
        )
    )
    for row in rows[1:]:
        argv = [
            "eval-scripts/lpips_eval.py",
            "--original_path",
            str(lay.eval_dir / ORIGINAL_FOLDER),
            "--edited_path",
            str(lay.eval_dir / row.folder),
            "--prompts_path",
            str(lay.prompts_path),
            "--device",
            args.device,
            "--overwrite",
            *class_flag,
        ]
        if args.tiny:
            argv += ["--no_pretrained", "--fid_size", "75", "--batch_size", "16"]
        steps.append(Step("metrics", f"LPIPS and FID of {row.name}", argv))

    spec_path = lay.table_dir / "spec.json"
    spec = json.dumps(table_spec(rows, lay.eval_dir, spec_path), indent=2)
    steps.append(Step("table", "table spec", write=spec_path, content=spec + "\n"))
    steps.append(
        Step(
            "table",
            "table",
            [
                "eval-scripts/make-table.py",
                "--spec",
                str(spec_path),
                "--output_dir",
                str(lay.table_dir),
                "--overwrite",
                *class_flag,
            ],
        )
    )
    return [s for s in steps if s.stage in args.stages]


class StepFailed(RuntimeError):
    """A step exited with a non-zero status."""


def _command(step: Step) -> List[str]:
    if step.argv[0] == "-m":
        return [sys.executable, *step.argv]
    script = str(REPO_ROOT / step.argv[0])
    if step.nproc > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(step.nproc),
            script,
            *step.argv[1:],
        ]
    return [sys.executable, script, *step.argv[1:]]


def _run_in_process(step: Step) -> int:
    """Run a script in this interpreter as ``__main__`` (no interpreter start-up and imports per step)."""
    saved = sys.argv
    try:
        if step.argv[0] == "-m":
            sys.argv = [step.argv[1], *step.argv[2:]]
            with warnings.catch_warnings():  # "found in sys.modules": the module is imported already; harmless
                warnings.simplefilter("ignore", RuntimeWarning)
                runpy.run_module(step.argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [str(REPO_ROOT / step.argv[0]), *step.argv[1:]]
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
            return 1
        return int(exit_.code or 0)
    finally:
        sys.argv = saved
    return 0


def run_step(step: Step, runner: str) -> str:
    """Execute ``step``; returns ``'done'`` or ``'skipped'``. Raises :class:`StepFailed`."""
    if step.write is not None:
        if step.write.is_file() and step.write.read_text() == step.content:
            return "skipped"
        write_text(step.write, step.content)
        return "done"
    if step.skip_if is not None and step.skip_if.exists():
        return "skipped"
    if runner == "inprocess":
        if step.nproc > 1:
            raise ValueError("--nproc_per_node > 1 needs --runner subprocess (torchrun)")
        code = _run_in_process(step)
    else:
        code = subprocess.run(_command(step)).returncode
    if code != 0:
        raise StepFailed(f"step '{step.name}' failed (exit status {code}): {step.shell()}")
    return "done"
