"""The notebooks in notebooks/ run top to bottom and are stored without outputs.

Set TWINLOOP_NOTEBOOK_OUT=DIR to keep the executed copies (with their figures) in DIR.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat, nbclient and jupyter_client")
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

from tests.helpers import REPO  # noqa: E402

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 120


class ThisPythonKernelManager(AsyncKernelManager):
    """The python3 kernel, started by the interpreter running the tests (the project's virtualenv).

    A user-wide python3 kernel spec can name another Python, which would lack the project.
    """

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        return [sys.executable, "-m", "ipykernel_launcher", "-f", self.connection_file, *(extra_arguments or [])]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell runs without an error, in a kernel started from notebooks/."""
    monkeypatch.setenv("TWINLOOP_NOTEBOOK_TEST", "1")  # notebooks skip what would block, like %tensorboard
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' mkdtemp() outputs land in tmp_path
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        kernel_manager_class=ThisPythonKernelManager,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute()
    finally:  # a failed run is kept too: its last output shows the error in place
        if out := os.environ.get("TWINLOOP_NOTEBOOK_OUT"):
            Path(out).mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, Path(out) / path.name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    """Code cells are committed with no outputs and no execution count."""
    notebook = nbformat.read(path, as_version=4)
    code_cells = [(i, cell) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    dirty = [i for i, cell in code_cells if cell.get("outputs") or cell.get("execution_count") is not None]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing"
