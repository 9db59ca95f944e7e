"""Reading untrusted files: hostile Matrix Market headers, a child process with limits, no file text
in messages, very wide tables and huge folders. Every hostile file is made here, in tmp_path."""

from __future__ import annotations

import gzip
import sys
import time
import warnings
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from scgraph_core import data, safe_read
from scgraph_core.data import DataWarning, read
from scgraph_core.data import io as data_io
from scgraph_core.errors import DataError
from scgraph_core.safe_read import read_isolated

SECRET = "hunter2-SECRET-9f3a"


def _names(folder: Path, n_genes: int, n_cells: int) -> None:
    (folder / "features.tsv").write_text(
        "".join(f"ENSG{i:011d}\tG{i}\tGene Expression\n" for i in range(n_genes))
    )
    (folder / "barcodes.tsv").write_text("".join(f"CELL{i}-1\n" for i in range(n_cells)))


def _mtx_folder(folder: Path, header: str, body: str = "1 1 1\n", n_genes: int = 3, n_cells: int = 5) -> Path:
    folder.mkdir(parents=True)
    _names(folder, n_genes, n_cells)
    (folder / "matrix.mtx").write_text(header + body)
    return folder


def _h5ad(path: Path, n_cells: int = 40, n_genes: int = 12) -> Path:
    X = np.random.default_rng(0).poisson(1.0, (n_cells, n_genes)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(X))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.obs["celltype"] = ["a", "b"] * (n_cells // 2)
    adata.write_h5ad(path)
    return path


# 1. Matrix Market headers are checked before scipy reads the body -------------------------------


def test_coordinate_mtx_claiming_more_values_than_cells_is_refused(tmp_path):
    folder = _mtx_folder(
        tmp_path / "m", "%%MatrixMarket matrix coordinate integer general\n%\n3 5 100000000000\n"
    )
    with pytest.raises(DataError, match=r"claims 100,000,000,000 stored values in a 3 x 5 matrix"):
        read(folder)


def test_coordinate_mtx_claiming_more_values_than_its_bytes_is_refused(tmp_path):
    n_genes, n_cells = 1000, 2000
    header = f"%%MatrixMarket matrix coordinate integer general\n{n_genes} {n_cells} 1000000\n"
    folder = _mtx_folder(tmp_path / "m", header, n_genes=n_genes, n_cells=n_cells)
    with pytest.raises(DataError, match=r"claims 1,000,000 stored values.*but the file is \d+ bytes"):
        read(folder)


def test_dense_array_mtx_in_a_zip_claiming_3e10_values_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    _names(folder, 100_000, 300_000)
    with gzip.open(folder / "matrix.mtx.gz", "wt") as fh:
        fh.write("%%MatrixMarket matrix array real general\n% a comment\n100000 300000\n1\n2\n")
    path = tmp_path / "sample.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for p in folder.iterdir():
            zf.write(p, f"filtered_feature_bc_matrix/{p.name}")
    with pytest.raises(DataError, match=r"30,000,000,000 values \(dense array format\).*bytes of gzip"):
        read(path)


def test_mtx_size_must_match_the_name_files_before_reading(tmp_path, monkeypatch):
    folder = _mtx_folder(tmp_path / "m", "%%MatrixMarket matrix coordinate integer general\n4 5 1\n")
    monkeypatch.setattr(data_io.scipy.io, "mmread", lambda *a, **k: pytest.fail("mmread was called"))
    with pytest.raises(DataError, match=r"4 x 5.*3 genes.*5 cells.*do not belong together"):
        read(folder)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("%%MatrixMarket tensor coordinate integer general\n3 5 1\n", "first line is not"),
        ("%%MatrixMarket matrix sparse integer general\n3 5 1\n", "unknown format"),
        ("%%MatrixMarket matrix coordinate integer general\n%only comments\n", "ends before its size line"),
        ("%%MatrixMarket matrix coordinate integer general\n3 5\n", "3 whole numbers"),
        ("%%MatrixMarket matrix coordinate integer general\n3 5 -1\n", "3 whole numbers"),
        ("%%MatrixMarket matrix array real symmetric\n3 5\n", "must be square"),
    ],
)
def test_malformed_mtx_header_is_a_data_error(tmp_path, header, problem):
    folder = _mtx_folder(tmp_path / "m", header, body="")
    with pytest.raises(DataError, match=f"not a valid Matrix Market file: .*{problem}"):
        read(folder)


def test_real_mtx_still_reads_both_orientations(tmp_path):
    body = "1 1 3\n2 4 1\n3 5 7\n"
    folder = _mtx_folder(tmp_path / "m", "%%MatrixMarket matrix coordinate integer general\n3 5 3\n", body)
    adata = read(folder)
    assert adata.shape == (5, 3) and adata.X.sum() == 11
    cells_first = _mtx_folder(
        tmp_path / "t", "%%MatrixMarket matrix coordinate real general\n5 3 1\n", "2 2 1.5\n"
    )
    assert read(cells_first).X[1, 1] == pytest.approx(1.5)


# 2. Reading in a child process with limits ----------------------------------------------------------


def test_isolated_read_equals_in_process_read(tmp_path):
    path = _h5ad(tmp_path / "x.h5ad")
    here, there = read(path), read_isolated(path)
    assert there.shape == here.shape and there.X.dtype == np.float32
    assert (there.X != here.X).nnz == 0
    assert list(there.obs["celltype"]) == list(here.obs["celltype"])
    assert there.uns["scgraph_source"] == here.uns["scgraph_source"]


def test_isolated_read_passes_data_errors_and_warnings_through(tmp_path):
    folder = _mtx_folder(
        tmp_path / "m", "%%MatrixMarket matrix coordinate integer general\n3 5 100000000000\n"
    )
    with pytest.raises(DataError) as isolated:
        read_isolated(folder)
    with pytest.raises(DataError) as in_process:
        read(folder)
    assert str(isolated.value) == str(in_process.value)
    table = tmp_path / "plain.csv"
    table.write_text("a,b,c\nr1,1,2,3\nr2,4,5,6\n")
    with pytest.warns(DataWarning, match="read rows as genes"):
        assert read_isolated(table).shape == (3, 2)


def test_isolated_read_checks_the_path_before_starting_a_child(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_read, "_run_child", lambda *a: pytest.fail("a child was started"))
    with pytest.raises(DataError, match="No file or folder"):
        read_isolated(tmp_path / "missing.h5ad")
    assert read_isolated(data.DEMO_PATH).uns["scgraph_source"]["format"] == "builtin"


def test_isolated_read_stops_at_the_time_limit(tmp_path, monkeypatch):
    path = _h5ad(tmp_path / "x.h5ad")
    monkeypatch.setenv("SCGRAPH_READ_TIMEOUT_S", "0.05")  # less than the child needs to start
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"took longer than 0.05 s.*SCGRAPH_READ_TIMEOUT_S"):
        read_isolated(path)
    assert time.perf_counter() - started < 10


def test_isolated_read_reports_running_out_of_memory(tmp_path):
    # An h5ad "bomb": a 20,000 x 20,000 dense X (1.6 GB as float32) that compresses to almost nothing.
    n = 20_000
    path = tmp_path / "bomb.h5ad"
    ad.AnnData(sp.csr_matrix((n, n), dtype=np.float32)).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        del f["X"]
        x = f.create_dataset("X", shape=(n, n), dtype="f4", chunks=(1000, 1000), compression="gzip")
        x.attrs["encoding-type"] = "array"
        x.attrs["encoding-version"] = "0.2.0"
    assert path.stat().st_size < 5e6
    with pytest.raises(DataError, match=r"bomb.h5ad needs more than 1,000 MB to read"):
        read_isolated(path, memory_mb=1000)


def test_isolated_read_reports_a_killed_reader(tmp_path, monkeypatch):
    path = _h5ad(tmp_path / "x.h5ad")
    abort = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGABRT)"]
    monkeypatch.setattr(safe_read, "_child_command", lambda folder: abort)
    with pytest.raises(DataError, match=r"x.h5ad could not be read: the reader stopped \(signal SIGABRT\)"):
        read_isolated(path)


def test_isolated_read_reports_a_reader_out_of_memory_in_cpp(tmp_path, monkeypatch):
    path = _h5ad(tmp_path / "x.h5ad")
    crash = [
        sys.executable,
        "-c",
        "import os, signal, sys; sys.stderr.write('terminate called after throwing an instance of "
        "std::bad_alloc\\n'); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGABRT)",
    ]
    monkeypatch.setattr(safe_read, "_child_command", lambda folder: crash)
    with pytest.raises(DataError, match=r"needs more than 512 MB to read"):
        read_isolated(path, memory_mb=512)


def test_isolated_read_settings_are_checked(monkeypatch, tmp_path):
    from scgraph_core.errors import ConfigError

    monkeypatch.setenv("SCGRAPH_READ_MEMORY_MB", "lots")
    with pytest.raises(ConfigError, match="SCGRAPH_READ_MEMORY_MB"):
        read_isolated(_h5ad(tmp_path / "x.h5ad"))
    monkeypatch.delenv("SCGRAPH_READ_MEMORY_MB")
    timeout, memory = safe_read.read_limits()
    assert timeout == 600 and memory > 100


def test_the_app_reads_files_in_a_child(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from scgraph_app import cache

    path = _h5ad(tmp_path / "app.h5ad")
    monkeypatch.setenv("SCGRAPH_READ_TIMEOUT_S", "0.05")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # streamlit's "no runtime" notes
        with pytest.raises(DataError, match="took longer than"):
            cache.dataset({"path": str(path)})


# 3. No file content in any message ---------------------------------------------------------------


def _message(path: Path, **kwargs) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            read(path, **kwargs)
        except DataError as exc:
            return str(exc) + "".join(str(w.message) for w in caught)
    pytest.fail(f"{path.name} was read without an error")


def test_a_secret_in_a_csv_cell_is_not_quoted(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_text(f",g1,g2\ncellA,1,2\ncellB,3,{SECRET}\n")
    message = _message(path)
    assert SECRET not in message and "cellB" not in message and "g2" not in message
    assert "line 3, field 3" in message


def test_the_first_line_of_a_misnamed_file_is_not_quoted(tmp_path):
    for name in ("passwd.h5ad", "id_rsa.loom", "notes.zip"):
        path = tmp_path / name
        path.write_text(f"root:x:0:0:{SECRET}:/root:/bin/bash\n")
        message = _message(path)
        assert SECRET not in message and "root:x" not in message
    key = tmp_path / "key.h5"
    key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n")
    message = _message(key)
    assert "BEGIN" not in message and SECRET not in message and "text file" in message


@pytest.mark.parametrize("fmt", ["csv", "tsv", "h5ad", "zip", "10x_h5"])
def test_an_env_file_is_not_quoted_whatever_it_is_read_as(tmp_path, fmt):
    path = tmp_path / ".env"
    path.write_text(f"DB_PASSWORD={SECRET}\nexport API_KEY={SECRET}x\n")
    message = _message(path, fmt=fmt)
    assert SECRET not in message and "PASSWORD" not in message and "API_KEY" not in message


def test_a_secret_in_mtx_or_zip_names_is_not_quoted(tmp_path):
    folder = _mtx_folder(tmp_path / "m", f"%%MatrixMarket matrix {SECRET} integer general\n3 5 1\n")
    assert SECRET not in _message(folder)
    body = f"1 1 1\n{SECRET} 2 2\n"
    (folder / "matrix.mtx").write_text(f"%%MatrixMarket matrix coordinate integer general\n3 5 2\n{body}")
    assert SECRET not in _message(folder)
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr(f"../{SECRET}/matrix.mtx", "x")
    assert SECRET not in _message(bad_zip)


def test_numeric_looking_header_and_ragged_rows_are_not_quoted(tmp_path):
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("0.5,1.5,2.5\nr1,1,2\n")
    assert "0.5" not in _message(numbers)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(f",g1,g2\ncellA,1,2\ncellB,1,2,{SECRET}\n")
    message = _message(ragged)
    assert SECRET not in message and "line 3 has 4 fields where 3 were expected" in message


def test_duplicate_names_warning_does_not_quote_names(tmp_path):
    path = tmp_path / "dups.csv"
    path.write_text(f",{SECRET},{SECRET},g3\ncellA,1,2,3\ncellB,4,5,6\n")
    with pytest.warns(DataWarning) as caught:
        read(path, orientation="cells_x_genes")
    assert all(SECRET not in str(w.message) for w in caught)


# 4. Very wide text tables --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "first row"])
def test_a_table_of_a_million_columns_is_refused_fast(tmp_path, where):
    n = 1_000_000
    path = tmp_path / "wide.csv"
    if where == "header":
        path.write_text("," + ",".join(f"g{i}" for i in range(n)) + "\n" + "c1," + ",".join(["1"] * n) + "\n")
    else:
        path.write_text(",g1\n" + "c1," + ",".join(["1"] * n) + "\n")
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"1,000,001 fields .*200,000 columns.*transposed.*\.h5ad"):
        read(path)
    assert time.perf_counter() - started < 3


def test_the_first_data_row_is_parsed_with_the_rest(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("\n\tg1\tg2\n\ncellA\t1\t2\ncellB\t3\t4\n")
    adata = read(path, orientation="cells_x_genes")
    assert list(adata.obs_names) == ["cellA", "cellB"]
    np.testing.assert_array_equal(
        np.asarray(adata.X.todense() if sp.issparse(adata.X) else adata.X), [[1, 2], [3, 4]]
    )


# 5. Folder search is bounded ------------------------------------------------------------------------


def test_folder_search_stops_at_the_entry_cap(tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    for i in range(data.MAX_SCAN_ENTRIES + 50):
        (big / f"f{i:05d}.txt").touch()
    with pytest.raises(DataError, match=r"No matrix\.mtx.*looked at only the first 2,000 entries"):
        read(big)


def test_folder_search_counts_entries_per_level(tmp_path, monkeypatch):
    root = tmp_path / "root"
    for i in range(30):
        (root / f"d{i:02d}" / "inner").mkdir(parents=True)
    seen: list[str] = []
    listing = data_io._list_folder

    def counting(folder, budget):
        entries, more = listing(folder, budget)
        seen.extend(e.path for e in entries)
        return entries, more

    monkeypatch.setattr(data_io, "_list_folder", counting)
    monkeypatch.setattr(data_io, "MAX_SCAN_ENTRIES", 10)
    scan = data_io._find_mtx(root)
    assert scan.capped and scan.matrices == []
    assert len(seen) <= 3 * 10
