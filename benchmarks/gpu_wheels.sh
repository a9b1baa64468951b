#!/usr/bin/env bash
# Download, on a machine with network access, the wheels that benchmarks/gpu_check.sh needs on a GPU machine
# whose Python image has PyTorch, numpy, scipy, matplotlib, pytest and friends but no Jupyter kernel:
# ipykernel, nbclient, nbformat and ipywidgets with their dependencies, for CPython 3.12 on x86-64 Linux.
#   bash benchmarks/gpu_wheels.sh [python-version]     # then carry .whl/ to the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
pyver=${1:-3.12}
mkdir -p .whl
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
platforms=()
for n in 17 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl ipykernel nbclient nbformat ipywidgets
# what the GPU image already has (and what is big) need not travel
cd .whl && rm -f numpy-* psutil-* packaging-* attrs-* typing_extensions-* six-* python_dateutil-* platformdirs-* \
  pygments-* && cd ..
du -sh .whl; ls .whl | wc -l
