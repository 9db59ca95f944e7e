"""Nothing lost after training: a failed write keeps the trained weights, and `runs finish` completes the run."""

from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scgraph_core import pipeline, runs
from scgraph_core.__main__ import main
from scgraph_core.errors import RunError
from scgraph_core.runs import Run
from tests.helpers import toy_counts

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--preset", "quick", "--hidden", "16,16", "--heads", "2", "--latent", "8", "--epochs", "6",
    "--n-hvg", "40", "--n-graph-genes", "30", "--min-cluster-sizes", "5,10", "--min-samples", "3,5",
    "--seed", "3", "--label-key", "celltype", "--quiet",
]  # fmt: skip


@pytest.fixture
def counts_file(tmp_path) -> Path:
    path = tmp_path / "toy.h5ad"
    runs.write_h5ad(toy_counts(n_cells=150, n_genes=60), path)  # writes pandas 3 string columns too
    return path


def _train(counts_file: Path, out: Path) -> int:
    return main(["train", "--model", "cellvgae", "--input", str(counts_file), "--out", str(out), *TINY])


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.is_file()]


def test_a_full_disk_while_writing_keeps_the_model_and_finish_completes_it(
    counts_file, tmp_path, monkeypatch, capsys
):
    reference = tmp_path / "reference"
    assert _train(counts_file, reference) == 0

    def full_disk(self, *args, **kwargs):
        Path(args[0]).write_bytes(b"partial")  # a temporary file half written when the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", full_disk)
    failed = tmp_path / "failed"
    assert _train(counts_file, failed) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and "Traceback" not in err
    run = Run(failed)
    assert run.state == "failed"
    assert "no space left on device" in run.status["message"]
    assert f"runs finish {run.id}" in run.status["message"]
    assert not (failed / "result.h5ad").exists() and not _leftovers(failed)
    assert run.saved_stages() == ["stage0_train"]

    monkeypatch.undo()
    assert main(["runs", "finish", str(failed)]) == 0
    assert run.state == "done"
    done, ref = ad.read_h5ad(failed / "result.h5ad"), ad.read_h5ad(reference / "result.h5ad")
    # Same seed, same saved weights: the finished run is the run that would have been written.
    np.testing.assert_allclose(done.obsm["X_cellvgae"], ref.obsm["X_cellvgae"], rtol=1e-5, atol=1e-6)
    assert (done.obs["cellvgae_cluster"] == ref.obs["cellvgae_cluster"]).all()
    assert json.loads((failed / "metrics.json").read_text())["ari"] == pytest.approx(
        json.loads((reference / "metrics.json").read_text())["ari"]
    )
    # A finished run is not finished twice.
    assert main(["runs", "finish", str(failed)]) == 2
    assert "already finished" in capsys.readouterr().err


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_crash_while_writing_results_loses_nothing(counts_file, tmp_path):
    """A real write failure in a real process: files may not grow past a limit that the result passes."""
    probe = tmp_path / "probe"
    assert _train(counts_file, probe) == 0
    result_size = (probe / "result.h5ad").stat().st_size
    others = max(p.stat().st_size for p in probe.rglob("*") if p.is_file() and p.name != "result.h5ad")
    assert others < result_size // 2, "the toy result must be the largest file for this test"
    limit = (others + result_size) // 2
    out = tmp_path / "limited"
    proc = subprocess.run(
        [sys.executable, "-m", "scgraph_core", "train", "--model", "cellvgae", "--input", str(counts_file),
         "--out", str(out), *TINY],
        capture_output=True, text=True, cwd=REPO, preexec_fn=_limit_file_size(limit), timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    run = Run(out)
    assert run.state == "failed"  # recorded by the process, or read from its death
    assert not (out / "result.h5ad").exists() and not _leftovers(out)
    assert run.saved_stages() == ["stage0_train"]
    assert main(["runs", "finish", str(out)]) == 0
    assert run.state == "done" and (out / "result.h5ad").is_file()


def test_finish_refuses_a_run_without_saved_training(tmp_path, capsys):
    run = Run.create_at(tmp_path / "empty", model="cellvgae", config={"model": "cellvgae"})
    run.set_status("failed", "the input was missing")
    with pytest.raises(RunError, match="no saved training stages"):
        pipeline.finish(run)
    assert main(["runs", "finish", str(tmp_path / "empty")]) == 2


@pytest.mark.parametrize("infer_string", [False, True])
def test_results_with_text_columns_of_both_pandas_kinds_are_written(tmp_path, infer_string):
    """pandas 3 stores text as string arrays, which anndata refuses unless asked: such a run was lost."""
    with pd.option_context("future.infer_string", infer_string):
        adata = toy_counts(n_cells=20, n_genes=5)
        adata.obs["note"] = pd.array(["a", None] * 10, dtype="string")
        adata.obs["plain"] = pd.Series(["x", "y"] * 10, index=adata.obs_names, dtype=object)
        adata.obs["inferred"] = pd.Series([f"c{i}" for i in range(20)], index=adata.obs_names)
        adata.uns["table"] = pd.DataFrame({"gene": ["g1", "g2"], "score": [1.0, 2.0]})
        runs.write_h5ad(adata, tmp_path / "result.h5ad")
    back = ad.read_h5ad(tmp_path / "result.h5ad")
    assert list(back.obs["inferred"].astype(str))[:2] == ["c0", "c1"]
    assert list(back.uns["table"]["gene"].astype(str)) == ["g1", "g2"]


def test_the_free_space_is_checked_before_writing(tmp_path, monkeypatch):
    adata = toy_counts(n_cells=50, n_genes=20)
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda path: type("U", (), {"free": 10})())
    with pytest.raises(RunError, match="No space left on device"):
        runs.write_h5ad(adata, tmp_path / "result.h5ad")
    assert not list(tmp_path.iterdir())


def test_out_in_a_place_that_cannot_be_written_fails_first(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # The input does not exist either: the folder must be checked first, before any reading.
    code = main(["train", "--model", "cellvgae", "--input", str(tmp_path / "absent.h5ad"),
                 "--out", str(blocker / "run"), "--quiet"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "Cannot write the run folder" in err and "absent.h5ad" not in err and "internal error" not in err


def test_a_label_with_a_slash_stays_one_key_in_result_h5ad(tmp_path):
    import warnings

    from scgraph_core.results import plain

    uns = {"metrics": plain({"label_counts": {"CD4+/CD45RA+": 12, "B": 3}, "none": None})}
    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32), uns={"scbignn": uns})
    path = tmp_path / "r.h5ad"
    adata.write_h5ad(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "written without encoding metadata" for a stray nested group
        back = ad.read_h5ad(path)
    counts = back.uns["scbignn"]["metrics"]["label_counts"]
    assert counts == {"CD4+\u2215CD45RA+": 12, "B": 3} and "none" not in back.uns["scbignn"]["metrics"]
