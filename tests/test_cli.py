"""The command line as other tools call it (contract: exit codes, messages, files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from scgraph_core.__main__ import main

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scgraph_core", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def _counts_file(path: Path, n_cells: int = 120, n_genes: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 3, n_cells)
    rates = rng.gamma(2.0, 1.0, size=(3, n_genes))
    X = rng.poisson(rates[groups]).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(X))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.obs["celltype"] = [f"type{g}" for g in groups]
    adata.write_h5ad(path)
    return path


def test_help_lists_commands():
    proc = _cli("--help")
    assert proc.returncode == 0
    for command in ("inspect", "graph", "runs", "train"):
        assert command in proc.stdout


def test_help_and_runs_do_not_load_torch_or_scanpy(tmp_path):
    """Only the command being run builds its flags: help and the run list answer at once."""
    code = (
        "import sys; from scgraph_core.__main__ import main\n"
        "for argv in (['--help'], ['inspect', '--help'], ['runs', 'list', '--store', sys.argv[1]]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('loaded:', sorted(m for m in ('torch', 'scanpy', 'sklearn') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True,
                          text=True, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "loaded: []" in proc.stdout


def test_inspect_valid_file(tmp_path):
    path = _counts_file(tmp_path / "x.h5ad")
    proc = _cli("inspect", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "cells:    120" in proc.stdout and "genes:    60" in proc.stdout
    assert "raw counts" in proc.stdout and "celltype" in proc.stdout


def test_inspect_invalid_file_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "broken.h5ad"
    bad.write_text("cell,gene\n1,2\n")
    proc = _cli("inspect", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip() and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_inspect_nan_values_exit_2(tmp_path):
    X = np.ones((30, 5), dtype=np.float32)
    X[3, 2] = np.nan
    path = tmp_path / "nan.h5ad"
    ad.AnnData(X).write_h5ad(path)
    proc = _cli("inspect", str(path))
    assert proc.returncode == 2
    assert "NaN" in proc.stderr and "Traceback" not in proc.stderr


def test_inspect_of_hostile_mtx_exits_2_with_one_message(tmp_path):
    # A 10x folder whose matrix.mtx claims 1e11 values: scipy's reader used to abort the process.
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "features.tsv").write_text("".join(f"ENSG{i:011d}\tG{i}\n" for i in range(3)))
    (folder / "barcodes.tsv").write_text("".join(f"CELL{i}-1\n" for i in range(5)))
    (folder / "matrix.mtx").write_text(
        "%%MatrixMarket matrix coordinate integer general\n3 5 100000000000\n1 1 1\n"
    )
    proc = _cli("inspect", str(folder))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: matrix.mtx is not a valid Matrix Market file")
    assert proc.stdout == ""


def test_inspect_reads_in_a_child_with_limits(tmp_path):
    path = _counts_file(tmp_path / "x.h5ad")
    proc = _cli("inspect", str(path), env={"SCGRAPH_READ_TIMEOUT_S": "0.05"})
    assert proc.returncode == 2
    assert "took longer than 0.05 s" in proc.stderr and "Traceback" not in proc.stderr


def test_inspect_turns_a_killed_reader_into_exit_2(tmp_path, capsys, monkeypatch):
    from scgraph_core import safe_read

    path = _counts_file(tmp_path / "x.h5ad")
    abort = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGABRT)"]
    monkeypatch.setattr(safe_read, "_child_command", lambda folder: abort)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the reader stopped (signal SIGABRT)" in err and "Traceback" not in err


def test_inspect_missing_file(capsys):
    assert main(["inspect", "/nonexistent/file.h5ad"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_graph_reports_statistics(tmp_path, capsys):
    path = _counts_file(tmp_path / "x.h5ad")
    edges = tmp_path / "edges.csv"
    code = main(
        [
            "graph",
            str(path),
            "--k",
            "4",
            "--n-hvg",
            "40",
            "--n-graph-genes",
            "30",
            "--json",
            "--save-edges",
            str(edges),
        ]
    )
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_nodes"] == 120 and stats["min_degree"] >= 4
    assert edges.read_text().startswith("source,target")


def test_graph_bad_flag_value_is_a_clear_error(tmp_path, capsys):
    path = _counts_file(tmp_path / "x.h5ad")
    assert main(["graph", str(path), "--k", "0"]) == 2
    err = capsys.readouterr().err
    assert "k must be at least 1" in err


def test_runs_list_empty(capsys):
    assert main(["runs", "list"]) == 0
    assert "no runs" in capsys.readouterr().out


def test_runs_list_succeeds_with_damaged_runs_and_says_which(tmp_path, capsys):
    from scgraph_core.runs import RunStore

    store = RunStore(tmp_path / "runs")
    good = store.create(model="cellvgae", name="good run")
    damaged = {}
    for name, content in [
        ("status.json", "[1, 2]"),
        ("status.json", '"done"'),
        ("status.json", "null"),
        ("status.json", '{"state": "done", "updated": "yesterday"}'),
        ("status.json", '{"state": "exploded"}'),
        ("meta.json", '{"name": "old", "created": "yesterday"}'),
        ("meta.json", "{ torn"),
        ("config.json", "[]"),
    ]:
        run = store.create(model="cellvgae", name="hurt")
        run.file(name).write_text(content)
        damaged[run.id] = name
    proc = _cli("runs", "list", "--store", str(store.root))
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith(good.id) and " queued " in line for line in lines)
    for run_id, name in damaged.items():
        at = next(i for i, line in enumerate(lines) if line.startswith(run_id))
        assert " damaged " in lines[at] and lines[at + 1].strip().startswith(f"damaged: {name}")
        assert run_id in proc.stderr
    capsys.readouterr()
    assert main(["runs", "list", "--json", "--store", str(store.root)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["id"]: r["damaged"] for r in listed} == {good.id: False, **dict.fromkeys(damaged, True)}
    for run_id in damaged:
        assert main(["runs", "delete", run_id, "--store", str(store.root)]) == 0
        assert f"deleted {run_id}" in capsys.readouterr().out
    assert [i.id for i in store.list()] == [good.id]


def test_runs_delete_removes_a_run_without_meta_json(tmp_path, capsys):
    from scgraph_core.runs import RunStore

    store = RunStore(tmp_path / "runs")
    run = store.create(model="cellvgae")
    run.file("meta.json").unlink()
    assert main(["runs", "delete", run.id, "--store", str(store.root)]) == 0
    assert not run.path.exists()


def test_metric_notes_are_printed(capsys):
    from scgraph_core.__main__ import _print_metrics

    _print_metrics({"ari": 0.5, "notes": ["DEC merged the 9 Leiden clusters it started from into 3."]})
    out = capsys.readouterr().out
    assert "ari: 0.5000" in out and "note: DEC merged the 9 Leiden clusters" in out


def test_the_verdict_is_printed_after_the_metrics(tmp_path, capsys):
    from scgraph_core.__main__ import _print_verdict
    from scgraph_core.runs import RunStore

    store = RunStore(tmp_path / "runs")
    adata = ad.AnnData(np.zeros((80, 2), dtype=np.float32))
    adata.obs["celltype"] = [f"t{i % 8}" for i in range(80)]
    adata.obs["clusters"] = [str(i % 2) for i in range(80)]
    adata.uns["scgraph"] = {"views": {"model": "cellvgae", "clusters": "clusters"}}
    run = store.create(model="cellvgae", name="mine", dataset="toy", config={"label_key": "celltype"})
    run.write_json("metrics.json", {"ari": 0.2, "nmi": 0.3, "n_clusters": 2})
    run.write_result(adata)
    _print_verdict(run, store)
    out = capsys.readouterr().out
    assert "verdict (poor): 2 clusters for 8 annotated types: the clustering merges types" in out
    assert "next: On the Embedding page, to split the merged types" in out


def test_the_command_line_of_a_run_reproduces_its_configuration():
    """The Runs page shows this command; parsed back, it gives the run's configuration exactly."""
    import shlex

    from scgraph_core import params, pipeline
    from scgraph_core.__main__ import build_parser, command_line
    from scgraph_core.models import base

    changes = {
        "cellvgae": {"graph": {"k": 7}, "model": {"hidden": [64, 64], "attention": False}, "cluster": {"min_cluster_sizes": [5, 10]}},
        "scvgae": {"model": {"epochs": 11}, "prepare": {"n_hvg": 300}},
        "attentionae": {"model": {"dec_lr": 0.0005}, "cluster": {"resolution": 0.5}},
    }  # fmt: skip
    for model, overrides in changes.items():
        if model not in base.available():
            continue
        original = pipeline.resolve_config(
            model, "quick", {**overrides, "train": {"eval_every": 5}}, label_key="celltype"
        )
        record = {**original.to_dict(), "input": {"path": "/data/my file.h5ad", "orientation": "auto"}}
        words = shlex.split(command_line(record))
        assert words[:4] == ["python", "-m", "scgraph_core", "train"]
        args = build_parser(words[3:]).parse_args(words[3:])
        assert args.input == "/data/my file.h5ad" and args.preset == "quick"
        sections = pipeline.sections_for(model)
        parsed = {name: params.given(args, schema, name) for name, schema in sections.items()}
        again = pipeline.resolve_config(model, args.preset, parsed, label_key=args.label_key)
        assert again == original, model
