#!/usr/bin/env bash
# The GPU check (issue #25, section 4): one prepared script for a machine with a CUDA GPU, no internet, about 9
# minutes. Prepare here with benchmarks/gpu_prepare.sh, then run from the repository root on the device:
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Steps, each under its own time limit so one slow step cannot eat the others' time (a step that runs out is
# recorded with rc 124 and the script goes on):
#   1. the CUDA tests (pytest -m gpu on the files that hold them);
#   2. CellVGAE seconds per epoch and GPU memory, the lean layers against PyTorch Geometric, both on the GPU
#      (bench_cellvgae.py --device cuda) at 2,638 and 100,000 cells;
#   3. whole runs, file to result.h5ad, paper preset: pbmc3k, then 100,000 cells synthesised from it
#      (bench_stages.py; seconds of graph, training, analysis, writing);
#   4. one pass of partition-batch training over 1,000,000 synthetic cells with PyTorch capped at 16 GB of GPU
#      memory (bench_minibatch.py --mode memory --gpu-budget-gb 16).
#   5. scBiGNN (issue #23), quick preset, on 100,000 cells synthesised from pbmc4k_top2000, 80 % of the labels
#      (bench_scgnn_scale.py --model scbignn; on the 2-core CPU this run takes about an hour).
# The 1,000,000-cell whole run does not fit in these minutes. Output (seven files, as the device tool returns at
# most eight): env.json, steps.jsonl (rc and seconds per step), log.txt (every step's output), cellvgae.json,
# stages.jsonl, minibatch.jsonl, scbignn.jsonl.
set -u
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -f .whl/site312.tar.xz ]; then
    mkdir -p /tmp/site && tar -xJf .whl/site312.tar.xz -C /tmp/site \
        || { echo "unpacking the carried packages failed" | tee "$OUT/log.txt"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
DATA=${SCGRAPH_SHARED_DATA:-$PWD/.gpudata}
export SCGRAPH_SHARED_DATA=$DATA
PBMC=$DATA/pbmc3k_seurat250.h5ad
python3 - > "$OUT/env.json" <<'PY' || { echo "the imports failed" >> "$OUT/log.txt"; }
import json, platform
import anndata, numpy, pandas, scanpy, torch, torch_geometric
import scgraph_core  # noqa: F401
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "pyg": torch_geometric.__version__,
    "numpy": numpy.__version__, "pandas": pandas.__version__, "anndata": anndata.__version__,
    "scanpy": scanpy.__version__, "cuda": torch.cuda.is_available(),
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
}))
PY
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "===== $name (limit ${limit} s): $*" >> "$OUT/log.txt"
    timeout "$limit" "$@" >> "$OUT/log.txt" 2>&1
    local rc=$?
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" >> "$OUT/steps.jsonl"
}
step cuda_tests 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_attentionae.py tests/models/test_layers.py
step cellvgae_speed 100 python3 benchmarks/bench_cellvgae.py --device cuda --sizes 2638,100000 --presets paper \
    --baseline-max 100000 --out "$OUT/cellvgae.json"
step whole_pbmc3k 50 python3 benchmarks/bench_stages.py --input "$PBMC" --preset paper --modes machine --repeats 1 \
    --jsonl "$OUT/stages.jsonl"
step whole_100k 150 python3 benchmarks/bench_stages.py --input "$PBMC" --cells 100000 --preset paper --modes machine \
    --repeats 1 --jsonl "$OUT/stages.jsonl"
step minibatch_1m 110 python3 benchmarks/bench_minibatch.py --mode memory --input "$PBMC" --cells 1000000 \
    --batch-sizes 4096 --batch-mode parts --epochs 1 --gpu-budget-gb 16 --jsonl "$OUT/minibatch.jsonl"
step scbignn_100k 100 python3 benchmarks/bench_scgnn_scale.py --model scbignn --sizes 100000 --preset quick \
    --timeout 95 --jsonl "$OUT/scbignn.jsonl"
cat "$OUT/steps.jsonl"
