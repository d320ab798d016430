#!/usr/bin/env bash
# Fetch the wheels of scripts/gpu_wheels.txt for the GPU machine (CPython 3.12, x86-64 Linux) into a folder
# (default gpu_wheels/, git-ignored; carry it to the GPU run). antlr4-python3-runtime has only an sdist on
# PyPI: its pure-Python wheel is built here. Needs network (PyPI); the GPU machine has none.
set -euo pipefail
cd "$(dirname "$0")/.."
folder="${1:-gpu_wheels}"
mkdir -p "$folder"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
grep -v -e '^#' -e '^antlr4-python3-runtime' scripts/gpu_wheels.txt | while read -r pin; do
    [ -n "$pin" ] || continue
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$folder" "$pin"
done
antlr=$(grep '^antlr4-python3-runtime' scripts/gpu_wheels.txt)
python3 -m pip wheel -q --no-deps -w "$folder" "$antlr"
ls -l "$folder"
