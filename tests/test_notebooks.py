"""The notebooks run top to bottom, headless, against one shared short run; they are stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["inspect_rollouts", "training_curves", "custom_reward"]


def test_every_notebook_is_listed_and_stored_without_outputs():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}.ipynb holds outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_headless(name, tiny_run_dir, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("R1KIT_RUN", str(tiny_run_dir))  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # Run from notebooks/, as a person opening it would; any failing cell raises CellExecutionError.
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if name == "training_curves":
        images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
        assert len(images) >= 3  # reward, completion length, clip fraction at least, drawn inline
