#!/usr/bin/env bash
# Fuzz smoke run: every target for FUZZ_SECONDS (default 20) from the committed seed corpus.
# Built with FUZZ_FLAGS (default `--dev -s none`: unoptimised, debug assertions and overflow
# checks on, no sanitizer; it builds in about half the time of the release + ASan build that
# long runs use: `FUZZ_FLAGS="-O -a"`).
# New inputs go to a scratch directory, so the committed corpus stays as it is; a crash leaves
# its input in fuzz/artifacts/<target>/ and fails the run. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets it pass the -Z
# flags it needs (sanitizer, coverage instrumentation), set here.
#   fuzz/smoke.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
secs=${FUZZ_SECONDS:-20}
read -r -a flags <<<"${FUZZ_FLAGS:---dev -s none}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(device_requests virtqueue pasid_decode walkers device_state)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "== cargo fuzz build"
cargo fuzz build "${flags[@]}"
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    echo "== fuzz $t (${secs}s)"
    status=0
    cargo fuzz run "${flags[@]}" "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1 || status=$?
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$scratch/$t.log" || true
    if [ "$status" != 0 ]; then
        tail -40 "$scratch/$t.log" >&2
        echo "fuzz target $t failed (status $status): input in fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
