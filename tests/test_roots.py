"""Server paths typed in the app stay inside the data roots; absent and refused read the same."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scgraph_core import roots
from scgraph_core.errors import DataError


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    base = tmp_path / "data"
    base.mkdir()
    (base / "pbmc.h5ad").write_bytes(b"not really h5ad")
    (base / "sample").mkdir()
    monkeypatch.setenv(roots.ENV, str(base))
    return base


def test_a_file_inside_the_root_is_allowed_and_resolved(root):
    assert roots.resolve(str(root / "pbmc.h5ad")) == (root / "pbmc.h5ad").resolve()
    assert roots.resolve("pbmc.h5ad") == (root / "pbmc.h5ad").resolve()  # relative: from the first root
    assert roots.resolve(str(root / "sample")) == (root / "sample").resolve()


def test_outside_hidden_linked_out_and_absent_paths_get_one_answer(root, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("db_password=hunter2\n")
    (root / ".env").write_text("db_password=hunter2\n")
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (root / "link.txt").symlink_to(secret)
    (root / "up").symlink_to(tmp_path)
    refused = [
        "/etc/passwd",
        str(secret),
        str(root / ".env"),
        str(root / ".ssh"),
        str(root / ".ssh" / "id_rsa"),
        str(root / "link.txt"),
        str(root / "up" / "secret.txt"),
        str(root / ".." / "secret.txt"),
        "../secret.txt",
        str(root / "absent.h5ad"),
        "",
        "bad\x00name",
    ]
    messages = set()
    for typed in refused:
        with pytest.raises(DataError) as err:
            roots.resolve(typed)
        text = str(err.value)
        assert "hunter2" not in text and "PRIVATE KEY" not in text
        messages.add(text.replace(repr(typed.strip()), "<path>"))
    # The same words whether the path is missing or refused: the box cannot probe what exists.
    assert len(messages) == 1, messages
    assert str(root) in messages.pop()  # it says where data may live


def test_several_roots_and_the_default_home(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "x.csv").write_text("")
    monkeypatch.setenv(roots.ENV, os.pathsep.join([str(a), str(tmp_path / "missing"), str(b)]))
    assert roots.data_roots() == [a.resolve(), b.resolve()]
    assert roots.allowed(str(b / "x.csv")) == (b / "x.csv").resolve()
    monkeypatch.delenv(roots.ENV)
    monkeypatch.setenv("HOME", str(a))
    assert roots.data_roots() == [a.resolve()]
    assert roots.allowed(str(b / "x.csv")) is None


def test_the_app_listens_on_this_machine_only_by_default():
    config = (Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text()
    assert 'address = "localhost"' in config
