"""Micro-benchmark of one CellVGAE training step: PyG baseline vs the lean GAT in float32 and bf16.

One step = forward + edge reconstruction loss (fresh negatives) + KL/N + backward + Adam step, at the
paper preset (D = 250 genes, hidden 128/128, 10 heads in every layer, L = 50) on a kNN graph (k = 5,
union-symmetrised) of random clustered points, for N = 2638 (PBMC3k) and 20000 cells (and optionally
100000, lean implementation only).

    python benchmarks/bench_layers.py                       # 2638 and 20000 cells, all three variants
    python benchmarks/bench_layers.py --sizes 100000 --impls fp32 bf16 --steps 3

Each (variant, size) runs in its own fresh process, so memory numbers are not polluted by another
run. Memory is reported two ways:
  * ``peak_rss_mb``: the kernel's high-water mark of the process's resident memory (``VmHWM`` in
    /proc/self/status; exact, but it includes the interpreter, torch and the input tensors). Not
    ``ru_maxrss``: a child started by fork + exec inherits the parent's high-water mark there;
  * ``train_rss_mb``: peak RSS sampled every 5 ms by a psutil thread during the timed steps, minus the
    RSS after the inputs were loaded, i.e. what training itself adds (parameters, Adam state,
    activations, caches). Sampling can miss a short spike; ``peak_rss_mb`` cannot.
Times are per-step medians after ``--warmup`` untimed steps (the first step builds the lean layers'
graph cache). The machine may be shared, and two OpenMP threads slow down badly when another process
takes a core, so variants run round-robin for ``--rounds`` rounds and the summary reports the best
round's median (``median_s``) next to the median over all rounds (``median_all_s``).

Results: ``benchmarks/results/layers.json`` and a table on stdout. An accuracy check compares the lean
module with the baseline at identical weights (eval mode, float32 and bf16 autocast).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from cellvgae_baseline import baseline_model, baseline_step  # noqa: E402

from scgraph_core import pipeline  # noqa: E402
from scgraph_core.models.cellvgae import CellVGAENet  # noqa: E402
from scgraph_core.nn.losses import edge_reconstruction_loss, kl_divergence  # noqa: E402

# The paper preset, read from the model's own presets (one place for every default).
_PAPER = pipeline.resolve_config("cellvgae", "paper")
PRESET = {name: getattr(_PAPER.params, name) for name in ("hidden", "heads", "attn_dropout", "latent")}
LR = _PAPER.params.lr
N_GENES = _PAPER.prepare.n_hvg
K_NEIGHBOURS = _PAPER.graph.k
IMPLS = ("baseline", "fp32", "bf16")


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------


def knn_graph(
    n: int, k: int = K_NEIGHBOURS, dim: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN (k) on a random Gaussian mixture in ``dim`` dimensions, union-symmetrised.

    Returns (edge_index [2, E] with both directions of every edge, positives [2, E/2] listed once).
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, dim, generator=gen) * 4.0
    points = centres[torch.randint(12, (n,), generator=gen)] + torch.randn(n, dim, generator=gen)
    return knn_on(points, k)


def knn_on(points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean kNN graph of the rows of ``points``, union-symmetrised (see :func:`knn_graph`)."""
    n = points.size(0)
    nbrs = []
    for start in range(0, n, 1024):  # blocked, so memory stays O(1024·N)
        d = torch.cdist(points[start : start + 1024], points)
        d[torch.arange(d.size(0)), torch.arange(start, start + d.size(0))] = float("inf")
        nbrs.append(d.topk(k, largest=False).indices)
    nbr = torch.cat(nbrs)
    src = torch.arange(n).repeat_interleave(k)
    dst = nbr.reshape(-1)
    both = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    keys = torch.unique(both[0] * n + both[1])
    edge_index = torch.stack([keys // n, keys % n])
    pos = edge_index[:, edge_index[0] < edge_index[1]]
    return edge_index, pos


def make_inputs(n: int, path: Path) -> None:
    edge_index, pos = knn_graph(n)
    x = torch.rand(n, N_GENES, generator=torch.Generator().manual_seed(1))
    torch.save({"x": x, "edge_index": edge_index, "pos": pos}, path)


# ----------------------------------------------------------------------------------------------------
# Worker: one variant at one size, in a fresh process
# ----------------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (Linux VmHWM; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Peak RSS of this process, sampled on a background thread."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def lean_step(
    net: CellVGAENet,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    edge_index: torch.Tensor,
    pos: torch.Tensor,
    bf16: bool,
) -> float:
    """One training step of the lean module (float32, or bf16 autocast for forward and losses)."""
    net.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        z, mu, s = net(x, edge_index)
        n = x.size(0)
        loss = edge_reconstruction_loss(z, pos, n) + kl_divergence(mu, s) / n
    loss.backward()
    optimizer.step()
    return loss.detach().item()


def worker(impl: str, inputs: Path, steps: int, warmup: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    data = torch.load(inputs)
    x, edge_index, pos = data["x"], data["edge_index"], data["pos"]
    n = x.size(0)
    if impl == "baseline":
        model = baseline_model(N_GENES, **PRESET)
        opt = torch.optim.Adam(model.parameters(), lr=LR)

        def step() -> float:
            return baseline_step(model, opt, x, edge_index, pos)
    else:
        net = CellVGAENet(N_GENES, conv="gat", **PRESET)
        opt = torch.optim.Adam(net.parameters(), lr=LR)

        def step() -> float:
            return lean_step(net, opt, x, edge_index, pos, bf16=impl == "bf16")

    setup_rss = psutil.Process().memory_info().rss
    times, losses = [], []
    with RssSampler() as sampler:
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            losses.append(step())
            dt = time.perf_counter() - t0
            if i >= warmup:
                times.append(dt)
    return {
        "impl": impl,
        "n_cells": n,
        "n_directed_edges": int(edge_index.size(1)),
        "step_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "losses": losses,
        "setup_rss_mb": setup_rss / 2**20,
        "train_rss_mb": (sampler.peak - setup_rss) / 2**20,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "loadavg_1min": [load_before, os.getloadavg()[0]],
    }


# ----------------------------------------------------------------------------------------------------
# Accuracy at identical weights
# ----------------------------------------------------------------------------------------------------


def copy_baseline_weights(encoder: torch.nn.Module, net: CellVGAENet) -> None:
    """Give the lean module exactly the baseline encoder's parameters."""
    with torch.no_grad():
        for conv, layer in zip((encoder.conv1, encoder.conv2), net.hidden_layers, strict=True):
            layer.weight.copy_(conv.lin.weight)
            layer.att_src.copy_(conv.att_src[0])
            layer.att_dst.copy_(conv.att_dst[0])
            layer.bias[0].copy_(conv.bias)
        fused = net.latent_layer
        mu, sigma = encoder.conv_mu, encoder.conv_sigma
        fused.weight.copy_(torch.cat([mu.lin.weight, sigma.lin.weight]))
        fused.att_src.copy_(torch.cat([mu.att_src[0], sigma.att_src[0]]))
        fused.att_dst.copy_(torch.cat([mu.att_dst[0], sigma.att_dst[0]]))
        fused.bias[0].copy_(mu.bias)
        fused.bias[1].copy_(sigma.bias)


def accuracy_check(inputs: Path) -> dict:
    """Relative errors (‖a − b‖/‖b‖) of the lean module vs the float32 baseline at identical weights.

    Eval mode (no dropout), PBMC3k-sized random kNN graph. Compared: μ, log-σ, the gradients of a fixed
    random projection of (μ, log-σ) with respect to the projection weights W (max over layers) and to
    the attention vectors a_src (max over layers). For bf16 autocast, ``bf16_input_rounding`` gives the
    same errors for a float32 run whose inputs and weights were merely rounded to bf16: the error that
    bf16 storage alone implies, to read the autocast numbers against. The attention-vector gradients
    are small sums of nearly cancelling terms (softmax backward), hence their larger relative error.
    """
    torch.manual_seed(0)
    data = torch.load(inputs)
    x, edge_index = data["x"], data["edge_index"]
    model = baseline_model(N_GENES, **PRESET).eval()
    net = CellVGAENet(N_GENES, conv="gat", **PRESET).eval()
    copy_baseline_weights(model.encoder, net)
    gen = torch.Generator().manual_seed(3)
    r_mu = torch.randn(x.size(0), PRESET["latent"], generator=gen)
    r_s = torch.randn(x.size(0), PRESET["latent"], generator=gen)

    def run(module: torch.nn.Module, encode, bf16: bool) -> list[torch.Tensor]:
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            mu, s = encode()
        ((mu.float() * r_mu).sum() + (s.float() * r_s).sum()).backward()
        return [mu.detach().float(), s.detach().float()]

    def errors(got: list[torch.Tensor], grads: dict[str, torch.Tensor]) -> dict[str, float]:
        return {
            "mu_rel_err": _rel(got[0], ref[0]),
            "log_sigma_rel_err": _rel(got[1], ref[1]),
            "weight_grad_rel_err": max(_rel(grads[k], ref_grads[k]) for k in ref_grads if k.startswith("W")),
            "attention_grad_rel_err": max(
                _rel(grads[k], ref_grads[k]) for k in ref_grads if k.startswith("as")
            ),
        }

    ref = run(model, lambda: model.encoder(x, edge_index), False)
    ref_grads = _baseline_grads(model.encoder)
    out: dict[str, dict[str, float]] = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        out[name] = errors(run(net, lambda: net.encode(x, edge_index), bf16), _lean_grads(net))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.bfloat16().float())
    x_rounded = x.bfloat16().float()
    got = run(net, lambda: net.encode(x_rounded, edge_index), False)
    out["bf16_input_rounding"] = errors(got, _lean_grads(net))
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (Frobenius)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _baseline_grads(enc: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = {}
    for i, conv in enumerate((enc.conv1, enc.conv2)):
        g[f"W{i}"], g[f"as{i}"] = conv.lin.weight.grad, conv.att_src.grad[0]
    g["Wlat"] = torch.cat([enc.conv_mu.lin.weight.grad, enc.conv_sigma.lin.weight.grad])
    g["aslat"] = torch.cat([enc.conv_mu.att_src.grad[0], enc.conv_sigma.att_src.grad[0]])
    return g


def _lean_grads(net: CellVGAENet) -> dict[str, torch.Tensor]:
    g = {}
    for i, layer in enumerate(net.hidden_layers):
        g[f"W{i}"], g[f"as{i}"] = layer.weight.grad, layer.att_src.grad
    g["Wlat"], g["aslat"] = net.latent_layer.weight.grad, net.latent_layer.att_src.grad
    return g


def training_check(epochs: int, threads: int | None) -> dict | None:
    """Train fp32 and bf16 from the same initialisation on PBMC3k (../shared/data) and compare.

    Paper-like setup: min-max scaled features, kNN (k = 5) on the log data, 10 % of the undirected edges
    held out; Adam lr 1e-4. Reports the loss curve ends and the held-out AUROC / AP of each run
    (held-out positives against as many sampled non-edges).
    """
    path = REPO.parent / "shared" / "data" / "pbmc3k_seurat250.h5ad"
    if not path.exists():
        return None
    import anndata
    from scipy.stats import rankdata

    from scgraph_core.nn.losses import sample_negative_edges

    if threads:
        torch.set_num_threads(threads)
    adata = anndata.read_h5ad(path)
    logx = torch.tensor(adata.X.toarray(), dtype=torch.float32)
    lo, hi = logx.min(0).values, logx.max(0).values
    x = (logx - lo) / (hi - lo).clamp_min(1e-12)
    n = x.size(0)
    _, und = knn_on(logx, K_NEIGHBOURS)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(und.size(1), generator=gen)
    n_test = und.size(1) // 10
    test_pos, train_pos = und[:, perm[:n_test]], und[:, perm[n_test:]]
    message = torch.cat([train_pos, train_pos.flip(0)], dim=1)
    test_neg = sample_negative_edges(torch.cat([und, und.flip(0)], 1), n, n_test, generator=gen)

    def scores(z: torch.Tensor) -> tuple[float, float]:
        s = torch.cat([CellVGAENet.decode_edges(z, test_pos), CellVGAENet.decode_edges(z, test_neg)]).numpy()
        y = torch.cat([torch.ones(n_test), torch.zeros(n_test)]).numpy()
        ranks = rankdata(s)
        auroc = (ranks[y == 1].sum() - n_test * (n_test + 1) / 2) / (n_test * n_test)
        order = (-s).argsort()
        hits = y[order].cumsum()
        ap = float((hits / (torch.arange(len(y)).numpy() + 1))[y[order] == 1].mean())
        return float(auroc), ap

    results = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        torch.manual_seed(0)
        net = CellVGAENet(N_GENES, conv="gat", **PRESET)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        gen_train = torch.Generator().manual_seed(1)
        losses = []
        t0 = time.perf_counter()
        for _ in range(epochs):
            net.train()
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                z, mu, s = net(x, message, generator=gen_train)
                loss = (
                    edge_reconstruction_loss(z, train_pos, n, generator=gen_train) + kl_divergence(mu, s) / n
                )
            loss.backward()
            opt.step()
            losses.append(loss.detach().item())
        net.eval()
        with torch.no_grad():
            mu = net.encode(x, message)[0]
        auroc, ap = scores(mu)
        results[name] = {
            "first_losses": losses[:3],
            "last10_mean_loss": sum(losses[-10:]) / 10,
            "test_auroc": auroc,
            "test_ap": ap,
            "seconds": time.perf_counter() - t0,
        }
        print(f"training check {name}: {json.dumps(results[name])}", flush=True)
    return {"epochs": epochs, "dataset": path.name, "runs": results}


# ----------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2638, 20000])
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every run, round-robin")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "layers.json")
    parser.add_argument(
        "--large-from", type=int, default=50000, help="sizes from here: one round, --large-steps"
    )
    parser.add_argument("--large-steps", type=int, default=2)
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument(
        "--max-baseline-cells",
        type=int,
        default=20000,
        help="skip the PyG baseline above this size (it needs ~0.25 MB per cell; 100k cells would not fit)",
    )
    parser.add_argument(
        "--train-check", type=int, default=0, metavar="EPOCHS", help="also train fp32 vs bf16 on PBMC3k"
    )
    parser.add_argument("--only-train-check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "INPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), args.steps, args.warmup, args.threads)))
        return

    if args.only_train_check:
        print(json.dumps(training_check(args.train_check, args.threads)))
        return

    runs: list[dict] = []
    accuracy = None
    train_check = None
    if args.train_check:
        train_check = training_check(args.train_check, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for n in args.sizes:
            paths[n] = Path(tmp) / f"inputs_{n}.pt"
            make_inputs(n, paths[n])
        if not args.no_accuracy and 2638 in paths:
            accuracy = accuracy_check(paths[2638])
            print("accuracy vs baseline (identical weights, eval):", json.dumps(accuracy, indent=1))
        for rnd in range(args.rounds):
            for n in args.sizes:
                for impl in args.impls:
                    if impl == "baseline" and n > args.max_baseline_cells:
                        if rnd == 0:
                            print(f"N={n}: baseline skipped (--max-baseline-cells {args.max_baseline_cells})")
                        continue
                    large = n >= args.large_from
                    if large and rnd > 0:
                        continue  # large sizes: one round, few steps (a step takes tens of seconds)
                    steps, warmup = (args.large_steps, 1) if large else (args.steps, args.warmup)
                    cmd = [sys.executable, __file__, "--worker", impl, str(paths[n])]
                    cmd += ["--steps", str(steps), "--warmup", str(warmup)]
                    if args.threads:
                        cmd += ["--threads", str(args.threads)]
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                    if proc.returncode != 0:
                        print(proc.stderr[-3000:], file=sys.stderr)
                        runs.append({"impl": impl, "n_cells": n, "round": rnd, "error": proc.stderr[-500:]})
                        continue
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                    res["round"] = rnd
                    runs.append(res)
                    print(
                        f"round {rnd} N={n:>6} {impl:>8}: median {res['median_s']:.3f} s/step "
                        f"(min {res['min_s']:.3f}), train +{res['train_rss_mb']:.0f} MB, "
                        f"peak RSS {res['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )

    summary = _summarise(runs)
    print()
    print(f"{'cells':>7} {'variant':>9} {'s/step':>8} {'x base':>7} {'+train MB':>10} {'peak MB':>8}")
    for row in summary:
        print(
            f"{row['n_cells']:>7} {row['impl']:>9} {row['median_s']:>8.3f} {row['speedup'] or float('nan'):>7.2f}"
            f" {row['train_rss_mb']:>10.0f} {row['peak_rss_mb']:>8.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "preset": {**PRESET, "genes": N_GENES, "k": K_NEIGHBOURS},
        "step": "forward + edge BCE (fresh negatives) + KL/N + backward + Adam",
    }
    args.out.write_text(
        json.dumps(
            {
                "meta": meta,
                "accuracy": accuracy,
                "training_check": train_check,
                "summary": summary,
                "runs": runs,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


def _summarise(runs: list[dict]) -> list[dict]:
    rows = []
    sizes = sorted({r["n_cells"] for r in runs})
    for n in sizes:
        base = None
        for impl in IMPLS:
            ok = [r for r in runs if r["n_cells"] == n and r["impl"] == impl and "error" not in r]
            if not ok:
                continue
            steps = [t for r in ok for t in r["step_s"]]
            med = min(statistics.median(r["step_s"]) for r in ok)  # best round: least disturbed
            if impl == "baseline":
                base = med
            rows.append(
                {
                    "n_cells": n,
                    "impl": impl,
                    "median_s": med,
                    "median_all_s": statistics.median(steps),
                    "min_s": min(steps),
                    "speedup": (base / med) if base else None,
                    "train_rss_mb": max(r["train_rss_mb"] for r in ok),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
                    "n_directed_edges": ok[0]["n_directed_edges"],
                }
            )
    return rows


if __name__ == "__main__":
    main()
