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
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from sepce.classes import load_class_map
from sepce.evaluation.images import index_images, parse_image_name
from sepce.io import write_text
from sepce.paper_plan import ORIGINAL_FOLDER
from sepce.prompts import case_classes, read_prompt_csv
from sepce.stats import Estimate
from sepce.world.analysis import Evaluated, MethodSummary, contact_sheet, model_report, outcomes, summarise_method
from sepce.world.benchmark import (
    HELD_OUT,
    WORLD_METHODS,
    BenchmarkLayout,
    BenchmarkPlan,
    Cell,
    Form,
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
    )


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


def restoration_checks(lay: BenchmarkLayout, cells: Sequence[Cell]) -> Dict[str, Dict[str, dict]]:
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


def _est(e: Estimate) -> dict:
    return e.to_dict()


def summarise(lay: BenchmarkLayout, plan: BenchmarkPlan) -> dict:
    """Everything ``report.md`` shows, as data (``summary.json``): the original's accuracy per style, each model's
    accuracies, drops, verdicts and attack, and the restoration checks."""
    classes = load_class_map(lay.classes)
    original = outcomes(lay.eval_dir / ORIGINAL_FOLDER, classes)
    ori = model_report(
        evaluated(lay, plan.cells[0], plan.attacked), original, classes, attacked=plan.attacked.get(ORIGINAL_FOLDER, [])
    )
    out = {
        "original_accuracy": {s: _est(e) for s, e in ori.accuracy.items()},
        "original_attack": {s: _est(e) for s, e in ori.attack.items()},
        "rows": {},
        "restoration": restoration_checks(lay, plan.cells),
    }
    for cell in plan.cells[1:]:
        rep = model_report(evaluated(lay, cell, plan.attacked), original, classes)
        out["rows"][cell.label] = {
            "folder": cell.folder,
            "erased": list(cell.erased),
            "restored": list(cell.restored),
            "accuracy": {s: _est(e) for s, e in rep.accuracy.items()},
            "drop": {s: _est(e) for s, e in rep.drop.items()},
            "erased_verdicts": rep.erased_verdicts,
            "worst_other": rep.worst_other,
            "other_verdict": rep.other_verdict,
            "meets_aim": rep.meets_aim,
            "attack": {s: _est(e) for s, e in rep.attack.items()},
        }
    return out


# ------------------------------------------------------------------------------------------------ report
def _txt(e: dict, fmt: str = "{:.1f}") -> str:
    return Estimate(e["value"], e["low"], e["high"]).text(fmt)


def style_table(styles: Sequence[str], rows: Dict[str, Dict[str, dict]]) -> List[str]:
    """A Markdown table with one column per style and one row per ``{label: {style: estimate}}`` entry."""
    lines = ["| | " + " | ".join(styles) + " |", "|---|" + "|".join([":---:"] * len(styles)) + "|"]
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(_txt(values[s]) if s in values else "–" for s in styles) + " |")
    return lines


def _aim(entry: dict) -> str:
    if entry["meets_aim"]:
        return "yes"
    verdicts = list(entry["erased_verdicts"].values()) + [entry["other_verdict"]]
    return "no" if "not erased" in verdicts or "damaged" in verdicts else "undecided"


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
    return (
        f"Wall time {total:.0f} s ({total / 60:.1f} min) over {len(invocations)} invocation(s) of the script "
        f"(--jobs {', '.join(map(str, jobs))}); the step times below are summed, so with several jobs they add "
        "up to more than the wall time."
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


def report_markdown(
    form: Form,
    table_md: str,
    summary: dict,
    timings: Sequence[dict],
    presets: Dict[str, tuple],
    sheet: Optional[str] = None,
    invocations: Sequence[dict] = (),
) -> str:
    """``report.md`` of a single-erasure form (see the module docstring)."""
    styles = list(summary["original_accuracy"])
    lines = [
        f"# Concept-world benchmark ({form.name} form)",
        "",
        f"{form.seeds_per_class} seeds x {form.num_samples} image(s) per style, {form.sampler.upper()} {form.steps} "
        f"steps, guidance {form.guidance:g}, 64x64. ACC = world classifier style accuracy with its 95 % Wilson "
        "interval; the LPIPS column is the world classifier's feature distance (LPIPS construction, unit weights); "
        "FID (world classifier features) uses the classifier's pooled features; ATK = accuracy on the images of the "
        "concept-inversion attack's learned word. Intervals are 95 %: Wilson for accuracies, bootstrap over the "
        "evaluation seeds for drops (paired by seed).",
        "",
        table_md.rstrip(),
        "",
        "## Original model accuracy per style (%)",
        "",
        *style_table(styles, {"accuracy (%)": summary["original_accuracy"]}),
        "",
        "## Erasure: drops (points) and verdicts read off the intervals",
        "",
        "Aim: every erased style drops by >= 50 points (erased: the interval's lower bound >= 50) and no other style "
        "by more than 10 (spared: every other style's upper bound <= 10); `undecided` when an interval straddles "
        "the threshold. Held-out (tuning) styles count as other styles here.",
        "",
        "| Model | erased: drop [95 % CI] (verdict) | restored | worst other style: drop [95 % CI] | others | aim |",
        "|---|---|---|---|:---:|:---:|",
    ]
    for name, e in summary["rows"].items():
        erased = ", ".join(f"{s} {_txt(e['drop'][s])} ({e['erased_verdicts'][s]})" for s in e["erased"])
        worst = e["worst_other"]
        worst_text = f"{worst} {_txt(e['drop'][worst])}" if worst else "–"
        lines.append(
            f"| {name} | {erased} | {', '.join(e['restored']) or '–'} | {worst_text} | {e['other_verdict']} | "
            f"{_aim(e)} |"
        )
    attacked = [(n, e) for n, e in summary["rows"].items() if e["attack"]]
    if attacked:
        lines += [
            "",
            "## Concept-inversion attack: accuracy (%) on the erased style, own prompt vs learned word",
            "",
            "The same attack on the original model is the ceiling. One preset for every model "
            "(`sepce.attack.PRESETS['world']`).",
            "",
            "| Model | style | own prompt [95 % CI] | learned word [95 % CI] |",
            "|---|---|:---:|:---:|",
        ]
        for s, est in summary["original_attack"].items():
            lines.append(f"| ORI (ceiling) | {s} | {_txt(summary['original_accuracy'][s])} | {_txt(est)} |")
        for n, e in attacked:
            for s, est in e["attack"].items():
                lines.append(f"| {n} | {s} | {_txt(e['accuracy'][s])} | {_txt(est)} |")
    restoration = summary["restoration"]
    checks = [(n, s, c) for n, e in summary["rows"].items() for s, c in restoration.get(e["folder"], {}).items()]
    if checks:
        lines += [
            "",
            "## SepCE restoration: restored styles' images vs. the original's (same seeds, uint8 pixels)",
            "",
            "| Model | restored style | images | identical | max abs diff | mean abs diff | accuracy drop [95 % CI] |",
            "|---|---|:---:|:---:|:---:|:---:|:---:|",
        ]
        for name, style, c in checks:
            drop = summary["rows"][name]["drop"][style]
            lines.append(
                f"| {name} | {style} | {c['images']} | {c['identical']} | {c['max_abs_diff']} | "
                f"{c['mean_abs_diff']:.4f} | {_txt(drop)} |"
            )
    if sheet:
        lines += [
            "",
            "## What each erasure did (one image per style, the same seed in every row)",
            "",
            f"![contact sheet]({sheet})",
        ]
    lines += ["", "## Presets", "", *preset_lines(presets)]
    candidates = [c for c in summary["rows"] if "[c" in c and "(restore" not in c]
    if candidates:
        lines += ["", "Candidates (flags in the runs' args.json): " + ", ".join(candidates)]
    lines += choice_lines(summary.get("preset_choice", {}))
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


def choose_presets(summary: dict, cells: Sequence[Cell]) -> Dict[str, dict]:
    """The preset rule (docs/world-benchmark.md), per method with several candidates (tags ``c1``, ``c2``, ...,
    listed weakest first): the first candidate whose every erased style is ``erased`` (95 % lower bound of the drop
    >= 50 points); if none is, the candidate with the largest mean erased drop. Returns, per method, the chosen
    tag, its flags and why."""
    by_method: Dict[str, List[Cell]] = {}
    for cell in cells:
        if cell.tag and not cell.restored:
            by_method.setdefault(cell.method, []).append(cell)
    out = {}
    for method, options in by_method.items():
        rows = [(c, summary["rows"][c.label]) for c in options]
        passing = [(c, r) for c, r in rows if all(v == "erased" for v in r["erased_verdicts"].values())]
        if passing:
            chosen, reason = passing[0][0], "weakest candidate whose erased drop has its lower bound >= 50"
        else:
            mean = {c.label: np.mean([r["drop"][s]["value"] for s in r["erased"]]) for c, r in rows}
            chosen = max(options, key=lambda c: mean[c.label])
            reason = "no candidate reaches the 50-point lower bound: the one with the largest mean erased drop"
        out[method] = {"tag": chosen.tag, "label": chosen.label, "flags": list(chosen.preset or ()), "reason": reason}
    return out


def choice_lines(choices: Dict[str, dict]) -> List[str]:
    if not choices:
        return []
    lines = ["", "## Preset rule: the chosen candidate per method", "", "| Method | chosen | flags | why |"]
    lines.append("|---|---|---|---|")
    for method, c in choices.items():
        lines.append(f"| {WORLD_METHODS[method].label} | {c['tag']} | `{' '.join(c['flags'])}` | {c['reason']} |")
    return lines


def write_report(
    lay: BenchmarkLayout, form: Form, plan: BenchmarkPlan, timings, presets, invocations: Sequence[dict] = ()
) -> tuple[Path, dict]:
    """``report.md``, ``summary.json``, ``timings.csv`` and ``contact.png`` of a single-erasure form (with the
    preset rule's choice when methods had several candidates)."""
    summary = summarise(lay, plan)
    summary["preset_choice"] = choose_presets(summary, plan.cells)
    table_md = (lay.table_dir / "table.md").read_text()
    sheet = write_contact_sheet(lay, plan.cells, lay.work / "contact.png")
    text = report_markdown(form, table_md, summary, timings, presets, sheet.name, invocations)
    write_text(lay.work / "report.md", text)
    write_text(lay.work / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    write_text(lay.work / "timings.csv", timings_csv(timings))
    return lay.work / "report.md", summary


# ------------------------------------------------------------------------------------------------ sweep report
def run_record(lay: BenchmarkLayout, cell: Cell) -> dict:
    """Iterations, stop reason and wall time of a cell's training run (its ``summary.json``)."""
    path = lay.models_dir / cell.run / "summary.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {k: data.get(k) for k in ("iterations", "stop_reason", "wall_time_s")}


def sweep_summary(lay: BenchmarkLayout, plan: BenchmarkPlan, draws: int = 2000) -> dict:
    """Per method (SepCE split into its full erasure and each restore depth): the pooled numbers of
    :func:`sepce.world.analysis.summarise_method`; per run: the erased styles' drops; per training run: its
    record."""
    classes = load_class_map(lay.classes)
    original = outcomes(lay.eval_dir / ORIGINAL_FOLDER, classes)
    groups: Dict[str, List[Cell]] = {}
    for cell in plan.cells[1:]:
        key = WORLD_METHODS[cell.method].label + (f" (restore {len(cell.restored)})" if cell.restored else "")
        groups.setdefault(key, []).append(cell)
    methods: Dict[str, MethodSummary] = {}
    per_run = []
    for key, cells in groups.items():
        models = [evaluated(lay, c, plan.attacked) for c in cells]
        methods[key] = summarise_method(key, models, original, classes, HELD_OUT, draws=draws)
        for cell, model in zip(cells, models):
            rep = model_report(model, original, classes, HELD_OUT)
            per_run.append(
                {
                    "method": key,
                    "folder": cell.folder,
                    "erased": list(cell.erased),
                    "restored": list(cell.restored),
                    "seed": cell.seed,
                    "drop": {s: _est(rep.drop[s]) for s in rep.drop},
                    "worst_other": rep.worst_other,
                    "attack": {s: _est(e) for s, e in rep.attack.items()},
                    "training": run_record(lay, cell),
                }
            )
    ori = model_report(
        evaluated(lay, plan.cells[0], plan.attacked), original, classes, attacked=plan.attacked.get(ORIGINAL_FOLDER, [])
    )
    return {
        "seeds": sorted({c.seed for c in plan.cells[1:]}),
        "triples": list(dict.fromkeys(c.unit for c in plan.cells[1:] if c.method == "SepCE")),
        "original_accuracy": {s: _est(e) for s, e in ori.accuracy.items()},
        "original_attack": {s: _est(e) for s, e in ori.attack.items()},
        "methods": {
            k: {
                "units": m.units,
                "runs": m.runs,
                "erased_drop": _est(m.erased_drop),
                "other_mean_drop": _est(m.other_mean_drop),
                "other_max_drop": _est(m.other_max_drop),
                "restored_drop": _est(m.restored_drop),
                "own_prompt_accuracy": _est(m.own_prompt_accuracy),
                "attack_accuracy": _est(m.attack_accuracy),
                "per_style_collateral": {s: _est(e) for s, e in m.per_style_collateral.items()},
                "erased_verdict": m.erased_verdict,
                "spared_verdict": m.spared_verdict,
            }
            for k, m in methods.items()
        },
        "runs": per_run,
        "restoration": restoration_checks(lay, plan.cells),
    }


def sweep_markdown(
    form: Form, summary: dict, timings: Sequence[dict], presets: Dict[str, tuple], invocations: Sequence[dict] = ()
) -> str:
    """``sweep.md``: the pooled comparison, per-style detail, training records, restoration, times."""
    styles = list(summary["original_accuracy"])
    lines = [
        "# Concept-world benchmark, sweep form",
        "",
        f"Each single-concept method erased each reported style (every style but the held-out {', '.join(HELD_OUT)}) "
        f"with training seeds {', '.join(map(str, summary['seeds']))} (a deterministic method once)"
        + (
            f"; SepCE erased the disjoint triples {'; '.join(summary['triples'])} with each seed and restored subsets. "
            if summary["triples"]
            else ". "
        )
        + f"{form.seeds_per_class} evaluation seeds per style, {form.sampler.upper()} {form.steps} steps, guidance "
        f"{form.guidance:g}; the original's images are generated once and shared. Every number: mean [95 % "
        "interval], a hierarchical bootstrap over erasures (styles or triples), training seeds and evaluation "
        "seeds. Drops in accuracy points, paired by seed with the original.",
        "",
        "## Original model",
        "",
        *style_table(
            styles,
            {
                "accuracy (%)": summary["original_accuracy"],
                "attack: learned-word accuracy (%)": summary["original_attack"],
            },
        ),
        "",
        "## Methods",
        "",
        "Aim: erased drop >= 50 points (verdict `erased` when the interval's lower bound reaches it) and every other "
        "style within 10 points (`spared` when every style's pooled collateral drop has its upper bound <= 10; "
        "`damaged` when one has its lower bound above 10). Other styles exclude the held-out ones.",
        "",
        "| Method | erasures × seeds | erased drop | erased | other styles: mean drop | largest other drop (per run) "
        "| spared | own-prompt acc. (%) | attack acc. (%) |",
        "|---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|",
    ]
    for key, m in summary["methods"].items():
        lines.append(
            f"| {key} | {m['units']} × {m['runs'] / max(m['units'], 1):.0f} | {_txt(m['erased_drop'])} | "
            f"{m['erased_verdict']} | {_txt(m['other_mean_drop'])} | {_txt(m['other_max_drop'])} | "
            f"{m['spared_verdict']} | {_txt(m['own_prompt_accuracy'])} | {_txt(m['attack_accuracy'])} |"
        )
    restored = {k: m for k, m in summary["methods"].items() if not math.isnan(m["restored_drop"]["value"])}
    if restored:
        lines += ["", "## SepCE restoration", "", "| Model | restored styles' drop | images identical | max abs diff |"]
        lines += ["|---|:---:|:---:|:---:|"]
        for key, m in restored.items():
            checks = [
                c
                for r in summary["runs"]
                if r["method"] == key
                for c in summary["restoration"].get(r["folder"], {}).values()
            ]
            identical = sum(c["identical"] for c in checks)
            total = sum(c["images"] for c in checks)
            worst = max((c["max_abs_diff"] for c in checks), default=math.nan)
            lines.append(f"| {key} | {_txt(m['restored_drop'])} | {identical} / {total} | {worst} |")
    lines += [
        "",
        "## Collateral per style (pooled drop of each style over the erasures that did not target it)",
        "",
        "| Method | " + " | ".join(s for s in styles if s not in HELD_OUT) + " |",
        "|---|" + "|".join([":---:"] * len([s for s in styles if s not in HELD_OUT])) + "|",
    ]
    for key, m in summary["methods"].items():
        cells = [_txt(m["per_style_collateral"][s]) for s in styles if s not in HELD_OUT]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Every run",
        "",
        "| Method | erased | seed | erased drop(s) | worst other style | attack acc. | iterations | stop reason |",
        "|---|---|:---:|---|---|---|:---:|---|",
    ]
    for r in summary["runs"]:
        drops = ", ".join(f"{s} {_txt(r['drop'][s])}" for s in r["erased"])
        worst = f"{r['worst_other']} {_txt(r['drop'][r['worst_other']])}" if r["worst_other"] else "–"
        attack = ", ".join(f"{s} {_txt(e)}" for s, e in r["attack"].items()) or "–"
        rec = r["training"]
        lines.append(
            f"| {r['method']} | {'+'.join(r['erased'])} | {r['seed']} | {drops} | {worst} | {attack} | "
            f"{rec.get('iterations', '–')} | {rec.get('stop_reason', '–')} |"
        )
    lines += ["", "## Presets", "", *preset_lines(presets)]
    lines += ["", "## Run times (this machine)", "", *timing_lines(timings, False, invocations), ""]
    return "\n".join(lines)


def write_sweep_report(
    lay: BenchmarkLayout, form: Form, plan: BenchmarkPlan, timings, presets, invocations: Sequence[dict] = ()
) -> tuple[Path, dict]:
    summary = sweep_summary(lay, plan)
    write_text(lay.work / "sweep.md", sweep_markdown(form, summary, timings, presets, invocations))
    write_text(lay.work / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    write_text(lay.work / "timings.csv", timings_csv(timings))
    return lay.work / "sweep.md", summary
