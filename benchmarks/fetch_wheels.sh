#!/usr/bin/env bash
# bash benchmarks/fetch_wheels.sh [DEST] [NAME==VERSION ...]: downloads, on a machine with a package index, the wheels
# that the GPU machine lacks, for its Python (3.12, manylinux x86_64), without their dependencies.
#
# The GPU machine (one H200) has Python 3.12 with a CUDA torch 2.11, transformers 5.17 (the project needs >= 5.23),
# accelerate 1.15, huggingface_hub 1.33, tokenizers 0.23.2, safetensors, peft, pandas, pyarrow, xxhash and fsspec
# (versions not all known), and no TRL or datasets. So: transformers, TRL, datasets and the dependencies of datasets it
# lacks (dill, multiprocess) or may hold outside datasets' bounds (fsspec <= 2026.9.0), regex for transformers' lower
# bound, and, small and installed only where older than the project's bounds, PEFT and accelerate; each at the version
# that $PYTHON here has (the one the test suite runs with). benchmarks/install_wheels.py installs there only what is
# missing or too old.
#
# pyarrow (about 55 MB) is not carried: datasets asks for >= 24 and the machine's is used as it is (datasets does not
# check it at import; install_wheels lists it if it is older). Add more as arguments, e.g. `pyarrow==24.0.0`, if the
# 64 MiB carry limit allows. PYTHON_VERSION=3.11 fetches for another Python (a rehearsal here).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-benchmarks/wheels}
shift $(($# > 0 ? 1 : 0))
PYTHON=${PYTHON:-python3}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
LIMIT_MIB=64
NAMES=(transformers trl peft accelerate datasets dill multiprocess fsspec regex)
mapfile -t PACKAGES < <("$PYTHON" -c '
import sys
from importlib.metadata import version
print("\n".join(f"{name}=={version(name)}" for name in sys.argv[1:]))' "${NAMES[@]}")
mkdir -p "$DEST"
PLATFORMS=()
for platform in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$platform")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" --python-version "$PYTHON_VERSION" \
    --implementation cp "${PLATFORMS[@]}" "${PACKAGES[@]}" "$@"

wheels_bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree_bytes=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {sum += $1} END {print sum}')
ls -l "$DEST"
awk -v wheels="$wheels_bytes" -v tree="$tree_bytes" -v limit="$LIMIT_MIB" 'BEGIN {
    total = (wheels + tree) / 1048576
    printf "wheels %.1f MiB + tracked files %.1f MiB = %.1f MiB of the %d MiB carry limit\n",
        wheels / 1048576, tree / 1048576, total, limit
    exit total > limit
}' || { echo "Over the carry limit: carry fewer wheels." >&2; exit 1; }
