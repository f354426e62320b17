#!/usr/bin/env bash
# The whole test suite (the README's test command; .ci/run calls it too).
# Builds everything once, then runs every crate's unit, property and end-to-end
# tests. End-to-end tests start the real natterd on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -j2 --workspace --all-targets
cargo test --locked -j2 --workspace
