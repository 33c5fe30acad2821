#!/usr/bin/env bash
# The whole test suite: formatting and lints, unit and integration tests (a real vhost-user
# frontend against the daemon binary), then the whole-system tests in a VM (real QEMU, the stock
# Linux guest driver). Run from anywhere; needs root for the VM part (debootstrap, chroot).
#   VUI_SKIP_VM=1 tests/run-all.sh   skips the VM tests (they are part of CI).
#   VUI_SKIP_FUZZ=1 skips the fuzz smoke run (run when cargo-fuzz is installed; fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build"
cargo build --workspace --bins
echo "== unit and integration tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
if [ "${VUI_SKIP_FUZZ:-0}" != 1 ] && cargo fuzz --version >/dev/null 2>&1; then
    echo "== fuzz smoke run (fuzz/smoke.sh)"
    FUZZ_SECONDS=${FUZZ_SECONDS:-10} fuzz/smoke.sh
fi
if [ "${VUI_SKIP_VM:-0}" != 1 ]; then
    echo "== whole-system tests (VM)"
    tests/vm/run.sh
fi
