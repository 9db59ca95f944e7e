"""Which files on the server the app may read: paths typed in a browser stay inside the data roots.

The app's Data page lets a user type a path on the server. Served to a lab, that box must not become a
way to read the server's files, so a typed path is accepted only when it resolves (symbolic links
followed) to a file or folder inside one of the configured data roots, and no part of it below the root
is hidden (``.ssh``, ``.env``, ``.scgraph``: a run store). A path that is absent and a path that is not
allowed get the same answer, so the box cannot be used to probe which paths exist.

The roots come from ``SCGRAPH_DATA_ROOTS``: folders separated by ``:`` (``;`` on Windows). Without it the
root is the home folder of the user running the app. The command line and the Python API read any path
their user can read: they run with that user's own rights, so no roots apply there.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError

ENV = "SCGRAPH_DATA_ROOTS"


def data_roots() -> list[Path]:
    """The configured roots, resolved, existing folders only (``SCGRAPH_DATA_ROOTS`` or the home folder)."""
    text = os.environ.get(ENV, "").strip()
    entries = [e.strip() for e in text.split(os.pathsep) if e.strip()] if text else [str(Path.home())]
    out: list[Path] = []
    for entry in entries:
        real = Path(os.path.realpath(Path(entry).expanduser()))
        if real.is_dir() and real not in out:
            out.append(real)
    return out


def describe_roots(roots: list[Path] | None = None) -> str:
    roots = data_roots() if roots is None else roots
    if not roots:
        return f"no data folder is configured ({ENV} names no existing folder)"
    return ", ".join(str(r) for r in roots)


def _inside(real: Path, root: Path) -> bool:
    try:
        rest = real.relative_to(root)
    except ValueError:
        return False
    return not any(part.startswith(".") for part in rest.parts)


def allowed(path: str | Path, roots: list[Path] | None = None) -> Path | None:
    """The resolved path when it exists inside a data root and nothing below the root is hidden, else None.

    A relative path is taken from the first root (not from the server's working folder).
    """
    roots = data_roots() if roots is None else roots
    text = str(path).strip()
    if not text or not roots or "\x00" in text:
        return None
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        real = Path(os.path.realpath(candidate))
        exists = real.exists()
    except (OSError, ValueError):
        return None
    if not exists:
        return None
    return real if any(_inside(real, root) for root in roots) else None


def resolve(path: str | Path, roots: list[Path] | None = None) -> Path:
    """:func:`allowed`, or a :class:`DataError` that reads the same whether the path is absent or refused."""
    roots = data_roots() if roots is None else roots
    found = allowed(path, roots)
    if found is None:
        raise DataError(
            f"There is no dataset this server can open at {str(path).strip()!r}. Paths must lead to a "
            f"file or folder inside the data folders ({describe_roots(roots)}), and hidden files and "
            "folders (names starting with '.') are never read. Check the spelling, copy the data into a "
            f"data folder, or ask whoever runs the server to add its folder to {ENV}."
        )
    return found
