#!/usr/bin/env bash
# run.sh FUZZER CORPUS WORKDIR [libFuzzer options...]
# Runs FUZZER over the committed CORPUS (read only) with WORKDIR as the
# corpus it adds to; crash, timeout and leak inputs are written to
# WORKDIR/artifacts. -timeout flags an input that takes over 30 s: a hang.
set -euo pipefail
fuzzer=$1 corpus=$2 work=$3
shift 3
mkdir -p "$work/corpus" "$work/artifacts"
exec "$fuzzer" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" "$corpus"
