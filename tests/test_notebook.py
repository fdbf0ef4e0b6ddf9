"""examples/quickstart.ipynb runs from top to bottom and draws its search result, so it cannot rot."""

import base64
import io
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient
from PIL import Image

pytestmark = pytest.mark.slow  # multi-process or end-to-end: `-m "not slow"` skips them

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
KERNEL = "python3"


def _source_of(nb: nbformat.NotebookNode, marker: str) -> nbformat.NotebookNode:
    cells = [cell for cell in nb.cells if cell.cell_type == "code" and marker in cell.source]
    assert len(cells) == 1, f"expected one code cell containing {marker!r}, found {len(cells)}"
    return cells[0]


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == KERNEL
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {index} has stored outputs"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.fail(f"no {KERNEL!r} Jupyter kernel: install one with `python -m ipykernel install --user`")
    # The kernel inherits this environment: no hub, no W&B, temporary files under tmp_path, and one
    # BLAS/OpenMP thread (a tiny model on a CPU shared with other jobs runs ~10x slower with more).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, at the first failing cell

    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.execution_count is not None, f"cell {index} did not run"
            errors = [output for output in cell.outputs if output.output_type == "error"]
            assert not errors, f"cell {index} raised {errors[0].ename}: {errors[0].evalue}"

    metrics = _source_of(nb, "chance_metrics(")
    table = next(output for output in metrics.outputs if output.output_type == "execute_result")
    for row in ("random ranking (chance)", "untrained", "after both stages"):
        assert row in table.data["text/plain"]
    for column in ("R1", "R5", "R10", "mAP", "mINP"):
        assert column in table.data["text/plain"]

    search = _source_of(nb, "matches=")
    pictures = [
        output.data["image/png"] for output in search.outputs if "image/png" in output.get("data", {})
    ]
    assert len(pictures) == 1, "the search cell displayed no image"
    picture = Image.open(io.BytesIO(base64.b64decode(pictures[0])))
    assert picture.format == "PNG"
    assert picture.width >= 480 and picture.height >= 192  # draw_retrieval's minimum width, one thumbnail row
    assert list(tmp_path.glob("promptdecouple-quickstart-*/RSTPReid/imgs/*")), "the data went elsewhere"
