#!/usr/bin/env bash
# The prepared validation run on a GPU machine (no network there): scripts/gpu_check.sh OUT_DIR [WHEELS_DIR]
# Installs the carried wheels (scripts/gpu_wheels.txt, fetched here by scripts/fetch_gpu_wheels.sh) into a
# temporary site folder on PYTHONPATH (never the project: its torch pin would replace the machine's torch),
# prints nvidia-smi and the versions, runs `pytest -m cuda`, the trimmed sweep=gpu, the do_bench comparison
# and a report, writing at most 7 files into OUT_DIR (gpu_check.log, rows.csv, memory_rows.csv,
# environment.json, do_bench.json, report.md, pytest_cuda.txt). Each step has a time limit (about 9 minutes
# in all; about 6 expected on an H200); a step that fails or runs out of time is reported and the next one
# still runs. A step out of time gets SIGINT (as a Ctrl-C), so what it measured comes back: pytest writes
# its summary and junit file, the sweep's finished rows are copied.
# GPU_CHECK_DEVICE=cpu is the dry run CI makes (tiny sizes, CUDA-only steps skipped with their reasons).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: scripts/gpu_check.sh OUT_DIR [WHEELS_DIR]}"
wheels="${2:-$repo/gpu_wheels}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
export PYTHONUNBUFFERED=1
exec > >(tee "$out/gpu_check.log") 2>&1
cd "$repo"
failed=()
step() {  # step NAME LIMIT_S COMMAND...: run one step under its time limit, note a failure, go on
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s) ==="
    local started=$SECONDS
    timeout -s INT -k 15 "$limit" "$@"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - started)) s ==="
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc$([ "$rc" -eq 124 ] && echo ', out of time'))")
}

site="$(mktemp -d)"
count=$(grep -c -v -e '^#' -e '^$' scripts/gpu_wheels.txt)
found=$(ls "$wheels"/*.whl 2>/dev/null | wc -l)
if [ "$found" -ne "$count" ]; then
    echo "FATAL: $wheels holds $found wheels, scripts/gpu_wheels.txt pins $count: run scripts/fetch_gpu_wheels.sh"
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl || exit 2
export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
echo "wheels installed into $site: $(ls "$wheels" | tr '\n' ' ')"

if command -v nvidia-smi >/dev/null; then
    step nvidia-smi 15 nvidia-smi
else
    echo "SKIP (CUDA-only) nvidia-smi: not on PATH"
fi
step versions 30 python3 -m bench.sweep.gpu_check versions "$out"
# xdist spreads the oracle's compiles (flex, Triton) over the machine's cores where it is installed
workers=()
python3 -c "import xdist" 2>/dev/null && [ "${GPU_CHECK_DEVICE:-cuda}" != cpu ] && workers=(-n 16)
step "pytest -m cuda" 180 python3 -m pytest -m cuda -v -rfEs --tb=short -p no:cacheprovider "${workers[@]}" \
    --junit-xml="$out/pytest_cuda.txt" tests/test_oracle_cuda.py
step sweep 290 python3 -m bench.sweep.gpu_check sweep "$out"
step do_bench 25 python3 -m bench.sweep.gpu_check do_bench "$out"
step report 15 python3 -m bench.sweep.gpu_check report "$out"
rm -rf "$site"
echo "files in $out: $(ls "$out" | tr '\n' ' ')"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED steps: ${failed[*]}"
    exit 1
fi
echo "gpu_check: every step passed in $SECONDS s"
