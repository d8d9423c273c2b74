"""Reports of the concept-world benchmark: ``report.md`` (single-erasure forms) and ``sweep.md`` (the sweep).

Numbers come from :mod:`sepce.world.analysis` (intervals, verdicts, pooled sweep results) over the folders the
benchmark (:mod:`sepce.world.benchmark`) wrote; this module turns them into ``summary.json`` and Markdown, adds the
SepCE restoration pixel check, the contact sheet and the run times (where the time goes).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from sepce.classes import load_class_map
from sepce.evaluation.images import index_images, parse_image_name
from sepce.io import write_text
from sepce.paper_plan import ORIGINAL_FOLDER
from sepce.paths import code_version
from sepce.prompt_csv import case_classes, read_prompt_csv
from sepce.stats import Estimate
from sepce.world.analysis import (
    AIM_CEILING,
    Count,
    Evaluated,
    PairDifference,
    Quality,
    RowResult,
    accuracy,
    ceiling_reaches,
    contact_sheet,
    load_run,
    pair_differences,
    per_style_values,
    row_result,
)
from sepce.world.benchmark import (
    HELD_OUT,
    WORLD_METHODS,
    BenchmarkLayout,
    BenchmarkPlan,
    Cell,
    Form,
    erased_cells,
    original_cell,
)


def evaluated(lay: BenchmarkLayout, cell: Cell, attacked: Dict[str, List[str]]) -> Evaluated:
    folder = lay.eval_dir / cell.folder
    return Evaluated(
        cell.label,
        cell.method,
        folder,
        tuple(cell.erased),
        tuple(cell.restored),
        cell.unit,
        cell.seed,
        folder if attacked.get(cell.folder) else None,
        lay.cra_dir / cell.folder,
    )


@dataclass(frozen=True)
class PixelCheck:
    """A restored style's images against the original's (same names, uint8 pixels)."""

    images: int
    identical: int
    within_one: int  # images whose largest difference is at most one grey level
    max_abs_diff: float
    mean_abs_diff: float


def pixel_check(original: Path, edited: Path, case_to_class: Dict[int, int], class_index: int) -> PixelCheck:
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
        return PixelCheck(0, 0, 0, math.nan, math.nan)
    return PixelCheck(
        len(diffs),
        int(sum(int(d.max() == 0) for d in diffs)),
        int(sum(int(d.max() <= 1) for d in diffs)),
        int(max(d.max() for d in diffs)),
        float(np.mean([d.mean() for d in diffs])),
    )


def restoration_checks(lay: BenchmarkLayout, cells: Sequence[Cell]) -> Dict[str, Dict[str, PixelCheck]]:
    """Per restored model and restored style: the pixel comparison with the original's images."""
    classes = load_class_map(lay.classes)
    index = {c.name: c.index for c in classes}
    case_to_class = case_classes(read_prompt_csv(lay.prompts_path, classes, require_class=True))
    original = lay.eval_dir / ORIGINAL_FOLDER
    return {
        c.folder: {s: pixel_check(original, lay.eval_dir / c.folder, case_to_class, index[s]) for s in c.restored}
        for c in cells
        if c.restored
    }


# ------------------------------------------------------------------------------------------------ summary
@dataclass(frozen=True)
class OriginalResult:
    """The original model: style accuracy per style, in-context style accuracy and CRA, quality, and the attack's
    ceiling per attacked style (which decides the attack column)."""

    accuracy: Dict[str, Count]
    ira: Count  # style accuracy over every style's images
    ira_context: Count
    cra: Count
    quality: Quality
    attack_ceiling: Dict[str, Count]

    @property
    def attack_styles(self) -> List[str]:
        """Styles whose ceiling reaches :data:`~sepce.world.analysis.AIM_CEILING` (Wilson lower bound)."""
        return [s for s, c in self.attack_ceiling.items() if c.included]


@dataclass(frozen=True)
class Ceiling(Count):
    """The attack's success on the original for one style, and whether the style enters the attack column."""

    included: bool = False


@dataclass(frozen=True)
class RunRecord:
    """One evaluated model of a plan: its row, folder, training seed, the drops of its erased styles (one run's
    interval), and its training run's iterations, stop reason and wall time."""

    row: str
    folder: str
    erased: tuple
    restored: tuple
    seed: int
    erased_drops: Dict[str, Estimate]
    candidate: bool = False  # a tuning candidate's own run
    iterations: Optional[int] = None
    stop_reason: Optional[str] = None
    wall_time_s: Optional[float] = None


@dataclass(frozen=True)
class PresetChoice:
    """The preset rule's choice for one method with several tuning candidates."""

    tag: str
    label: str
    flags: List[str]
    reason: str


@dataclass
class BenchmarkSummary:
    """Everything the reports show (``summary.json`` is its :func:`summary_json`), protocol v2."""

    form: str
    commit: str
    seeds: List[int]
    triples: List[str]
    original: OriginalResult
    rows: List[RowResult]
    differences: List[PairDifference]
    restoration: Dict[str, Dict[str, PixelCheck]]
    runs: List[RunRecord]
    preset_choice: Dict[str, PresetChoice] = field(default_factory=dict)
    protocol: str = "v2"

    def row(self, label: str) -> RowResult:
        return next(r for r in self.rows if r.label == label)


def row_key(cell: Cell, sweep: bool) -> str:
    """The row a cell is pooled into: its own label in a single-erasure form; in the sweep the method, split by
    restore depth for SepCE's subsets (rows of their own)."""
    if not sweep:
        return cell.label
    return WORLD_METHODS[cell.method].label + (f" (restore {len(cell.restored)})" if cell.restored else "")


def run_record(lay: BenchmarkLayout, cell: Cell, row: str, result: RowResult) -> RunRecord:
    """A cell's :class:`RunRecord` (training facts from its run folder's ``summary.json``)."""
    path = lay.models_dir / cell.run / "summary.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return RunRecord(
        row,
        cell.folder,
        tuple(cell.erased),
        tuple(cell.restored),
        cell.seed,
        {v.style: v.drop for v in result.erased},
        cell.candidate,
        data.get("iterations"),
        data.get("stop_reason"),
        data.get("wall_time_s"),
    )


def summarise(lay: BenchmarkLayout, plan: BenchmarkPlan, sweep: bool = False, form: str = "") -> BenchmarkSummary:
    """Pool every row of a plan by protocol v2's one rule (:func:`sepce.world.analysis.row_result`), the original,
    the paired method differences over the reported styles, the restoration checks and one record per model."""
    classes = load_class_map(lay.classes)
    names = [c.name for c in classes]
    ori_cell = original_cell(plan.cells)
    ori_model = evaluated(lay, ori_cell, plan.attacked)
    ori_run = load_run(ori_model, classes)
    original = ori_run.styles
    ori_row = row_result("ORI", [ori_model], original, classes)
    ceiling = {
        s: Ceiling(accuracy(ori_run.attack[s]).estimate, len(ori_run.attack[s]), ceiling_reaches(ori_run.attack[s]))
        for s in plan.attacked.get(ORIGINAL_FOLDER, [])
        if ori_run.attack.get(s)
    }
    groups: Dict[str, List[Cell]] = {}
    for cell in erased_cells(plan.cells):
        groups.setdefault(row_key(cell, sweep), []).append(cell)
    rows, runs, values = [], [], {}
    for key, cells in groups.items():
        models = [evaluated(lay, c, plan.attacked) for c in cells]
        row = row_result(key, models, original, classes)
        rows.append(row)
        for cell, model in zip(cells, models):
            runs.append(run_record(lay, cell, key, row_result(key, [model], original, classes)))
        if not any(c.restored for c in cells):
            values[key] = per_style_values(models, original, classes)
    reported = [s for s in names if s not in HELD_OUT]
    return BenchmarkSummary(
        form=form,
        commit=code_version(),
        seeds=sorted({c.seed for c in erased_cells(plan.cells)}),
        triples=list(dict.fromkeys(c.unit for c in erased_cells(plan.cells) if c.method == "SepCE")),
        original=OriginalResult(
            {s: accuracy(original[s]) for s in names},
            ori_row.ira,
            ori_row.ira_context,
            ori_row.cra,
            ori_row.quality,
            ceiling,
        ),
        rows=rows,
        differences=pair_differences(values, reported),
        restoration=restoration_checks(lay, plan.cells),
        runs=runs,
    )


def summary_json(summary: BenchmarkSummary) -> dict:
    """``summary.json``: the dataclasses as data, plus each row's and pair's derived verdicts (the JSON boundary)."""
    out = asdict(summary)
    for entry, row in zip(out["rows"], summary.rows):
        entry.update(
            erases=row.erases,
            spares=row.spares,
            aim=row.aim,
            erased_drop=asdict(row.erased_drop),
            collateral_drop=asdict(row.collateral_drop),
        )
    for entry, pair in zip(out["differences"], summary.differences):
        entry["verdict"] = pair.verdict
    out["original"]["attack_styles"] = summary.original.attack_styles
    return out


# ------------------------------------------------------------------------------------------------ markdown
def _n(count: Count) -> str:
    return f"{count.estimate.text()} (n={count.images})" if count.images else "–"


V2_INTRO = (
    "Protocol v2 (docs/world-benchmark.md): drops in points, paired with the original by seed; every drop's "
    "interval is the hull of the exact Clopper–Pearson drop interval of the pooled images and the between-run "
    "interval (t over runs; one run: bootstrap over seeds). `erased` per erased style: lower bound >= 50; "
    "collateral per other style (held-out and restored included): `spared` upper bound <= 10, `damaged` lower "
    'bound > 10. UA/IRA/CRA (%): Clopper–Pearson; "ctx" = on the in-context prompts `a <object> in the style of '
    "<style>`. FID/dist → renders: world-classifier features against ground-truth renders; LPIPS → ORI: world "
    "feature distance to the original's same-seed image (bootstrap over images)."
)


def protocol_lines(summary: BenchmarkSummary) -> List[str]:
    """The v2 part shared by every form: the table, the verdicts per style, the attack, the paired differences."""
    o = summary.original
    lines = [
        f"Code: commit `{summary.commit}`.",
        "",
        V2_INTRO,
        "",
        "| Row | runs | erased: drop (verdict, images) | UA | IRA | UA ctx | IRA ctx | CRA | collateral: mean "
        "over styles | spares | aim | FID → renders | dist → renders | LPIPS → ORI |",
        "|---|:---:|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|",
        f"| ORI | 1 | – | – | {_n(o.ira)} | – | "
        f"{_n(o.ira_context)} | {_n(o.cra)} | – | – | – | {o.quality.fid_renders.text()} | "
        f"{o.quality.distance_renders.text('{:.3f}')} | – |",
    ]
    for r in summary.rows:
        erased = "; ".join(f"{v.style} {v.drop.text()} ({v.verdict}, {v.images})" for v in r.erased)
        q = r.quality
        lines.append(
            f"| {r.label} | {r.runs} | {erased} | {_n(r.ua)} | {_n(r.ira)} | {_n(r.ua_context)} | "
            f"{_n(r.ira_context)} | {_n(r.cra)} | {r.collateral_drop.text()} | {r.spares} | {r.aim} | "
            f"{q.fid_renders.text()} | {q.distance_renders.text('{:.3f}')} | {q.lpips_original.text('{:.3f}')} |"
        )
    styles = list(o.accuracy)
    lines += [
        "",
        "### Verdicts per style (drop [95 % interval], verdict, paired images)",
        "",
        "E = erased, N = not erased, S = spared, D = damaged, U = undecided; a cell in bold is an erased style.",
        "",
        "| Row | " + " | ".join(styles) + " |",
        "|---|" + "|".join([":---:"] * len(styles)) + "|",
        "| ORI accuracy (%) | " + " | ".join(_n(o.accuracy[s]) for s in styles) + " |",
    ]
    for r in summary.rows:
        cells = []
        for s in styles:
            parts = [_verdict_cell(v, True) for v in r.erased if v.style == s]
            parts += [_verdict_cell(v, False) for v in r.collateral if v.style == s]
            cells.append(" / ".join(parts) or "–")
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    lines += attack_lines(summary)
    lines += difference_lines(summary.differences)
    return lines


def _verdict_cell(v, erased: bool) -> str:
    short = {"erased": "E", "not erased": "N", "spared": "S", "damaged": "D", "undecided": "U"}[v.verdict]
    text = f"{v.drop.text()} {short} ({v.images})"
    return f"**{text}**" if erased else text


def attack_lines(summary: BenchmarkSummary) -> List[str]:
    ceiling = summary.original.attack_ceiling
    if not ceiling:
        return []
    lines = [
        "",
        "### Concept-inversion attack: learned-word accuracy (%) on the erased style",
        "",
        f"A style enters the column only if the attack's success on the original (the ceiling) has its Wilson lower "
        f"bound >= {AIM_CEILING:.0f} %. Ceilings: "
        + ", ".join(f"{s} {_n(c)}{'' if c.included else ' (left out)'}" for s, c in ceiling.items())
        + ".",
        "",
        "| Row | style | own prompt accuracy | learned word accuracy |",
        "|---|---|:---:|:---:|",
    ]
    for r in summary.rows:
        for a in r.attack:
            if a.style in summary.original.attack_styles:
                own = _n(r.own_accuracy.get(a.style, Count.of(0, 0)))
                lines.append(f"| {r.label} | {a.style} | {own} | {_n(a.accuracy)} |")
    return lines


def difference_lines(differences: Sequence[PairDifference]) -> List[str]:
    if not differences:
        return []
    lines = [
        "",
        "### Which method is better: paired differences A − B (points)",
        "",
        "Paired by erased style (per-style value: mean over that style's runs; SepCE: the runs of the triple holding "
        "it) over the reported styles; paired t interval and p-value, Holm-adjusted over the pairs of each measure. "
        "Different only when the adjusted p < 0.05; otherwise not distinguishable (the interval says how large a "
        "difference the data could have missed).",
        "",
        "| measure | A | B | styles | A − B [95 % CI] | p | Holm p | verdict |",
        "|---|---|---|:---:|:---:|:---:|:---:|---|",
    ]
    for d in differences:
        t = d.test
        p = "–" if math.isnan(t.p_value) else f"{t.p_value:.3f}"
        adj = "–" if math.isnan(t.adjusted_p) else f"{t.adjusted_p:.3f}"
        diff = t.difference.text() if t.pairs > 1 else f"{t.difference.value:.1f} (no interval)"
        lines.append(f"| {d.measure} | {d.a} | {d.b} | {t.pairs} | {diff} | {p} | {adj} | {d.verdict} |")
    return lines


def stage_times(timings: Sequence[dict]) -> Dict[str, float]:
    """Seconds per stage (where the time goes)."""
    out: Dict[str, float] = {}
    for t in timings:
        out[t["stage"]] = out.get(t["stage"], 0.0) + float(t["seconds"])
    return out


def wall_line(invocations: Sequence[dict]) -> str:
    """One sentence: the wall time of the invocations (resumed runs) that built this work directory."""
    total = sum(float(i["seconds"]) for i in invocations)
    jobs = sorted({int(i["jobs"]) for i in invocations})
    commits = [str(i.get("commit", "not recorded"))[:12] for i in invocations]
    return (
        f"Wall time {total:.0f} s ({total / 60:.1f} min) over {len(invocations)} invocation(s) of the script "
        f"(--jobs {', '.join(map(str, jobs))}; code {', '.join(commits)}); the step times below are summed, so "
        "with several jobs they add up to more than the wall time."
    )


def timing_lines(timings: Sequence[dict], detail: bool = True, invocations: Sequence[dict] = ()) -> List[str]:
    total = sum(t["seconds"] for t in timings)
    lines = [wall_line(invocations), ""] if invocations else []
    lines += ["| Stage | seconds | share |", "|---|---:|---:|"]
    for stage, seconds in stage_times(timings).items():
        lines.append(f"| {stage} | {seconds:.0f} | {100 * seconds / total if total else 0:.0f} % |")
    lines.append(f"| **total** | **{total:.0f}** | |")
    if detail:
        lines += ["", "| Stage | Step | seconds |", "|---|---|---:|"]
        lines += [f"| {t['stage']} | {t['name']} | {t['seconds']:.0f} |" for t in timings]
    return lines


def preset_lines(presets: Dict[str, tuple]) -> List[str]:
    lines = ["| Method | flags |", "|---|---|"]
    shown = {m: " ".join(repr(f) if not f else f for f in flags) for m, flags in presets.items()}
    return lines + [f"| {WORLD_METHODS[m].label} | `{text}` |" for m, text in shown.items()]


def restoration_lines(summary: BenchmarkSummary) -> List[str]:
    checks = [(r, s, c) for r in summary.runs for s, c in summary.restoration.get(r.folder, {}).items() if c.images]
    if not checks:
        return []
    lines = [
        "",
        "## SepCE restoration: restored styles' images vs. the original's (same seeds, uint8 pixels)",
        "",
        "| Row | training seed | restored style | images | identical | within one grey level | max abs diff | "
        "mean abs diff |",
        "|---|:---:|---|:---:|:---:|:---:|:---:|:---:|",
    ]
    for run, style, c in checks:
        lines.append(
            f"| {run.row} | {run.seed} | {style} | {c.images} | {c.identical} | {c.within_one} | {c.max_abs_diff} | "
            f"{c.mean_abs_diff:.4f} |"
        )
    images = sum(c.images for _, _, c in checks)
    lines += [
        "",
        f"Over all {len(checks)} checks: {sum(c.identical for _, _, c in checks)} of {images} restored images "
        f"identical to the original's, {sum(c.within_one for _, _, c in checks)} within one grey level, largest "
        f"difference {max(c.max_abs_diff for _, _, c in checks)} levels.",
    ]
    return lines


def report_markdown(
    form: Form,
    table_md: str,
    summary: BenchmarkSummary,
    timings: Sequence[dict],
    presets: Dict[str, tuple],
    sheet: Optional[str] = None,
    invocations: Sequence[dict] = (),
) -> str:
    """``report.md`` of a single-erasure form: the v2 table and verdicts, the paper-style table, restoration,
    contact sheet, presets and times."""
    lines = [
        f"# Concept-world benchmark ({form.name} form)",
        "",
        f"{form.seeds_per_class} seeds x {form.num_samples} image(s) per style, {form.sampler.upper()} {form.steps} "
        f"steps, guidance {form.guidance:g}, 64x64; {form.cra_objects * len(summary.original.accuracy)} CRA images "
        "per model.",
        "",
        *protocol_lines(summary),
        "",
        "## The paper-style table (make-table.py)",
        "",
        "ACC = world classifier style accuracy (Wilson interval); LPIPS = world feature distance to the original; "
        "FID (world classifier features) against the original's images; ATK = attack accuracy.",
        "",
        table_md.rstrip(),
        *restoration_lines(summary),
    ]
    if sheet:
        lines += [
            "",
            "## What each erasure did (one image per style, the same seed in every row)",
            "",
            f"![contact sheet]({sheet})",
        ]
    lines += ["", "## Presets", "", *preset_lines(presets)]
    candidates = [r.row for r in summary.runs if r.candidate]
    if candidates:
        lines += ["", "Candidates (flags in the runs' args.json): " + ", ".join(candidates)]
    lines += choice_lines(summary.preset_choice)
    lines += ["", "## Run times (this machine)", "", *timing_lines(timings, invocations=invocations), ""]
    return "\n".join(lines)


def write_contact_sheet(lay: BenchmarkLayout, cells: Sequence[Cell], path: Path, seed_index: int = 0) -> Path:
    """``contact.png``: one row per model, one column per style, the ``seed_index``-th evaluation image of each
    style (the same file name, so the same seed, in every row)."""
    from sepce.io import save_image

    classes = load_class_map(lay.classes)
    rows = read_prompt_csv(lay.prompts_path, classes, require_class=True)
    by_style: Dict[int, List[int]] = {}
    for row in rows:
        by_style.setdefault(row.class_index, []).append(row.case_number)
    names = {c.name: f"{by_style[c.index][min(seed_index, len(by_style[c.index]) - 1)]}_0.png" for c in classes}

    def image_for(folder: Path, style: str) -> Optional[Path]:
        index, _ = index_images(folder)
        return index.get(names[style])

    sheet = contact_sheet([(c.label, lay.eval_dir / c.folder) for c in cells], [c.name for c in classes], image_for)
    return save_image(path, sheet)


def timings_csv(timings: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["stage", "name", "status", "seconds"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(timings)
    return buf.getvalue()


def choose_presets(rows: Dict[str, RowResult], cells: Sequence[Cell]) -> Dict[str, PresetChoice]:
    """The preset rule, protocol v2 (docs/world-benchmark.md, "No leaks"), per method with several candidates
    (tags ``c1``, ``c2``, ..., weakest first): the first candidate whose every erased style is ``erased`` and whose
    every other held-out style is ``spared``; if none is, the candidate with the largest mean erased drop."""
    by_method: Dict[str, List[Cell]] = {}
    for cell in cells:
        if cell.candidate:
            by_method.setdefault(cell.method, []).append(cell)
    out = {}
    for method, options in by_method.items():

        def passes(cell: Cell) -> bool:
            row = rows[cell.label]
            held = [v for v in row.collateral if v.style in HELD_OUT]
            return row.erases == "yes" and all(v.verdict == "spared" for v in held)

        passing = [c for c in options if passes(c)]
        if passing:
            chosen = passing[0]
            reason = "weakest candidate whose held-out erased style is erased and other held-out style spared"
        else:
            chosen = max(options, key=lambda c: rows[c.label].erased_drop.value)
            reason = "no candidate passes the rule: the one with the largest mean erased drop"
        out[method] = PresetChoice(chosen.tag, chosen.label, list(chosen.preset or ()), reason)
    return out


def choice_lines(choices: Dict[str, PresetChoice]) -> List[str]:
    if not choices:
        return []
    lines = ["", "## Preset rule: the chosen candidate per method", "", "| Method | chosen | flags | why |"]
    lines.append("|---|---|---|---|")
    for method, c in choices.items():
        lines.append(f"| {WORLD_METHODS[method].label} | {c.tag} | `{' '.join(c.flags)}` | {c.reason} |")
    return lines


def _write(lay: BenchmarkLayout, name: str, text: str, summary: BenchmarkSummary, timings) -> Path:
    write_text(lay.work / name, text)
    write_text(lay.work / "summary.json", json.dumps(summary_json(summary), indent=2, default=float) + "\n")
    write_text(lay.work / "timings.csv", timings_csv(timings))
    return lay.work / name


def write_report(
    lay: BenchmarkLayout, form: Form, plan: BenchmarkPlan, timings, presets, invocations: Sequence[dict] = ()
) -> tuple[Path, BenchmarkSummary]:
    """``report.md``, ``summary.json``, ``timings.csv`` and ``contact.png`` of a single-erasure form (with the
    preset rule's choice when methods had several candidates)."""
    summary = summarise(lay, plan, sweep=False, form=form.name)
    summary.preset_choice = choose_presets({r.label: r for r in summary.rows}, plan.cells)
    table_md = (lay.table_dir / "table.md").read_text()
    sheet = write_contact_sheet(lay, plan.cells, lay.work / "contact.png")
    text = report_markdown(form, table_md, summary, timings, presets, sheet.name, invocations)
    return _write(lay, "report.md", text, summary, timings), summary


# ------------------------------------------------------------------------------------------------ sweep report
def sweep_markdown(
    form: Form,
    summary: BenchmarkSummary,
    timings: Sequence[dict],
    presets: Dict[str, tuple],
    invocations: Sequence[dict] = (),
) -> str:
    """``sweep.md``: the v2 table, verdicts and paired differences pooled over every run, every run, restoration,
    presets, times."""
    triples = (
        f"; SepCE erased the disjoint triples {'; '.join(summary.triples)} with each seed and restored subsets"
        if summary.triples
        else ""
    )
    lines = [
        "# Concept-world benchmark, sweep form",
        "",
        f"Each single-concept method erased each reported style (every style but the held-out {', '.join(HELD_OUT)}) "
        f"with training seeds {', '.join(map(str, summary.seeds))} (a deterministic method once, on every seed "
        f"block){triples}. {form.seeds_per_class} evaluation seeds per style and training seed (training seed i on "
        f"block i), {form.sampler.upper()} {form.steps} steps, guidance {form.guidance:g}; the original's images "
        "are generated once and shared.",
        "",
        *protocol_lines(summary),
        "",
        "## Every run",
        "",
        "| Row | erased | seed | erased drop(s) (one run) | iterations | stop reason |",
        "|---|---|:---:|---|:---:|---|",
    ]
    for r in summary.runs:
        drops = ", ".join(f"{s} {e.text()}" for s, e in r.erased_drops.items())
        lines.append(
            f"| {r.row} | {'+'.join(r.erased)} | {r.seed} | {drops} | {r.iterations or '–'} | {r.stop_reason or '–'} |"
        )
    lines += restoration_lines(summary)
    lines += ["", "## Presets", "", *preset_lines(presets)]
    lines += ["", "## Run times (this machine)", "", *timing_lines(timings, False, invocations), ""]
    return "\n".join(lines)


def write_sweep_report(
    lay: BenchmarkLayout, form: Form, plan: BenchmarkPlan, timings, presets, invocations: Sequence[dict] = ()
) -> tuple[Path, BenchmarkSummary]:
    summary = summarise(lay, plan, sweep=True, form=form.name)
    text = sweep_markdown(form, summary, timings, presets, invocations)
    return _write(lay, "sweep.md", text, summary, timings), summary
