"""Tests for scgraph_core.data: readers, validation, summary, preparation and masking."""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from scgraph_core.data import (
    DataWarning,
    PrepareSpec,
    detect_x_kind,
    load_demo,
    mask_nonzero,
    prepare,
    read,
    summarize,
    validate,
)
from scgraph_core.data.preparation import _per_gene_scaled
from scgraph_core.errors import ConfigError, DataError
from scgraph_core.params import from_dict, to_dict

N_CELLS, N_GENES = 30, 12


def barcodes(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    return ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(n)]


def gene_names(n: int) -> list[str]:
    return [f"GENE{i}" for i in range(n)]


def counts_matrix(n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0) -> np.ndarray:
    """Sparse-ish whole-number counts with gene-specific means, every gene and cell non-empty."""
    rng = np.random.default_rng(seed)
    means = rng.gamma(0.6, 2.0, n_genes) + 0.05
    X = rng.poisson(means[None, :] * rng.gamma(2.0, 0.5, (n_cells, 1)))
    X[np.arange(n_cells), np.arange(n_cells) % n_genes] += 1
    return X.astype(np.float32)


def dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def counts_adata(n_cells: int = 80, n_genes: int = 40, seed: int = 0) -> ad.AnnData:
    X = counts_matrix(n_cells, n_genes, seed)
    adata = ad.AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame(
            {"celltype": pd.Categorical(np.array(["T", "B"])[np.arange(n_cells) % 2])},
            index=[f"cell{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(index=gene_names(n_genes)),
    )
    adata.obsm["X_umap"] = np.random.default_rng(seed).normal(size=(n_cells, 2))
    return adata


# 10x writers -----------------------------------------------------------------------------------


def write_10x_h5(path: Path, X: np.ndarray, cells: list[str], genes: list[str], types=None) -> None:
    """10x v3 layout: /matrix holds the genes x cells CSC, i.e. the cells x genes CSR arrays."""
    csr = sp.csr_matrix(X)
    types = types or ["Gene Expression"] * len(genes)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(cells, dtype="S")
        m["data"] = csr.data.astype(np.int32)
        m["indices"] = csr.indices.astype(np.int64)
        m["indptr"] = csr.indptr.astype(np.int64)
        m["shape"] = np.array([X.shape[1], X.shape[0]], dtype=np.int32)
        feats = m.create_group("features")
        feats["id"] = np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S")
        feats["name"] = np.array(genes, dtype="S")
        feats["feature_type"] = np.array(types, dtype="S")
        feats["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
        feats["_all_tag_keys"] = np.array(["genome"], dtype="S")


def _write_text(path: Path, text: str) -> None:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def write_mtx_folder(folder: Path, X: np.ndarray, cells, genes, *, v3: bool, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    buf = folder / "matrix.mtx"
    scipy.io.mmwrite(buf, sp.coo_matrix(X.T.astype(np.int64)))
    if gz:
        with open(buf, "rb") as src, gzip.open(folder / "matrix.mtx.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        buf.unlink()
    ids = [f"ENSG{i:011d}" for i in range(len(genes))]
    if v3:
        rows = [f"{i}\t{g}\tGene Expression" for i, g in zip(ids, genes, strict=True)]
        _write_text(folder / f"features.tsv{ext}", "\n".join(rows) + "\n")
    else:
        rows = [f"{i}\t{g}" for i, g in zip(ids, genes, strict=True)]
        _write_text(folder / f"genes.tsv{ext}", "\n".join(rows) + "\n")
    _write_text(folder / f"barcodes.tsv{ext}", "\n".join(cells) + "\n")
    return folder


def assert_contract(adata: ad.AnnData, fmt: str, shape=(N_CELLS, N_GENES)) -> None:
    assert adata.shape == shape
    assert adata.X.dtype == np.float32
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    assert adata.uns["scgraph_source"]["format"] == fmt


# Readers ---------------------------------------------------------------------------------------


def test_read_h5ad_keeps_values_and_sparsifies(tmp_path):
    X = counts_matrix()
    X[:, :8] = 0  # mostly zeros: the reader stores it as CSR
    src = ad.AnnData(X.astype(np.int64), var=pd.DataFrame(index=gene_names(N_GENES)))
    src.obs_names = barcodes(N_CELLS)
    path = tmp_path / "data.h5ad"
    src.write_h5ad(path)
    adata = read(path)
    assert_contract(adata, "h5ad")
    assert sp.isspmatrix_csr(adata.X)
    np.testing.assert_array_equal(adata.X.toarray(), X)
    assert adata.uns["scgraph_source"]["path"] == str(path)


def test_read_h5ad_genes_x_cells_transposes(tmp_path):
    src = ad.AnnData(counts_matrix().T)
    path = tmp_path / "t.h5ad"
    src.write_h5ad(path)
    assert read(path, orientation="genes_x_cells").shape == (N_CELLS, N_GENES)


def test_read_10x_h5_v3_keeps_gene_expression(tmp_path):
    X = counts_matrix(N_CELLS, N_GENES + 1)
    genes = [*gene_names(N_GENES), "CD3_TotalSeqB"]
    types = ["Gene Expression"] * N_GENES + ["Antibody Capture"]
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    write_10x_h5(path, X, barcodes(N_CELLS), genes, types)
    adata = read(path)
    assert_contract(adata, "10x_h5")
    assert "CD3_TotalSeqB" not in adata.var_names
    np.testing.assert_array_equal(adata.X.toarray(), X[:, :N_GENES])
    assert adata.var["gene_ids"].iloc[0] == "ENSG00000000000"


@pytest.mark.parametrize(("v3", "gz"), [(False, False), (True, True), (True, False)])
def test_read_10x_mtx_folder(tmp_path, v3, gz):
    X = counts_matrix()
    folder = write_mtx_folder(tmp_path / "mtx", X, barcodes(N_CELLS), gene_names(N_GENES), v3=v3, gz=gz)
    adata = read(folder)
    assert_contract(adata, "10x_mtx")
    np.testing.assert_array_equal(adata.X.toarray(), X)
    assert list(adata.var_names) == gene_names(N_GENES)
    assert adata.var["gene_ids"].iloc[1] == "ENSG00000000001"


def test_read_10x_mtx_nested_and_file_path(tmp_path):
    X = counts_matrix()
    inner = tmp_path / "outs" / "filtered_gene_bc_matrices" / "hg19"
    write_mtx_folder(inner, X, barcodes(N_CELLS), gene_names(N_GENES), v3=False, gz=False)
    nested = read(tmp_path / "outs")
    assert nested.uns["scgraph_source"]["member"] == "filtered_gene_bc_matrices/hg19"
    assert read(inner / "matrix.mtx").shape == (N_CELLS, N_GENES)


def test_read_10x_mtx_problems(tmp_path):
    X = counts_matrix()
    folder = write_mtx_folder(tmp_path / "m", X, barcodes(N_CELLS), gene_names(N_GENES), v3=True, gz=False)
    (folder / "barcodes.tsv").write_text("\n".join(barcodes(N_CELLS - 3)) + "\n")
    with pytest.raises(DataError, match="do not belong together"):
        read(folder)
    (folder / "barcodes.tsv").unlink()
    with pytest.raises(DataError, match=r"no barcodes\.tsv"):
        read(folder)
    plain = tmp_path / "counts.mtx"
    shutil.copy(folder / "matrix.mtx", plain)
    with pytest.raises(DataError, match="without 10x naming"):
        read(plain)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DataError, match=r"matrix\.mtx"):
        read(empty)


def _zip_folder(folder: Path, zip_path: Path, prefix: str) -> None:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{prefix}{p.name}")


@pytest.mark.parametrize("prefix", ["", "filtered_feature_bc_matrix/"])
def test_read_zip_of_mtx_folder(tmp_path, prefix):
    X = counts_matrix()
    folder = write_mtx_folder(tmp_path / "m", X, barcodes(N_CELLS), gene_names(N_GENES), v3=True, gz=True)
    path = tmp_path / "sample.zip"
    _zip_folder(folder, path, prefix)
    adata = read(path)
    assert_contract(adata, "zip")
    np.testing.assert_array_equal(adata.X.toarray(), X)


@pytest.mark.parametrize("member", ["../evil/matrix.mtx", "/abs/matrix.mtx"])
def test_read_zip_rejects_unsafe_members(tmp_path, member):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, "x")
    with pytest.raises(DataError, match="unsafe"):
        read(path)
    assert not (tmp_path / "evil").exists()


def test_read_zip_without_matrix(tmp_path):
    path = tmp_path / "notes.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.md", "nothing here")
    with pytest.raises(DataError, match="no 10x matrix folder"):
        read(path)


def test_read_zip_of_h5ad_and_h5_named_h5ad(tmp_path):
    h5ad_path = tmp_path / "inner.h5ad"
    ad.AnnData(counts_matrix()).write_h5ad(h5ad_path)
    zipped = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(h5ad_path, "data/inner.h5ad")
    source = read(zipped).uns["scgraph_source"]
    assert source["inner_format"] == "h5ad" and source["member"] == "data/inner.h5ad"
    as_h5 = tmp_path / "saved.h5"
    shutil.copy(h5ad_path, as_h5)
    assert read(as_h5).uns["scgraph_source"]["format"] == "h5ad"


def test_corrupt_mtx(tmp_path):
    folder = write_mtx_folder(
        tmp_path / "m", counts_matrix(), barcodes(N_CELLS), gene_names(N_GENES), v3=True, gz=False
    )
    (folder / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n3 x\n")
    with pytest.raises(DataError, match="not a valid Matrix Market file: its size line"):
        read(folder)
    body = "1 1 1\nsecret words here\n3 3 3\n"
    (folder / "matrix.mtx").write_text(f"%%MatrixMarket matrix coordinate integer general\n12 30 3\n{body}")
    with pytest.raises(DataError, match="Could not read m as a 10x Genomics matrix folder") as err:
        read(folder)
    assert "secret" not in str(err.value)


def _table_text(X: np.ndarray, rows: list[str], cols: list[str], sep: str) -> str:
    lines = [sep.join(["", *cols])]
    lines += [sep.join([r] + [f"{v:g}" for v in row]) for r, row in zip(rows, X, strict=True)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", ["cells.csv", "cells.csv.gz", "cells.tsv", "cells.txt.gz"])
def test_read_table_cells_x_genes(tmp_path, name):
    X = counts_matrix()
    sep = "," if ".csv" in name else "\t"
    path = tmp_path / name
    _write_text(path, _table_text(X, barcodes(N_CELLS), gene_names(N_GENES), sep))
    adata = read(path)  # barcodes on the rows: auto orientation needs no guess
    assert_contract(adata, "csv" if ".csv" in name else "tsv")
    np.testing.assert_allclose(dense(adata.X), X)
    assert adata.uns["scgraph_source"]["orientation"] == "cells_x_genes"


def test_read_table_genes_x_cells_auto_and_explicit(tmp_path):
    X = counts_matrix()
    path = tmp_path / "genes.csv"
    cells = barcodes(N_CELLS)
    path.write_text(_table_text(X.T, gene_names(N_GENES), cells, ","))
    auto = read(path)
    assert list(auto.obs_names) == cells
    assert auto.uns["scgraph_source"]["orientation"] == "genes_x_cells"
    explicit = read(path, orientation="genes_x_cells")
    np.testing.assert_allclose(dense(explicit.X), X)


def test_read_table_orientation_from_shape_warns(tmp_path):
    X = counts_matrix(8, 5)
    rows = [f"r{i}" for i in range(5)]
    cols = [f"c{i}" for i in range(8)]
    path = tmp_path / "plain.csv"
    # R style: the header has no corner cell.
    body = _table_text(X.T, rows, cols, ",").split("\n", 1)[1]
    path.write_text(",".join(cols) + "\n" + body)
    with pytest.warns(DataWarning, match="orientation='cells_x_genes'"):
        adata = read(path)
    assert adata.shape == (8, 5)
    assert read(path, orientation="cells_x_genes").shape == (5, 8)


def test_read_loom(tmp_path):
    X = counts_matrix()
    src = ad.AnnData(sp.csr_matrix(X))
    src.obs_names = barcodes(N_CELLS)
    src.var_names = gene_names(N_GENES)
    path = tmp_path / "data.loom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src.write_loom(path)
    adata = read(path)
    assert_contract(adata, "loom")
    assert list(adata.var_names) == gene_names(N_GENES)
    np.testing.assert_array_equal(adata.X.toarray(), X)


def test_duplicate_names_made_unique_with_warning(tmp_path):
    X = counts_matrix(6, 4)
    path = tmp_path / "dups.csv"
    path.write_text(_table_text(X, barcodes(6), ["A", "A", "B", "A-1"], ","))
    with pytest.warns(DataWarning, match="1 duplicated gene name"):
        adata = read(path)
    assert list(adata.var_names) == ["A", "A-2", "B", "A-1"]


def test_read_builtin_path_gives_demo():
    assert read("builtin:pbmc68k_reduced").uns["scgraph_source"]["format"] == "builtin"


# Malformed inputs ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"No file or folder.*Check the path"):
        read(tmp_path / "nope.h5ad")


def test_unsupported_extension_lists_supported(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"Unsupported.*\.h5ad.*\.loom"):
        read(path)
    with pytest.raises(DataError, match="Unknown format"):
        read(path, fmt="excel")
    with pytest.raises(DataError, match="orientation"):
        read(path, orientation="sideways")


@pytest.mark.parametrize("name", ["data.h5ad", "data.h5", "data.loom"])
def test_text_file_with_hdf5_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("gene,cell1\nA,1\n")
    with pytest.raises(DataError, match=r"not an HDF5 file.*text file"):
        read(path)


def test_corrupt_files(tmp_path):
    h5 = tmp_path / "broken.h5"
    with h5py.File(h5, "w") as f:
        f.create_group("matrix")["data"] = np.arange(3)
    with pytest.raises(DataError, match=r"Could not read broken.h5.*corrupt"):
        read(h5)
    fake_zip = tmp_path / "fake.zip"
    fake_zip.write_bytes(b"\x00\x01 not a zip")
    with pytest.raises(DataError, match="not a zip archive"):
        read(fake_zip)
    binary_csv = tmp_path / "binary.csv"
    shutil.copy(h5, binary_csv)
    with pytest.raises(DataError, match="should be a text table"):
        read(binary_csv)


def test_empty_matrices(tmp_path):
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    with pytest.raises(DataError, match="empty"):
        read(empty_csv)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",g1,g2\n")
    with pytest.raises(DataError, match="no data rows"):
        read(header_only)
    path = tmp_path / "nocells.h5ad"
    ad.AnnData(np.zeros((0, 5), dtype=np.float32)).write_h5ad(path)
    with pytest.raises(DataError, match=r"empty matrix \(0 cells x 5 genes\)"):
        read(path)


def test_non_numeric_cell_names_row_and_column(tmp_path):
    path = tmp_path / "text.csv"
    path.write_text(",g1,g2,g3\ncellA,1,2,3\ncellB,4,abc,6\n")
    with pytest.raises(DataError, match=r"text where a number was expected at line 3, field 3") as err:
        read(path)
    assert "abc" not in str(err.value) and "cellB" not in str(err.value)
    decimal_comma = tmp_path / "comma.tsv"
    decimal_comma.write_text("\tg1\tg2\ncellA\t1,5\t2\n")
    with pytest.raises(DataError, match=r"decimal comma .*line 2, field 2") as err:
        read(decimal_comma)
    assert "1,5" not in str(err.value)


@pytest.mark.parametrize("bad", ["", "NA", "inf"])
def test_missing_or_infinite_values(tmp_path, bad):
    path = tmp_path / "nan.csv"
    path.write_text(f",g1,g2\ncellA,1,2\ncellB,{bad},3\n")
    with pytest.raises(DataError, match=r"missing .* or infinite.*line 3, field 2.*Fill"):
        read(path)


def test_nan_in_h5ad(tmp_path):
    X = counts_matrix()
    X[2, 3] = np.nan
    path = tmp_path / "nan.h5ad"
    ad.AnnData(X).write_h5ad(path)
    with pytest.raises(DataError, match=r"NaN or infinite.*Replace"):
        read(path)


def test_header_mismatch_and_ragged_rows(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text(",g1,g2\ncellA,1,2\ncellB,1,2,3\n")
    with pytest.raises(DataError, match="different lengths"):
        read(path)
    wide = tmp_path / "wide.csv"
    wide.write_text(",g1,g2,g3,g4\ncellA,1,2\n")
    with pytest.raises(DataError, match="header row has 5 names"):
        read(wide)


# detect_x_kind / validate / summarize ---------------------------------------------------------


def test_detect_x_kind():
    X = counts_matrix()
    log = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    assert detect_x_kind(X) == "counts"
    assert detect_x_kind(sp.csr_matrix(X)) == "counts"
    assert detect_x_kind(log) == "lognorm"
    assert detect_x_kind(sp.csr_matrix(log)) == "lognorm"
    assert detect_x_kind((log - log.mean(0)) / (log.std(0) + 1)) == "scaled"
    assert detect_x_kind(X / X.sum(1, keepdims=True) * 1e6) == "normalized"
    assert detect_x_kind(np.zeros((3, 3))) == "counts"


def test_validate_require_counts():
    log = counts_adata()
    log.X = sp.csr_matrix(np.log1p(log.X.toarray()) * 0.7)
    report = validate(log, require_counts=True)
    assert report.x_kind == "lognorm"
    assert any("raw counts in X or a `counts` layer" in e for e in report.errors)
    with pytest.raises(DataError, match="raw counts"):
        report.raise_if_errors()
    log.layers["counts"] = counts_adata().X
    assert validate(log, require_counts=True).errors == []
    scaled = counts_adata()
    scaled.X = scaled.X.toarray() - 1.0
    assert "negative" in validate(scaled, require_counts=True).errors[0]


def test_validate_reports_problems():
    adata = counts_adata(n_cells=8)
    X = adata.X.toarray()
    X[:, 0] = 0
    X[1] = 0
    adata.X = X
    report = validate(adata, min_cells=10)
    assert "needs at least 10" in report.errors[0]
    assert (report.n_zero_cells, report.n_zero_genes) >= (1, 1)
    assert any("preparing the data drops them" in w for w in report.warnings)
    adata.X[2, 2] = np.inf
    assert any("NaN or infinite" in e for e in validate(adata, min_cells=2).errors)


def test_zero_counts_are_not_named_and_all_zero_genes_alone_are_information():
    adata = counts_adata(n_cells=12)
    X = adata.X.toarray() + 1  # every gene expressed in every cell
    X[:, :2] = 0
    adata.X = X
    report = validate(adata)
    assert report.n_zero_cells == 0 and report.n_zero_genes == 2
    assert report.warnings == []
    assert report.notes == ["2 gene(s) are zero in every cell; preparing the data drops them."]
    X[3] = 0
    adata.X = X
    report = validate(adata)
    assert report.warnings == [
        "1 cell(s) have no expressed gene and 2 gene(s) are zero in every cell; preparing the data drops them."
    ]
    assert report.notes == []
    X[:, :2] = 1
    adata.X = X
    assert not any(w.startswith("0 ") for w in validate(adata).warnings)
    assert "0 gene(s)" not in " ".join(validate(adata).warnings)


def test_summarize_is_json_ready():
    adata = counts_adata()
    adata.obs["score"] = np.arange(adata.n_obs, dtype=float)
    summary = summarize(adata)
    json.dumps(summary)
    assert summary["x_kind"] == "counts" and summary["sparse"] is True
    assert summary["obs_columns"]["celltype"] == {"dtype": "category", "n_unique": 2, "numeric": False}
    assert summary["obs_columns"]["score"] == {"dtype": "float64", "n_unique": adata.n_obs, "numeric": True}
    assert 0 < summary["density"] <= 1 and summary["layers"] == []


# prepare ---------------------------------------------------------------------------------------


def test_prepare_counts_recipe():
    adata = counts_adata()
    before = adata.X.copy()
    prep = prepare(adata, PrepareSpec(n_hvg=20, n_graph_genes=8))
    out = prep.adata
    assert (before != adata.X).nnz == 0 and "hvg" not in adata.var  # input untouched
    assert prep.features.shape == (80, 20) and prep.features.dtype == np.float32
    assert prep.graph_input.shape == (80, 8) and prep.graph_input.dtype == np.float32
    assert out.var["hvg"].sum() == 20 and out.var["graph_genes"].sum() == 8
    assert prep.feature_genes == list(out.var_names[out.var["hvg"]])  # original gene order
    assert prep.graph_genes == list(out.var_names[out.var["graph_genes"]])
    assert prep.features.min(0).min() == 0 and prep.features.max() <= 1
    np.testing.assert_allclose(prep.features.max(0), 1, rtol=1e-6)
    lognorm = out.layers["lognorm"].toarray()
    graph_cols = out.var["graph_genes"].to_numpy()
    np.testing.assert_allclose(prep.graph_input, lognorm[:, graph_cols], rtol=1e-6)
    np.testing.assert_allclose(np.expm1(lognorm).sum(1), 1e4, rtol=1e-3)
    np.testing.assert_array_equal(out.layers["counts"].toarray(), adata.X.toarray())
    assert np.median(out.obs["size_factor"]) == pytest.approx(1.0)
    assert "X_umap" in out.obsm and out.obsm["X_umap"].shape == (80, 2)
    rec = out.uns["scgraph"]["prepare"]
    assert rec == prep.record and rec["normalization_applied"] == "library_log1p"
    assert rec["spec"] == to_dict(PrepareSpec(n_hvg=20, n_graph_genes=8))
    assert (rec["n_hvg_used"], rec["n_graph_genes_used"]) == (20, 8)


def test_prepare_fewer_genes_than_requested_and_zscore():
    adata = counts_adata(n_genes=30)
    spec = PrepareSpec(n_hvg=1000, n_graph_genes=0, scale="zscore", max_value=2.0)
    prep = prepare(adata, spec)
    assert prep.features.shape == (80, 30) and prep.graph_input.shape == (80, 30)
    assert prep.record["n_hvg_used"] == 30 and "all genes are used" in prep.record["notes"][0]
    assert np.abs(prep.features).max() <= 2.0
    np.testing.assert_allclose(prep.features.mean(0), 0, atol=0.2)


def test_prepare_filters():
    adata = counts_adata()
    X = adata.X.toarray()
    X[:, 2:] += 1  # every other cell and gene is well expressed
    X[:, 0] = 0  # gene 0 never expressed
    X[3:, 1] = 0  # gene 1 in 3 cells only
    X[5] = 0  # an empty cell
    X[6] = 0
    X[6, 2:5] = 1  # a cell with 3 genes
    adata.X = sp.csr_matrix(X)
    prep = prepare(adata, PrepareSpec(n_hvg=10, n_graph_genes=5))
    assert prep.record["cells_removed"] == 1 and prep.record["genes_removed"] == 1
    prep = prepare(adata, PrepareSpec(min_genes_per_cell=4, min_cells_per_gene=4, n_hvg=10, n_graph_genes=5))
    assert "cell5" not in prep.adata.obs_names and "cell6" not in prep.adata.obs_names
    assert "GENE0" not in prep.adata.var_names and "GENE1" not in prep.adata.var_names
    assert prep.record["cells_removed"] == 2 and prep.record["genes_removed"] == 2
    with pytest.raises(DataError, match="Lower min_genes_per_cell"):
        prepare(adata, PrepareSpec(min_genes_per_cell=10_000))


def test_prepare_lognorm_input_and_counts_layer():
    adata = counts_adata()
    counts = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(counts.toarray() / counts.sum(1).A * 1e4))
    adata.layers["counts"] = counts
    prep = prepare(adata, PrepareSpec(n_hvg=15, n_graph_genes=15, scale="none"))
    assert prep.record["normalization_applied"] == "none"
    assert prep.record["counts_source"] == "counts layer"
    np.testing.assert_allclose(prep.adata.layers["lognorm"].toarray(), adata.X.toarray())
    assert "counts" in prep.adata.layers and "size_factor" in prep.adata.obs
    scaled = counts_adata()
    scaled.X = scaled.X.toarray() - 2.0
    with pytest.raises(DataError, match="already scaled"):
        prepare(scaled, PrepareSpec(normalize="log1p"))
    log_only = counts_adata()
    log_only.X = adata.X
    with pytest.raises(DataError, match="needs raw counts"):
        prepare(log_only, PrepareSpec(normalize="library_log1p"))


def test_prepare_keeps_every_gene_of_z_scored_data():
    import scanpy as sc

    demo = sc.datasets.pbmc68k_reduced()  # as bundled: X z-scored per gene (sc.pp.scale), 765 genes
    prep = prepare(demo, PrepareSpec(n_hvg=250, n_graph_genes=250))
    assert prep.record["x_kind"] == "scaled"
    assert prep.record["n_hvg_used"] == prep.record["n_graph_genes_used"] == demo.n_vars
    assert any("cannot be ranked" in note and "n_hvg=250" in note for note in prep.record["notes"])
    # Only z-scored columns count: centred with unit spread, dense or sparse; not genes of varied spread.
    z = np.random.default_rng(0).normal(size=(300, 60))
    assert _per_gene_scaled(z) and _per_gene_scaled(sp.csr_matrix(z))
    assert not _per_gene_scaled(z * np.linspace(0.1, 3.0, 60)) and not _per_gene_scaled(z + 2.0)


def test_prepare_hvg_failure_is_data_error(monkeypatch):
    import scanpy as sc

    def boom(*args, **kwargs):
        raise ValueError("bins could not be computed")

    monkeypatch.setattr(sc.pp, "highly_variable_genes", boom)
    with pytest.raises(DataError, match="n_hvg=0 to use all genes"):
        prepare(counts_adata(), PrepareSpec(n_hvg=10, n_graph_genes=5))


def test_prepare_spec_schema():
    spec = from_dict(PrepareSpec, {"n_hvg": "500", "scale": "zscore", "max_value": 10})
    assert spec.n_hvg == 500 and spec.max_value == 10.0
    with pytest.raises(ConfigError, match="max_value"):
        from_dict(PrepareSpec, {"max_value": 5})
    with pytest.raises(ConfigError, match="normalize"):
        from_dict(PrepareSpec, {"normalize": "sqrt"})


# mask_nonzero / demo / shared data ------------------------------------------------------------


@pytest.mark.parametrize("sparse", [True, False])
def test_mask_nonzero(sparse):
    dense = counts_matrix()
    X = sp.csr_matrix(dense) if sparse else dense.copy()
    masked, rows, cols, values = mask_nonzero(X, fraction=0.2, seed=3)
    nnz = np.count_nonzero(dense)
    assert len(rows) == round(0.2 * nnz)
    np.testing.assert_array_equal(values, dense[rows, cols])
    out = masked.toarray() if sparse else masked
    assert np.all(out[rows, cols] == 0)
    assert np.count_nonzero(out) == nnz - len(rows)
    np.testing.assert_array_equal(X.toarray() if sparse else X, dense)  # input untouched
    again = mask_nonzero(X, fraction=0.2, seed=3)
    np.testing.assert_array_equal(again[1], rows)
    with pytest.raises(ConfigError):
        mask_nonzero(X, fraction=1.5)


def test_load_demo_is_lognormalised():
    demo = load_demo()
    assert demo.shape == (700, 765)
    assert detect_x_kind(demo.X) == "lognorm"
    assert "bulk_labels" in demo.obs and "X_umap" in demo.obsm
    assert demo.obs["celltype"].nunique() == 10
    assert demo.uns["scgraph_source"] == {"path": "builtin:pbmc68k_reduced", "format": "builtin"}


def test_pbmc3k_integration(pbmc3k_path):
    adata = read(pbmc3k_path)
    assert validate(adata).x_kind == "lognorm"
    prep = prepare(adata, PrepareSpec(n_hvg=250, n_graph_genes=250))
    assert prep.features.shape == (2638, 250) and prep.graph_input.shape == (2638, 250)
    assert prep.record["normalization_applied"] == "none"
    assert "counts" not in prep.adata.layers and "size_factor" not in prep.adata.obs
    assert prep.adata.obs["celltype"].nunique() == 8
