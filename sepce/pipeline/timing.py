"""Wall times of a work directory: ``timings.json`` (each step's seconds, over resumed invocations) and
``invocations.json`` (each invocation of the script with the commit it ran; the wall time of a resumed pipeline is
their sum)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Sequence

from sepce.io import write_text
from sepce.paths import code_version


def record_time(timings: Dict[str, dict], stage: str, name: str, status: str, seconds: float, resumes: bool) -> bool:
    """Book one step's time in ``timings`` (step name -> entry); returns whether the entry changed.

    A skipped step keeps the time it took when it ran. A step that ``resumes`` its own partial output
    (``ScriptStep.resumes``: data and image generation, the attack) adds each run's time to what was booked before,
    so a step interrupted and resumed counts all its work and a re-run that only finds its output already there adds
    the seconds of that check instead of replacing the real time. A step that starts over (training, metrics, the
    table) books its last run.
    """
    before = timings.get(name)
    if status != "done" and before is not None:
        return False
    if status == "done" and resumes and before is not None and before["status"] == "done":
        seconds += float(before["seconds"])
    timings[name] = {"stage": stage, "name": name, "status": status, "seconds": round(seconds, 1)}
    return True


def book_invocation(path: Path, entry: dict) -> List[dict]:
    """Add (or update, matched on its ``started`` stamp) one invocation of the benchmark script in the JSON list at
    ``path``; returns the whole list. The wall time of a resumed benchmark is the sum over its invocations."""
    before = json.loads(path.read_text()) if path.is_file() else []
    invocations = [i for i in before if i["started"] != entry["started"]] + [entry]
    write_text(path, json.dumps(invocations, indent=2) + "\n")
    return invocations


class Timer:
    """Wall-clock seconds of a block."""

    def __enter__(self) -> Timer:
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.start


class Booking:
    """The booking of one invocation in ``work``: step times go to ``timings.json`` as they finish
    (:func:`record_time`), the invocation's wall time so far to ``invocations.json`` with each of them and on every
    :meth:`book` (so an invocation killed without a chance to clean up still counts up to its last step)."""

    def __init__(self, work: Path, invocation: dict):
        self.timings_path = Path(work) / "timings.json"
        self.invocations_path = Path(work) / "invocations.json"
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        self.invocation = {"started": stamp, "commit": code_version(), **invocation}
        self.started = time.monotonic()
        self.timings: Dict[str, dict] = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}

    def record(self, stage: str, name: str, status: str, seconds: float, resumes: bool) -> None:
        if record_time(self.timings, stage, name, status, seconds, resumes):
            write_text(self.timings_path, json.dumps(self.timings, indent=2) + "\n")
            self.book()

    def book(self) -> List[dict]:
        """This invocation's wall time so far, booked with the earlier (resumed) ones; returns them all."""
        seconds = round(time.monotonic() - self.started, 1)
        return book_invocation(self.invocations_path, {**self.invocation, "seconds": seconds})

    def ordered(self, names: Sequence[str]) -> List[dict]:
        """The booked step times in the order of ``names`` (a plan's step names), others after by name."""
        order = {name: i for i, name in enumerate(names)}
        return sorted(self.timings.values(), key=lambda t: (order.get(t["name"], len(order)), t["name"]))
