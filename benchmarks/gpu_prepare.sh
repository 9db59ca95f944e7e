#!/usr/bin/env bash
# Run HERE (a machine with the package registry and ../shared) before the device check: it fills two folders
# that git ignores and the device tool carries: .whl (wheels the device image lacks, for its Python 3.12) and
# .gpudata (the input the check reads). The device has PyTorch, PyTorch Geometric, numpy, scipy, scikit-learn,
# numba, h5py, matplotlib, seaborn and statsmodels; it lacks anndata, scanpy, umap-learn, hdbscan, leidenalg, igraph,
# faiss and plotly (a run draws figures), and its pandas 3 makes anndata 0.12 fail to write result.h5ad, so pandas
# 2.3.3 travels too. The wheels are about 70 MB, more than the 64 MiB a call may carry with the repository, so they
# are installed here with a Python 3.12 into one folder, packed as .whl/site312.tar.xz (about 40 MB) and unpacked by
# the check on the device.
#
#   bash benchmarks/gpu_prepare.sh
#   then the device tool: run(command="bash benchmarks/gpu_check.sh $OUT", carry=[".whl", ".gpudata"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SCGRAPH_SHARED_DATA:-../shared/data}
mkdir -p .git/info .whl .gpudata
for path in /.whl/ /.gpudata/; do
    grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
done
WHEELS=(anndata==0.12.19 scanpy==1.11.5 umap-learn==0.5.12 pynndescent==0.6.0 hdbscan==0.8.44 leidenalg==0.12.0
        igraph==1.0.0 faiss-cpu==1.15.1 pandas==2.3.3 pytz==2026.6 tzdata==2026.6 array-api-compat==1.16.0
        legacy-api-wrap==1.5 natsort==8.4.0 scverse-misc==0.1.7 session-info2==0.4.2 texttable==1.7.2 zarr==3.1.6
        numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 plotly==7.1.0 wcwidth==0.9.4
        narwhals==2.29.0)
if [ -z "${PY312:-}" ]; then
    for candidate in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python /usr/bin/python3.12; do
        if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            PY312=$candidate
            break
        fi
    done
fi
[ -n "${PY312:-}" ] || { echo "a Python 3.12 is needed here to install the wheels for the device (set PY312)"; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    PLATFORMS+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$WORK/wheels" "${WHEELS[@]}"
"$PY312" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WORK"/wheels/*.whl
rm -f .whl/*
tar -cJf .whl/site312.tar.xz -C "$WORK/site" .
cp "$DATA/pbmc3k_seurat250.h5ad" "$DATA/pbmc4k_top2000.h5ad" .gpudata/
du -sh .whl .gpudata
echo "ready: carry .whl and .gpudata; run benchmarks/gpu_check.sh \$OUT on the device"
