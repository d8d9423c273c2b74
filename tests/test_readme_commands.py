"""Every repository command in README.md's shell blocks parses with its script's own argument parser, exactly as
written: no unknown flag, no invalid choice, no missing required argument. (What the commands do is tested end to
end on tiny models by the script tests; the real checkpoint is not available here.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = re.compile(r"^(?:train-scripts|eval-scripts|bench)/[\w-]+\.py$")


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, argv) of every ``python <script> ...`` in the ```bash blocks (``\\`` continuations joined,
    ``&&`` chains split, comments dropped; a literal ``...`` is left out)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["timeout"]:  # timeout SECONDS python ...
                    words = words[2:]
                if len(words) >= 2 and words[0] == "python" and SCRIPT.match(words[1]):
                    out.append((words[1], [w for w in words[2:] if w != "..."]))
    return out


COMMANDS = readme_commands((REPO / "README.md").read_text())


def test_the_readme_has_its_commands():
    scripts = {script for script, _ in COMMANDS}
    assert len(COMMANDS) >= 25
    assert {"eval-scripts/world-benchmark.py", "train-scripts/CiE.py", "train-scripts/UCE.py"} <= scripts


@pytest.mark.parametrize("script,argv", COMMANDS, ids=[f"{i}-{Path(s).stem}" for i, (s, _) in enumerate(COMMANDS)])
def test_readme_command_parses(script, argv, load_script):
    module = load_script(script)
    try:
        module.parse_args(argv)
    except SystemExit as e:  # argparse's error exit (status 2), or the exit code of --help
        pytest.fail(f"README command `python {script} {' '.join(argv)}` does not parse (exit {e.code})")
