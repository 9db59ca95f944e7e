"""Reading files into AnnData: format detection, the readers of each format and the reader contract.

:func:`read` turns a file (h5ad, 10x h5, 10x matrix folder or zip, csv/tsv, loom) into an
``AnnData`` with cells as rows, a float32 ``X`` (CSR when sparse or mostly zeros), unique names
and ``uns["scgraph_source"]``. Text tables have their orientation guessed from the names; Matrix
Market headers are checked before scipy reads the body. Every problem a user can cause becomes a
:class:`DataError` that says what is wrong and what to do, without quoting the file's text. Files
from people you do not control are read with :func:`scgraph_core.safe_read.read_isolated`, which
runs :func:`read` in a child process with time and memory limits.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from ..errors import DataError
from .qc import n_nonfinite

#: Format names accepted by ``read(fmt=...)`` and what each one is.
FORMATS: dict[str, str] = {
    "h5ad": "an AnnData .h5ad file",
    "10x_h5": "a 10x Genomics .h5 file",
    "10x_mtx": "a 10x Genomics matrix folder",
    "csv": "a comma-separated table",
    "tsv": "a tab-separated table",
    "loom": "a .loom file",
    "zip": "a .zip of a 10x matrix folder",
}

_SUPPORTED = (
    ".h5ad, .h5 (10x), a 10x matrix folder (matrix.mtx[.gz] with features.tsv or genes.tsv and "
    "barcodes.tsv), a .zip of such a folder, .csv, .tsv or .txt (each optionally .gz), .loom"
)
_ORIENTATIONS = ("auto", "cells_x_genes", "genes_x_cells")
_TEXT_FORMATS = ("csv", "tsv")
#: Most columns a text table may have: pandas makes one object per column, so a table of a million
#: columns takes minutes and gigabytes to parse. Wider data belongs in a sparse format.
MAX_TABLE_COLUMNS = 200_000
# Longest first line or first data row read before parsing (characters, about bytes).
_MAX_LINE_CHARS = 64 * 2**20
# A zip of one 10x folder holds three files; far more is a listing to refuse, not to unpack.
_ZIP_MAX_MEMBERS = 2_000

# CSR stores 8 bytes per non-zero (value + column index) against 4 per dense float32 entry,
# so below half non-zero it is both smaller and faster for the row-wise work done here.
_SPARSE_BELOW = 0.5


class DataWarning(UserWarning):
    """Something in the data was changed or guessed on load (names made unique, orientation)."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read(path: str | Path, *, orientation: str = "auto", fmt: str | None = None) -> ad.AnnData:
    """Read a single-cell expression file into an ``AnnData`` with cells as rows.

    Parameters
    ----------
    path
        A file or a 10x matrix folder. ``"builtin:pbmc68k_reduced"`` gives :func:`load_demo`.
    orientation
        For text tables (csv/tsv/txt): ``"cells_x_genes"``, ``"genes_x_cells"`` or ``"auto"``.
        Auto decides from the names first: cell barcodes (runs of 8+ ``ACGTN``) or names like
        ``cell_12`` mark the cell axis; Ensembl ids (``ENSG…``, ``ENSMUSG…``) or at least two
        mitochondrial/ribosomal genes (``MT-``, ``RPL``, ``RPS``, any case) mark the gene axis.
        Without such evidence it decides from the shape: a table with more columns than rows is
        read as genes x cells (the usual layout of expression tables, e.g. the CellVGAE paper's
        HVG csv; data for graph models is usually restricted to fewer genes than cells),
        otherwise as cells x genes; that guess is announced with a :class:`DataWarning`.
        For ``.h5ad`` files ``"genes_x_cells"`` transposes the stored matrix; 10x and loom files
        have a fixed layout and ignore this argument.
    fmt
        Overrides detection from the extension: one of :data:`FORMATS`.

    Returns
    -------
    ``AnnData`` with float32 ``X`` (CSR when the input is sparse or less than half non-zero),
    unique cell and gene names (duplicates get ``-1``, ``-2`` … suffixes and a
    :class:`DataWarning`), and ``uns["scgraph_source"] = {"path", "format"}`` (text tables add
    ``"orientation"`` and ``"orientation_reason"``; zips add ``"member"``).

    Raises
    ------
    DataError
        Missing or unreadable file, content that does not match the extension, an empty matrix,
        non-numeric or missing values in a table, NaN/inf values, or an unsupported extension;
        a Matrix Market header whose sizes the name files or the file's own size cannot back (it
        is checked before scipy reads the body); a text table wider than
        :data:`MAX_TABLE_COLUMNS`. Messages give positions (line, field) and counts, never the
        file's text.

    Notes
    -----
    This reads in the caller's process, where a file built to exhaust memory can still end it;
    :func:`scgraph_core.safe_read.read_isolated` is the same read in a child process with limits.
    """
    from .demo import DEMO_PATH, load_demo  # demo builds on finish(): imported on use

    if fmt == "builtin" or str(path) == DEMO_PATH:
        return load_demo()
    path, fmt = resolve(path, orientation, fmt)
    extra: dict[str, Any] = {}
    adata = _read_any(path, fmt, orientation, extra)
    # A .h5 that turned out to be an h5ad is recorded as what it is.
    fmt = extra.pop("_format", fmt)
    return finish(adata, path.name, {"path": str(path.absolute()), "format": fmt, **extra})


def resolve(path: str | Path, orientation: str, fmt: str | None) -> tuple[Path, str]:
    """The checks :func:`read` makes before opening anything: the path exists, the format is known."""
    if orientation not in _ORIENTATIONS:
        raise DataError(f"orientation must be one of {', '.join(_ORIENTATIONS)}; got {orientation!r}.")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(
            f"No file or folder at {path}. Check the path and its spelling "
            f"(a relative path starts from {Path.cwd()})."
        )
    if fmt is None:
        fmt = _detect_format(path)
    elif fmt not in FORMATS:
        raise DataError(f"Unknown format {fmt!r}: use one of {', '.join(FORMATS)}.")
    return path, fmt


def _read_any(path: Path, fmt: str, orientation: str, extra: dict[str, Any]) -> ad.AnnData:
    """Dispatch to one reader and turn any library error into a DataError."""
    readers: dict[str, Callable[[Path, str, dict[str, Any]], ad.AnnData]] = {
        "h5ad": _read_h5ad,
        "10x_h5": _read_10x_h5,
        "10x_mtx": _read_10x_mtx,
        "csv": _read_table,
        "tsv": _read_table,
        "loom": _read_loom,
        "zip": _read_zip,
    }
    try:
        with warnings.catch_warnings():
            # Libraries complain about duplicated names and string indexes; finish handles both.
            warnings.filterwarnings("ignore", message=r".*names are not unique")
            warnings.filterwarnings("ignore", message=r".*Transforming to str index")
            warnings.filterwarnings("ignore", category=FutureWarning)
            return readers[fmt](path, orientation, extra)
    except DataError:
        raise
    except MemoryError as exc:
        # Chained, so a caller can tell running out of memory from a bad file.
        raise DataError(
            f"{path.name} does not fit in memory. Use a machine with more memory, or subset the "
            "data (fewer cells or genes) before loading it here."
        ) from exc
    except Exception as exc:  # any library failure is a file the user must fix
        raise DataError(
            f"Could not read {path.name} as {FORMATS[fmt]} ({_reason(exc)}). The file may be "
            f"corrupt, truncated or in another format than its name says ({_sniff(path)}); "
            "check that the download or export finished, or pass the right fmt."
        ) from exc


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "10x_mtx"
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if stem.endswith(".mtx"):
        return "10x_mtx"  # the matrix file of a 10x folder: read the whole folder
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith((".h5", ".hdf5")):
        return "10x_h5"
    if name.endswith(".loom"):
        return "loom"
    if name.endswith(".zip"):
        return "zip"
    if stem.endswith(".csv"):
        return "csv"
    if stem.endswith((".tsv", ".txt", ".tab")):
        return "tsv"
    raise DataError(
        f"Unsupported file type: {path.name}. Supported: {_SUPPORTED}. If the file holds one "
        f"of these under another name, rename it or pass fmt (one of {', '.join(FORMATS)})."
    )


def short(exc: BaseException) -> str:
    """The exception's type and first line; only for texts that cannot quote a user's file."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    first = first[:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """What a library said about a user's file, without its text: parsers quote the bytes they
    choke on, so only the exception type and a line number (digits only) are kept."""
    found = re.search(r"\bline (\d{1,12})\b", str(exc), re.IGNORECASE)
    where = f" at line {found.group(1)}" if found else ""
    return f"{type(exc).__name__}{where}"


def _magic(path: Path) -> tuple[str, bytes]:
    """The kind of a file from its first bytes: hdf5, zip, gzip, empty, text, binary, folder."""
    if path.is_dir():
        return "folder", b""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return "unreadable", b""
    if not head:
        return "empty", head
    for kind, magic in (("hdf5", b"\x89HDF"), ("zip", b"PK\x03\x04"), ("gzip", b"\x1f\x8b")):
        if head.startswith(magic):
            return kind, head
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary", head
    return ("binary" if b"\x00" in head else "text"), head


def _sniff(path: Path) -> str:
    """What a file looks like from its first bytes, for error messages; never quotes them, since
    the file may be any file on the server (a password file, a key) named to look like data."""
    kind, head = _magic(path)
    if kind == "text":
        first = head.split(b"\n", 1)[0]
        for sep, what in ((b"\t", "tab"), (b",", "comma")):
            if sep in first:
                return f"it looks like a text file with {what}-separated fields"
        return "it looks like a text file"
    return {
        "folder": "it is a folder",
        "unreadable": "it cannot be opened",
        "empty": "it is an empty file",
        "hdf5": "it is an HDF5 file",
        "zip": "it is a zip archive",
        "gzip": "it is gzip-compressed",
    }.get(kind, "it holds binary data of an unknown kind")


def _require_hdf5(path: Path, what: str) -> None:
    if not h5py.is_hdf5(path):
        raise DataError(
            f"{path.name} is not an HDF5 file, so it cannot be read as {what}: {_sniff(path)}. "
            "Check that the download or export finished, or rename the file (or pass fmt) to "
            "match what it holds."
        )


def _hdf5_keys(path: Path) -> set[str]:
    with h5py.File(path, "r") as f:
        return set(f.keys())


def _read_h5ad(path: Path, orientation: str, extra: dict[str, Any]) -> ad.AnnData:
    _require_hdf5(path, FORMATS["h5ad"])
    keys = _hdf5_keys(path)
    if "X" not in keys and "matrix" in keys and "row_attrs" in keys:
        raise DataError(f"{path.name} is a loom file: rename it to .loom or pass fmt='loom'.")
    if "X" not in keys and "matrix" in keys:
        raise DataError(f"{path.name} is a 10x .h5 file: rename it to .h5 or pass fmt='10x_h5'.")
    if "obs" not in keys or "var" not in keys:
        raise DataError(
            f"{path.name} is an HDF5 file but not an AnnData file (no obs/var groups). "
            "Export it with anndata's write_h5ad, or pick the reader for its real format with fmt."
        )
    adata = ad.read_h5ad(path)
    if adata.X is None:
        if "counts" not in adata.layers:
            # The layer names are the file's text: count them rather than list them.
            raise DataError(
                f"{path.name} has no expression matrix in X and no layer named 'counts' (it has "
                f"{len(adata.layers)} other layer(s)). Save the file with the matrix in X, or "
                "with a layer named 'counts'."
            )
        adata.X = adata.layers["counts"]
    if orientation == "genes_x_cells":
        adata = adata.T.copy()
    return adata


def _read_10x_h5(path: Path, orientation: str, extra: dict[str, Any]) -> ad.AnnData:
    _require_hdf5(path, FORMATS["10x_h5"])
    keys = _hdf5_keys(path)
    if "X" in keys and "obs" in keys:
        extra["_format"] = "h5ad"  # an AnnData file saved as .h5
        return _read_h5ad(path, orientation, extra)
    import scanpy as sc  # heavy import, only where needed

    return sc.read_10x_h5(path)


def _read_loom(path: Path, orientation: str, extra: dict[str, Any]) -> ad.AnnData:
    _require_hdf5(path, FORMATS["loom"])
    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise DataError(
                f"{path.name} is an HDF5 file without a loom 'matrix'; if it is an AnnData "
                "file rename it to .h5ad, if a 10x file to .h5."
            )
        col_keys = set(f["col_attrs"].keys()) if "col_attrs" in f else set()
        row_keys = set(f["row_attrs"].keys()) if "row_attrs" in f else set()
    # Loom writers disagree on where names live; take the first common spelling found.
    obs_key = _first_present(
        col_keys, ("CellID", "obs_names", "cell_names", "CellId", "cell_id", "Barcode", "barcodes")
    )
    var_key = _first_present(
        row_keys, ("Gene", "var_names", "gene_names", "Gene_names", "gene_symbols", "Accession")
    )
    return ad.read_loom(path, obs_names=obs_key or "", var_names=var_key or "")


def _first_present(keys: set[str], candidates: Iterable[str]) -> str | None:
    return next((c for c in candidates if c in keys), None)


# 10x matrix folders ---------------------------------------------------------------------------

_MTX_RE = re.compile(r"^(?P<prefix>.*?)matrix\.mtx(\.gz)?$", re.IGNORECASE)

#: How many entries the 10x folder search looks at on each folder level (the folder given, then its
#: sub-folders together, then theirs), so a path such as /usr is not walked in full on every rerun.
MAX_SCAN_ENTRIES = 2_000


@dataclass
class _Scan:
    """What a bounded folder search found, and whether it had to stop early."""

    matrices: list[Path] = field(default_factory=list)
    capped: bool = False

    def advice(self) -> str:
        if not self.capped:
            return ""
        return (
            f" The search looked at only the first {MAX_SCAN_ENTRIES:,} entries of each folder level "
            "and stopped there, so point to the 10x matrix folder itself rather than a large folder."
        )


def _list_folder(folder: Path, budget: int) -> tuple[list[os.DirEntry[str]], bool]:
    """Up to ``budget`` entries of ``folder`` (in directory order) and whether more were left."""
    entries: list[os.DirEntry[str]] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if len(entries) >= budget:
                    return entries, True
                entries.append(entry)
    except OSError:
        pass
    return entries, False


def _is(entry: os.DirEntry[str], kind: str) -> bool:
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError:
        return False


def _find_mtx(root: Path, depth: int = 2) -> _Scan:
    """Matrix files in ``root`` or up to ``depth`` folder levels below it (v2 nests genome dirs).

    A folder holding a matrix is not searched further. Each level looks at no more than
    :data:`MAX_SCAN_ENTRIES` entries in all; ``capped`` says when that cut the search short.
    """
    scan = _Scan()
    level = [root]
    for below in range(depth, -1, -1):
        budget = MAX_SCAN_ENTRIES
        deeper: list[Path] = []
        for folder in level:
            if budget <= 0:  # folders of this level left unlisted
                scan.capped = True
                break
            entries, more = _list_folder(folder, budget)
            budget -= len(entries)
            scan.capped = scan.capped or more
            found = [Path(e.path) for e in entries if _MTX_RE.match(e.name) and _is(e, "file")]
            if found:
                scan.matrices.extend(sorted(found))
            elif below:
                deeper.extend(
                    Path(e.path)
                    for e in entries
                    if not e.name.startswith((".", "__MACOSX")) and _is(e, "dir")
                )
        level = sorted(deeper)
    scan.matrices.sort()
    return scan


def _read_10x_mtx(path: Path, orientation: str, extra: dict[str, Any]) -> ad.AnnData:
    if path.is_file():
        if not _MTX_RE.match(path.name):
            raise DataError(
                f"{path.name} is a Matrix Market file without 10x naming. Put it in a folder as "
                "matrix.mtx with features.tsv (or genes.tsv) and barcodes.tsv beside it, and "
                "read that folder."
            )
        scan = _Scan([path])  # the user pointed at matrix.mtx itself
    else:
        scan = _find_mtx(path)
    matrices = scan.matrices
    if not matrices:
        raise DataError(
            f"No matrix.mtx or matrix.mtx.gz in {path.name} or its sub-folders. A 10x matrix "
            "folder holds matrix.mtx[.gz], features.tsv[.gz] (genes.tsv in older versions) and "
            f"barcodes.tsv[.gz]; point to that folder.{scan.advice()}"
        )
    if len(matrices) > 1:
        listed = ", ".join(str(m.relative_to(path)) for m in matrices[:6])
        raise DataError(
            f"{path.name} holds several 10x matrices ({listed}). Point to the folder or the "
            "matrix.mtx file of the one sample you want."
        )
    matrix = matrices[0]
    if path.is_dir() and matrix.parent != path:
        extra["member"] = str(matrix.parent.relative_to(path))
    return _read_mtx_set(matrix)


def _companion(folder: Path, prefix: str, stems: tuple[str, ...]) -> Path | None:
    candidates = [prefix + stem + suffix for stem in stems for suffix in (".tsv.gz", ".tsv")]
    for name in candidates:  # the usual spelling: no folder listing needed
        if (folder / name).is_file():
            return folder / name
    entries, _ = _list_folder(folder, MAX_SCAN_ENTRIES)
    by_name = {e.name.lower(): Path(e.path) for e in entries if _is(e, "file")}
    for name in candidates:
        hit = by_name.get(name.lower())
        if hit is not None:
            return hit
    return None


def _open_bytes(path: Path) -> IO[bytes]:
    """Open a file for reading, decompressing it when it is gzip whatever its name says."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_names(path: Path) -> pd.DataFrame:
    with _open_bytes(path) as fh:
        table = pd.read_csv(
            fh, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE
        )
    return table


# Matrix Market header checks. scipy's reader trusts the size line: it allocates the claimed number of
# entries up front, and a claim that cannot be met ends the whole process (SIGABRT from its C++ core)
# rather than raising. So the banner and size line are read and checked here first.
_MTX_FIELDS = ("real", "double", "integer", "unsigned-integer", "complex", "pattern")
_MTX_SYMMETRIES = ("general", "symmetric", "skew-symmetric", "hermitian")
_MTX_LINE_MAX = 4096
_MTX_HEADER_MAX = 1 << 20  # comment lines before the size line; real files have a handful
# The fewest bytes one stored entry can take: "i j\n" (a pattern entry) in coordinate format, "v\n"
# in array format. Real entries are longer ("1234 5678 3\n"), so the bound never refuses a real file.
_MTX_MIN_ENTRY_BYTES = {"coordinate": 4, "array": 2}
# Deflate cannot expand data by more than 1032:1 (a 258-byte match costs at least 2 bits), so no gzip
# file holds more than 1032 times its own size, however it is built; a bound on that hard limit never
# refuses a real file. The gzip ISIZE trailer is not used: it is the size modulo 2**32 of the last
# member only, so it is wrong for real files over 4 GiB and a hostile file sets it freely.
_DEFLATE_MAX_RATIO = 1032


@dataclass(frozen=True)
class _MtxHeader:
    layout: str  # "coordinate" or "array"
    field: str
    symmetry: str
    rows: int
    cols: int
    entries: int  # values the body must hold


def _mtx_problem(matrix: Path, what: str) -> DataError:
    return DataError(
        f"{matrix.name} is not a valid Matrix Market file: {what}. The file is corrupt, truncated "
        "or not a matrix; copy matrix.mtx[.gz] again from the Cell Ranger output folder."
    )


def _mtx_header(matrix: Path) -> _MtxHeader:
    """The banner and size line of a Matrix Market file, checked without reading its body."""
    with _open_bytes(matrix) as fh:
        banner = fh.readline(_MTX_LINE_MAX).split()
        if len(banner) != 5 or banner[0].lower() != b"%%matrixmarket" or banner[1].lower() != b"matrix":
            raise _mtx_problem(
                matrix, "its first line is not '%%MatrixMarket matrix <format> <field> <symmetry>'"
            )
        layout, kind, symmetry = (t.decode("ascii", "replace").lower() for t in banner[2:])
        if layout not in _MTX_MIN_ENTRY_BYTES or kind not in _MTX_FIELDS or symmetry not in _MTX_SYMMETRIES:
            raise _mtx_problem(
                matrix,
                "its first line names an unknown format, field or symmetry (expected coordinate or "
                f"array; {', '.join(_MTX_FIELDS)}; {', '.join(_MTX_SYMMETRIES)})",
            )
        seen = 0
        while True:
            line = fh.readline(_MTX_LINE_MAX)
            seen += len(line)
            if not line:
                raise _mtx_problem(matrix, "it ends before its size line")
            if seen > _MTX_HEADER_MAX:
                raise _mtx_problem(matrix, "no size line in its first MB")
            line = line.strip()
            if line and not line.startswith(b"%"):
                break
    want = 3 if layout == "coordinate" else 2
    tokens = line.split()
    if len(tokens) != want or not all(re.fullmatch(rb"\d{1,18}", t) for t in tokens):
        numbers = "rows, columns and stored entries" if want == 3 else "rows and columns"
        raise _mtx_problem(matrix, f"its size line must hold {want} whole numbers ({numbers})")
    rows, cols = int(tokens[0]), int(tokens[1])
    if layout == "coordinate":
        entries = int(tokens[2])
    elif symmetry == "general":
        entries = rows * cols
    elif rows != cols:
        raise _mtx_problem(matrix, f"a {symmetry} matrix must be square, but it is {rows} x {cols}")
    else:  # only the lower triangle is stored
        entries = rows * (rows + 1) // 2 if symmetry != "skew-symmetric" else rows * (rows - 1) // 2
    return _MtxHeader(layout, kind, symmetry, rows, cols, entries)


def _physical_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except (ImportError, OSError):
        return None


def _check_mtx_header(matrix: Path, header: _MtxHeader) -> None:
    """Refuse a size line the file cannot back: more entries than cells, bytes or memory allow."""
    if header.layout == "coordinate" and header.entries > header.rows * header.cols:
        raise _mtx_problem(
            matrix,
            f"its size line claims {header.entries:,} stored values in a {header.rows:,} x "
            f"{header.cols:,} matrix, more than it has entries",
        )
    size = matrix.stat().st_size
    with open(matrix, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    most = size * _DEFLATE_MAX_RATIO if gzipped else size
    need = header.entries * _MTX_MIN_ENTRY_BYTES[header.layout]
    if need > most:
        stored = "stored values" if header.layout == "coordinate" else "values (dense array format)"
        held = f"{size:,} bytes{' of gzip' if gzipped else ''}"
        raise _mtx_problem(
            matrix,
            f"its size line claims {header.entries:,} {stored}, which take at least {need:,} bytes, "
            f"but the file is {held}" + (", which cannot unpack to that much" if gzipped else ""),
        )
    need = _mtx_scipy_bytes(header)
    total = _physical_memory()
    if total and 2 * need > total:  # scipy's arrays, then the CSR copy made from them
        raise DataError(
            f"{matrix.name} holds {header.entries:,} values, which need about "
            f"{2 * need / 2**30:,.0f} GB to read, more than this machine's {total / 2**30:,.0f} GB "
            "of memory. Read it on a machine with more memory, or subset it (fewer cells) before "
            "loading it here."
        )
    # scipy allocates its arrays after its C++ reader has started on the file; if that allocation
    # fails, the reader's threads are left on a closed file and abort the process. Asking for the
    # same bytes here first turns a shortfall (a memory limit, a busy machine) into a MemoryError
    # that read() reports; the block is never touched, so it costs no physical memory.
    probe = np.empty(need, dtype=np.uint8)
    del probe


def _mtx_scipy_bytes(header: _MtxHeader) -> int:
    """Bytes scipy's mmread allocates for the arrays of this matrix."""
    value = 16 if header.field == "complex" else 8
    if header.layout == "array":
        return header.rows * header.cols * value
    index = 8 if max(header.rows, header.cols) >= 2**31 else 4
    per_entry = 2 * index + value
    # A symmetric matrix is mirrored with concatenated copies: about three times the stored arrays.
    return header.entries * per_entry * (1 if header.symmetry == "general" else 3)


def _read_mtx_set(matrix: Path) -> ad.AnnData:
    folder = matrix.parent
    prefix = _MTX_RE.match(matrix.name).group("prefix")  # type: ignore[union-attr]
    features = _companion(folder, prefix, ("features", "genes"))
    barcodes = _companion(folder, prefix, ("barcodes",))
    missing = [
        name
        for name, hit in (("features.tsv or genes.tsv", features), ("barcodes.tsv", barcodes))
        if hit is None
    ]
    if missing:
        raise DataError(
            f"The 10x folder {folder.name} has {matrix.name} but no {' and no '.join(missing)} "
            f"(optionally .gz{', named with the prefix ' + repr(prefix) if prefix else ''}). "
            "Copy the complete folder written by Cell Ranger."
        )
    assert features is not None and barcodes is not None
    # The two small name files first: they say what size the matrix must have.
    genes = _read_names(features)
    cells = _read_names(barcodes)
    n_genes, n_cells = len(genes), len(cells)
    header = _mtx_header(matrix)
    if (header.rows, header.cols) not in ((n_genes, n_cells), (n_cells, n_genes)):
        raise DataError(
            f"{matrix.name} is {header.rows} x {header.cols}, but {features.name} lists {n_genes} "
            f"genes and {barcodes.name} {n_cells} cells: the three files do not belong together. "
            "Copy all three from the same Cell Ranger output folder."
        )
    _check_mtx_header(matrix, header)
    with _open_bytes(matrix) as fh:
        m = scipy.io.mmread(fh)
    if m.shape == (n_genes, n_cells):
        X = sp.csr_matrix(m.T)  # 10x stores genes x cells
    elif m.shape == (n_cells, n_genes):
        X = sp.csr_matrix(m)
    else:  # the header was checked; only a reader disagreeing with it gets here
        raise _mtx_problem(matrix, "its body does not match its size line")
    var = pd.DataFrame(index=pd.Index(genes.iloc[:, 1 if genes.shape[1] > 1 else 0], dtype=str))
    var["gene_ids"] = genes.iloc[:, 0].to_numpy(dtype=str)
    if genes.shape[1] > 2:
        var["feature_types"] = genes.iloc[:, 2].to_numpy(dtype=str)
    obs = pd.DataFrame(index=pd.Index(cells.iloc[:, 0], dtype=str))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    if "feature_types" in var and (var["feature_types"] == "Gene Expression").any():
        # Like scanpy's 10x h5 reader: antibody / CRISPR features are not genes.
        adata = adata[:, (var["feature_types"] == "Gene Expression").to_numpy()].copy()
    return adata


# Zip --------------------------------------------------------------------------------------------


def _unsafe_member(name: str) -> bool:
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return True
    return ".." in PurePosixPath(name).parts


def _read_zip(path: Path, orientation: str, extra: dict[str, Any]) -> ad.AnnData:
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path.name} is not a zip archive ({_sniff(path)}). Re-create it with a zip tool, "
            "or rename the file to match what it holds."
        )
    with zipfile.ZipFile(path) as zf, tempfile.TemporaryDirectory(prefix="scgraph_zip_") as tmp:
        members = zf.infolist()
        if len(members) > _ZIP_MAX_MEMBERS:
            raise DataError(
                f"{path.name} holds {len(members):,} files; a zip of one 10x matrix folder holds "
                f"three, and more than {_ZIP_MAX_MEMBERS:,} are refused. Zip one sample's matrix "
                "folder, or unzip the archive and read that folder."
            )
        # Member names are the archive's text: count them rather than list them.
        n_bad = sum(_unsafe_member(m.filename) for m in members)
        if n_bad:
            raise DataError(
                f"{path.name} contains {n_bad} unsafe path(s): absolute paths and '..' are "
                "refused. Zip the matrix folder itself, with relative paths."
            )
        total = sum(m.file_size for m in members)
        if total > shutil.disk_usage(tmp).free:
            raise DataError(
                f"{path.name} unpacks to {total / 1e9:.1f} GB, more than the free space in the "
                "temporary folder. Unzip it yourself and read the folder, or free disk space."
            )
        zf.extractall(tmp)
        root = Path(tmp)
        matrices = _find_mtx(root).matrices
        if len(matrices) == 1:
            if matrices[0].parent != root:
                extra["member"] = str(matrices[0].parent.relative_to(root))
            return _read_mtx_set(matrices[0])
        if len(matrices) > 1:
            raise DataError(f"{path.name} holds {len(matrices)} 10x matrices; zip one sample at a time.")
        # Not a 10x folder: accept a zip that wraps exactly one other supported file.
        inner = [
            root / m.filename
            for m in members
            if not m.is_dir() and "__MACOSX" not in PurePosixPath(m.filename.replace("\\", "/")).parts
        ]
        readable = [p for p in inner if p.is_file() and _format_or_none(p) not in (None, "zip", "10x_mtx")]
        if len(readable) != 1:
            raise DataError(
                f"{path.name} holds no 10x matrix folder (matrix.mtx[.gz], features.tsv or "
                "genes.tsv, barcodes.tsv). Zip the folder Cell Ranger wrote, or read the file "
                "directly."
            )
        inner_fmt = _format_or_none(readable[0])
        assert inner_fmt is not None
        extra["member"] = str(readable[0].relative_to(root))
        extra["inner_format"] = inner_fmt
        return _read_any(readable[0], inner_fmt, orientation, extra)


def _format_or_none(path: Path) -> str | None:
    try:
        return _detect_format(path)
    except DataError:
        return None


# Text tables --------------------------------------------------------------------------------------

_BARCODE_RE = re.compile(r"[ACGTN]{8,}")
_CELL_WORD_RE = re.compile(r"^(cell|barcode)[\s_.:\-]?\d+", re.IGNORECASE)
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}", re.IGNORECASE)
_MARKER_GENE_RE = re.compile(r"^(MT-|RPL\d|RPS\d)", re.IGNORECASE)


def _looks_like_cells(names: list[str]) -> bool:
    if not names:
        return False
    hits = sum(bool(_BARCODE_RE.search(n) or _CELL_WORD_RE.match(n)) for n in names)
    return hits >= 0.5 * len(names)


def _looks_like_genes(names: list[str]) -> bool:
    if not names:
        return False
    ensembl = sum(bool(_ENSEMBL_RE.match(n)) for n in names)
    markers = sum(bool(_MARKER_GENE_RE.match(n)) for n in names)
    return ensembl >= 0.5 * len(names) or markers >= 2


def _guess_orientation(rows: list[str], cols: list[str]) -> tuple[str, str, bool]:
    """(orientation, reason, guessed_from_shape) for a table with these row and column names."""
    rows_are_genes = _looks_like_genes(rows) or _looks_like_cells(cols)
    cols_are_genes = _looks_like_genes(cols) or _looks_like_cells(rows)
    if rows_are_genes and not cols_are_genes:
        return "genes_x_cells", "row names look like genes or column names like cells", False
    if cols_are_genes and not rows_are_genes:
        return "cells_x_genes", "column names look like genes or row names like cells", False
    if len(cols) > len(rows):
        reason = f"no telling names; more columns ({len(cols)}) than rows ({len(rows)})"
        return "genes_x_cells", reason, True
    reason = f"no telling names; at least as many rows ({len(rows)}) as columns ({len(cols)})"
    return "cells_x_genes", reason, True


def _pick_separator(line: str, preferred: str) -> str:
    if preferred in line:
        return preferred
    for sep in ("\t", ",", ";"):
        if sep in line:
            return sep
    return r"\s+"


def _split_header(line: str, sep: str) -> list[str]:
    if sep == r"\s+":
        return line.split()
    return next(csv.reader([line], delimiter=sep))


def _n_fields(line: str, sep: str) -> int:
    """Fields in a line, counted without splitting it (quoted separators count too: an upper bound)."""
    return len(line.split()) if sep == r"\s+" else line.count(sep) + 1


class _Prepend(io.TextIOBase):
    """A text stream that gives ``head`` first and then the rest of ``stream``: lets pandas parse a
    line that was already read to check it, without reading the file twice."""

    def __init__(self, head: str, stream: IO[str]) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        if not self._head:
            return self._stream.read(size)
        if size is None or size < 0:
            out, self._head = self._head + self._stream.read(), ""
            return out
        out, self._head = self._head[:size], self._head[size:]
        return out

    def readline(self, size: int | None = -1) -> str:
        if not self._head:
            return self._stream.readline(size)
        return self.read(len(self._head) if size is None or size < 0 else min(size, len(self._head)))


def _too_wide(fname: str, n_fields: int, where: str) -> DataError:
    return DataError(
        f"{fname} has {n_fields:,} fields in its {where}, more than the {MAX_TABLE_COLUMNS:,} columns "
        "a text table may have here (so wide a table takes minutes and gigabytes to parse). Save "
        "it the other way round (transposed, so the longer axis runs down the rows), or in a "
        "sparse format such as .h5ad or a 10x matrix folder."
    )


def _next_line(text: IO[str], fname: str, where: str) -> tuple[str, int]:
    """The next non-blank line (bounded in length) and how many lines were read to find it."""
    n_read = 0
    while True:
        line = text.readline(_MAX_LINE_CHARS)
        n_read += 1
        if len(line) >= _MAX_LINE_CHARS and not line.endswith("\n"):
            raise DataError(
                f"The {where} of {fname} is longer than {_MAX_LINE_CHARS // 2**20} MB. A table this "
                "wide cannot be read as text: save it transposed, or as .h5ad or a 10x matrix folder."
            )
        if not line or line.strip():
            return line, n_read


def _read_table(path: Path, orientation: str, extra: dict[str, Any]) -> ad.AnnData:
    if _magic(path)[0] in ("hdf5", "zip", "binary"):
        raise DataError(
            f"{path.name} should be a text table but {_sniff(path)}. Rename it to match what "
            "it holds (.h5ad, .h5, .loom, .zip) or pass the right fmt."
        )
    name = path.name.lower()
    preferred = "," if name.endswith((".csv", ".csv.gz")) else "\t"
    not_utf8 = DataError(f"{path.name} is not UTF-8 text. Save the table as UTF-8 csv/tsv and load it again.")
    with _open_bytes(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        try:
            header, header_line = _next_line(text, path.name, "first line")
            header = header.rstrip("\r\n")
            if not header.strip():
                raise DataError(
                    f"{path.name} is empty (0 cells, 0 genes). Export the expression table again."
                )
            sep = _pick_separator(header, preferred)
            # Both the header and the first data row are checked before pandas parses anything:
            # pandas makes one column object per field, so a million fields take minutes.
            if _n_fields(header, sep) > MAX_TABLE_COLUMNS + 1:
                raise _too_wide(path.name, _n_fields(header, sep), "first line")
            first, skipped = _next_line(text, path.name, "first data row")
        except UnicodeDecodeError:
            raise not_utf8 from None
        if not first:
            raise DataError(
                f"{path.name} has a header row but no data rows: the matrix is empty "
                "(0 rows). Export the expression values, not only the names."
            )
        if _n_fields(first, sep) > MAX_TABLE_COLUMNS + 1:
            raise _too_wide(path.name, _n_fields(first, sep), "first data row")
        first_line = header_line + skipped  # line number of the first data row in the file
        names = [h.strip() for h in _split_header(header, sep)]
        try:
            table = pd.read_csv(
                _Prepend(first, text),
                sep=sep,
                header=None,
                index_col=0,
                dtype={0: str},
                skip_blank_lines=True,
                low_memory=False,
            )
        except pd.errors.EmptyDataError:
            raise DataError(
                f"{path.name} has a header row but no data rows: the matrix is empty "
                "(0 rows). Export the expression values, not only the names."
            ) from None
        except UnicodeDecodeError:
            raise not_utf8 from None
        except pd.errors.ParserError as exc:
            raise DataError(
                f"{path.name} has rows of different lengths{_ragged_where(exc, first_line - 1)}. "
                "Every row needs a name followed by one value per column; check for stray "
                "separators or quotes."
            ) from None
    n_rows, n_cols = table.shape
    if n_cols == len(names) - 1:
        col_names = names[1:]  # the header has a corner cell above the row names
    elif n_cols == len(names):
        col_names = names  # R's write.table leaves the corner out
    else:
        raise DataError(
            f"{path.name}: the header row has {len(names)} names but the data rows have "
            f"{n_cols + 1} fields. The first line must name every column (the corner may be "
            "empty); check the separator and quoting."
        )
    if n_cols == 0 or n_rows == 0:
        raise DataError(
            f"{path.name} holds an empty matrix ({n_rows} rows x {n_cols} value columns). "
            "The first column must hold names and the others expression values."
        )
    if _looks_numeric_header(col_names):
        raise DataError(
            f"The first line of {path.name} looks like data (numbers with decimals), not names. "
            "Add a header row with the gene or cell names."
        )
    row_names = [str(r) for r in table.index]
    table.columns = pd.RangeIndex(n_cols)
    values = _numeric_values(table, path.name, first_line)

    if orientation == "auto":
        orientation, reason, guessed = _guess_orientation(row_names, col_names)
        if guessed:
            rows_as = "genes" if orientation == "genes_x_cells" else "cells"
            other = "cells_x_genes" if orientation == "genes_x_cells" else "genes_x_cells"
            warnings.warn(
                f"{path.name}: read rows as {rows_as} ({reason}). If that is wrong, load it "
                f"again with orientation='{other}'.",
                DataWarning,
                stacklevel=4,
            )
    else:
        reason = "given"
    extra["orientation"] = orientation
    extra["orientation_reason"] = reason
    if orientation == "genes_x_cells":
        values = values.T
        row_names, col_names = col_names, row_names
    return ad.AnnData(
        X=np.ascontiguousarray(values),
        obs=pd.DataFrame(index=pd.Index(row_names, dtype=str)),
        var=pd.DataFrame(index=pd.Index(col_names, dtype=str)),
    )


def _ragged_where(exc: BaseException, lines_before: int) -> str:
    """Where pandas found a row of the wrong length, from the numbers of its message only (the
    message's other text may quote the file)."""
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if not found:
        return ""
    expected, line, saw = (int(g) for g in found.groups())
    return f": line {line + lines_before} has {saw} fields where {expected} were expected"


def _looks_numeric_header(names: list[str]) -> bool:
    def is_fraction(text: str) -> bool:
        try:
            return not float(text).is_integer()
        except ValueError:
            return False

    return bool(names) and all(is_fraction(n) for n in names[:20])


def _numeric_values(table: pd.DataFrame, fname: str, first_line: int) -> np.ndarray:
    """The table as float32, or a DataError giving the line and field of the first bad value.

    The messages say what is wrong and where, never what the cell holds: the file may be any text
    file on the server, read as a table.
    """
    kinds = np.array([dtype.kind for dtype in table.dtypes])
    for j in np.flatnonzero(~np.isin(kinds, ["i", "u", "f"])):  # only columns pandas left as text
        column = table[j]
        numeric = pd.to_numeric(column, errors="coerce") if column.dtype.kind == "O" else None
        if numeric is None:
            bad = np.zeros(len(column), dtype=bool)
            bad[0] = True  # booleans and the like: every entry is wrong
        else:
            bad = (numeric.isna() & column.notna()).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            if re.fullmatch(r"\s*-?\d+,\d+\s*", str(column.iloc[i])):
                problem = "a decimal comma where a number was expected (use '.' as the decimal separator)"
            else:
                problem = "text where a number was expected"
            raise DataError(
                f"{fname} holds {problem} at line {first_line + i}, field {j + 2}. Only the first "
                "column and the header row may hold names; remove annotation columns or text and "
                "save them in a separate file."
            )
        table[j] = numeric
    values = table.to_numpy(dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        n_bad = int((~finite).sum())
        kind = "missing (empty or NA)" if np.isnan(values[i, j]) else "infinite"
        raise DataError(
            f"{fname} has {n_bad} missing (empty/NA) or infinite value(s); the first, at line "
            f"{first_line + i}, field {j + 2}, is {kind}. Fill missing values with 0 or remove "
            "those rows/columns, then load the file again."
        )
    return values


# Shared finishing -----------------------------------------------------------------------------


def as_float32(X: Any) -> np.ndarray | sp.csr_matrix:
    """float32 CSR for sparse or mostly-zero input, float32 dense otherwise (no copy if already)."""
    if sp.issparse(X):
        out = sp.csr_matrix(X, dtype=np.float32)
        out.sum_duplicates()
        return out
    arr = np.asarray(X, dtype=np.float32)
    if arr.ndim != 2:
        raise DataError(f"The expression matrix must be 2-D; got shape {arr.shape}.")
    if arr.size and np.count_nonzero(arr) < _SPARSE_BELOW * arr.size:
        return sp.csr_matrix(arr)
    return arr


def _unique_names(names: pd.Index) -> tuple[pd.Index, int]:
    """Names made unique with -1, -2 … suffixes; also how many changed."""
    values = [str(v) for v in names]
    original = set(values)
    if len(original) == len(values):
        return pd.Index(values), 0
    taken: set[str] = set()
    counters: dict[str, int] = {}
    out: list[str] = []
    for v in values:
        if v not in taken:
            taken.add(v)
            out.append(v)
            continue
        k = counters.get(v, 0)
        while True:  # skip suffixes that are real names elsewhere in the list
            k += 1
            candidate = f"{v}-{k}"
            if candidate not in original and candidate not in taken:
                break
        counters[v] = k
        taken.add(candidate)
        out.append(candidate)
    return pd.Index(out), len(values) - len(original)


def _dedupe(adata: ad.AnnData, fname: str) -> None:
    for axis, what in (("obs", "cell"), ("var", "gene")):
        index = getattr(adata, f"{axis}_names")
        new, n_dup = _unique_names(index)
        if n_dup:
            # No example name: names are the file's text, and the file may not be a dataset at all.
            warnings.warn(
                f"{fname}: {n_dup} duplicated {what} name(s) were made unique by adding -1, -2 … "
                "to the repeats.",
                DataWarning,
                stacklevel=4,
            )
        setattr(adata, f"{axis}_names", new)


def finish(adata: ad.AnnData, fname: str, source: dict[str, Any]) -> ad.AnnData:
    """Enforce the reader contract: non-empty, float32, finite, unique names, source recorded."""
    n_cells, n_genes = adata.shape
    if n_cells == 0 or n_genes == 0:
        raise DataError(
            f"{fname} holds an empty matrix ({n_cells} cells x {n_genes} genes). Check that the "
            "export is complete (for 10x data use the filtered matrix, which holds the cells)."
        )
    adata.X = as_float32(adata.X)
    n_bad = n_nonfinite(adata.X)
    if n_bad:
        raise DataError(
            f"{fname} holds {n_bad} NaN or infinite value(s) in its expression matrix. Replace "
            "them (for example with 0) or remove the affected cells/genes, then load it again."
        )
    _dedupe(adata, fname)
    adata.uns["scgraph_source"] = source
    return adata
