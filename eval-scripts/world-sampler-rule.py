"""Apply the pre-registered sampler rule of the concept world (docs/world-benchmark.md, "Sampler"): draw DDIM 50
and every candidate (DPM-Solver++(2M) 10/12/15/20/25 steps, DDIM 25) from the ORIGINAL world model on the held-out
styles' evaluation seeds, and choose the passing candidate with the fewest network evaluations.

    python eval-scripts/world-sampler-rule.py                      # the registered rule (50 seeds x 2 styles)
    python eval-scripts/world-sampler-rule.py --seeds_per_style 4 --work_dir /tmp/rule   # a quick look

Writes ``<work_dir>/rule.md`` (the table and the choice) and ``rule.json``; images go to
``<work_dir>/<sampler>-<steps>/`` (re-running resumes). See sepce/world/sampler_rule.py.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from sepce.cli import EXIT_HELP, add_quiet, parser, positive_int, run, show_progress
from sepce.io import write_json, write_text
from sepce.world.sampler_rule import RuleResult, RuleSettings, rule_markdown, run_rule


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, EXIT_HELP)
    p.add_argument(
        "--work_dir", type=Path, default=Path("outputs/world-sampler-rule"), help="images and results go here"
    )
    p.add_argument(
        "--seeds_per_style", type=positive_int, default=50, help="evaluation seeds per held-out style (rule: 50)"
    )
    p.add_argument("--batch_size", type=positive_int, default=32, help="images per sampler batch")
    add_quiet(p)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> RuleResult:
    settings = RuleSettings(args.work_dir, args.seeds_per_style, batch_size=args.batch_size)
    result = run_rule(settings, progress=show_progress(args.quiet))
    text = rule_markdown(result)
    write_text(Path(args.work_dir) / "rule.md", text)
    write_json(Path(args.work_dir) / "rule.json", {**asdict(result), "chosen": list(result.chosen)})
    print(text)
    print(json.dumps({"chosen": list(result.chosen)}))
    return result


if __name__ == "__main__":
    run(parse_args, main)
