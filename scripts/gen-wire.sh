#!/usr/bin/env bash
# Regenerates every binding of wire/schema/natter.fbs with the pinned flatc:
#   Rust        -> wire/src/generated/                      (natter-wire includes it)
#   Swift       -> clients/bindings/swift/generated/
#   Kotlin      -> clients/bindings/kotlin/generated/
#   TypeScript  -> clients/bindings/typescript/generated/
#   Python      -> clients/bindings/python/generated/  (--python-typing: the typed output
#                  imports the classes it refers to; the untyped one does not and fails)
#                  and its natter/wire/ package vendored into clients/python/src/natter/wire/
#                  (the Python client imports it from there)
# `scripts/gen-wire.sh --check` fails when any checked-in copy differs (CI runs it);
# Python byte-code caches (__pycache__) are ignored.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
schema="$root/wire/schema/natter.fbs"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flatc() { "$root/scripts/flatc.sh" "$@"; }

flatc --rust --gen-all -o "$out/rust" "$schema"
flatc --swift --gen-all -o "$out/swift" "$schema"
flatc --kotlin --gen-all -o "$out/kotlin" "$schema"
flatc --ts --gen-all -o "$out/typescript" "$schema"
flatc --python --python-typing --gen-all -o "$out/python" "$schema"

# generated output (under $out) -> checked-in directory (under $root)
pairs=(
  "rust:wire/src/generated"
  "swift:clients/bindings/swift/generated"
  "kotlin:clients/bindings/kotlin/generated"
  "typescript:clients/bindings/typescript/generated"
  "python:clients/bindings/python/generated"
  "python/natter/wire:clients/python/src/natter/wire"
)

if [ "${1:-}" = "--check" ]; then
  stale=0
  for pair in "${pairs[@]}"; do
    from=${pair%%:*} to=${pair#*:}
    if ! diff -ru -x __pycache__ "$root/$to" "$out/$from"; then
      echo "$to is stale" >&2
      stale=1
    fi
  done
  if [ "$stale" -ne 0 ]; then
    echo "generated code differs from the schema: run scripts/gen-wire.sh and commit" >&2
    exit 1
  fi
  echo "wire/src/generated and every clients/ binding match the schema"
else
  for pair in "${pairs[@]}"; do
    from=${pair%%:*} to=${pair#*:}
    rm -rf "${root:?}/$to"
    mkdir -p "$root/$to"
    cp -r "$out/$from"/. "$root/$to/"
    echo "regenerated $to"
  done
fi
