#!/usr/bin/env bash
# The whole test suite (the README's test command; .ci/run calls it too).
# Builds everything once, then runs every crate's unit, property and end-to-end
# tests. End-to-end tests start the real natterd on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -j2 --workspace --all-targets
# The production build: the end-to-end tests start this natterd (no `fuzzing` feature).
cargo test --locked -j2 --workspace
# The fuzz corpora and regressions, replayed through the targets' code (needs the feature;
# this rebuilds natter-server with it, after every test of the production build has run).
cargo test --locked -j2 -p natter-server --features fuzzing --test fuzz_replay
# The generated TypeScript bindings type-check against the pinned npm flatbuffers (~10 s).
scripts/check-ts-bindings.sh
# The web page's checked-in build (clients/web/dist/, embedded in natterd) matches its source.
scripts/build-web.sh --check
# The fault suite, short mode (~3 minutes): the history checker under kill -9, libfiu I/O
# errors, a full disk, a memory cap and the fault proxy, then the attacks and the
# authorization matrix (scripts/chaos.sh --full: ~15 min).
scripts/chaos.sh
# The side-port against its OpenAPI description (docs/openapi.json), short mode
# (scripts/schemathesis.sh --full for many more examples).
scripts/schemathesis.sh
