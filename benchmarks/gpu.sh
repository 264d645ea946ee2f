#!/usr/bin/env bash
# bash benchmarks/gpu.sh OUTDIR [benchmarks.run flags]: the whole speed benchmark on a machine without a package index.
#
# 1. Installs the carried wheels (benchmarks/wheels, from benchmarks/fetch_wheels.sh) that this Python lacks or has
#    too old, into $SITE, which goes first on PYTHONPATH (benchmarks/install_wheels.py).
# 2. Runs each case in its own process under a hard time limit (`timeout`), so that a case that crashes or hangs costs
#    only its own budget; training sides stop stepping at 85% of it (`--deadline`), sharing the time left equally.
# 3. benchmarks.run rewrites OUTDIR/results.json and results.md after every case; a case that raised records its
#    error, one that was killed stays marked "started ... killed". OUTDIR/gpu.log holds the whole output.
#
# WHEELS names the wheel folder (default benchmarks/wheels), CASE_SECONDS the cases and their budgets: the default
# (LLaVA-1.5's five cases and LLaVA-NeXT's next-lora, 7B shape, bf16) sums to 515 s, with the install and the import
# check under 9 1/2 minutes on one H100 or H200: one command within the device's 10-minute limit.
# `--device cpu --small` rehearses the same run on a CPU.
set -uo pipefail
OUTDIR=${1:?usage: bash benchmarks/gpu.sh OUTDIR [benchmarks.run flags, e.g. --device cpu --small]}
shift
cd "$(dirname "$0")/.."
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-benchmarks/wheels}
SITE=${SITE:-${TMPDIR:-/tmp}/llava-benchmark-site}
CASE_SECONDS=${CASE_SECONDS:-"stage1=75 lora=80 stage2=60 generate-b1=95 generate-b8=95 next-lora=110"}
# Nothing is downloaded: the machine cannot reach the Hub, and a library that tries must fail at once, not wait.
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
began=$(date +%s)
elapsed() { echo $(($(date +%s) - began)); }

run_all() {
    echo "[gpu.sh] $(date -u '+%F %T UTC'); python: $("$PYTHON" --version 2>&1); cases: $CASE_SECONDS"
    command -v nvidia-smi >/dev/null && nvidia-smi -L
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        "$PYTHON" -m benchmarks.install_wheels "$WHEELS" --target "$SITE" || { echo "[gpu.sh] install failed"; exit 1; }
    else
        echo "[gpu.sh] no wheels in $WHEELS: using the installed packages as they are"
    fi
    "$PYTHON" -c 'import trainers.train; from benchmarks.run import environment; print("[gpu.sh]", environment())' \
        || { echo "[gpu.sh] the project does not import: see above"; exit 1; }
    echo "[gpu.sh] ready after $(elapsed) s"

    for entry in $CASE_SECONDS; do
        name=${entry%%=*} seconds=${entry#*=}
        start=$(date +%s)
        # The last step, the teardown and the write of the results fit in the remaining 15%.
        timeout --kill-after=10 "$seconds" "$PYTHON" -m benchmarks.run --cases "$name" --output "$OUTDIR" \
            --deadline $((start + seconds * 85 / 100)) "$@"
        status=$?
        case $status in
            0) outcome="done" ;;
            124 | 137) outcome="killed at its ${seconds} s limit" ;;
            *) outcome="exit $status" ;;
        esac
        echo "[gpu.sh] $name: $outcome, $(($(date +%s) - start)) s (${seconds} s budget); $(elapsed) s in all"
    done
    echo "[gpu.sh] finished in $(elapsed) s; results in $OUTDIR/results.md"
}

run_all "$@" 2>&1 | tee -a "$OUTDIR/gpu.log"
