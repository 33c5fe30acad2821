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
# Targets of fuzz/ (the device model) and of fuzz/vhost-user/ (the daemon's vhost-user message
# layer, a cargo-fuzz project of its own: it needs the daemon crate).
[ ${#targets[@]} -gt 0 ] || targets=(device_requests virtqueue pasid_decode walkers device_state vhost_user_messages)
fuzz_dir() { case $1 in vhost_user_messages) echo fuzz/vhost-user ;; *) echo fuzz ;; esac; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for d in $(for t in "${targets[@]}"; do fuzz_dir "$t"; done | sort -u); do
    echo "== cargo fuzz build ($d)"
    cargo fuzz build --fuzz-dir "$d" "${flags[@]}"
done
for t in "${targets[@]}"; do
    d=$(fuzz_dir "$t")
    mkdir -p "$scratch/$t"
    echo "== fuzz $t (${secs}s)"
    status=0
    cargo fuzz run --fuzz-dir "$d" "${flags[@]}" "$t" "$scratch/$t" "$d/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1 || status=$?
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$scratch/$t.log" || true
    if [ "$status" != 0 ]; then
        tail -40 "$scratch/$t.log" >&2
        echo "fuzz target $t failed (status $status): input in $d/artifacts/$t/" >&2
        exit 1
    fi
done
