"""README's two fresh-machine commands stay true: CI runs the test command, the recipe it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_test_command():
    test_cmd = next(b.strip() for b in _bash_blocks() if b.strip().endswith("pytest"))
    ci = (ROOT / ".ci" / "run").read_text()
    for part in test_cmd.split(" && "):
        part = part.replace("pip install", "python3 -m pip install -q").replace("pytest", "python3 -m pytest")
        assert part in ci, f".ci/run does not run {part!r} from the README"


def test_run_command_names_an_existing_recipe():
    run_cmd = _bash_blocks()[0]
    recipe = re.search(r"r1kit train (\S+)", run_cmd).group(1)
    assert (ROOT / recipe).is_file()
