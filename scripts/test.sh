#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every crate's tests.
# Tests that need root, loop devices or lvm2 say SKIPPED where they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo test --workspace --all-targets "$@"
