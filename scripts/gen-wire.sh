#!/usr/bin/env bash
# Regenerates wire/src/generated/ from wire/schema/natter.fbs with the pinned flatc.
# `scripts/gen-wire.sh --check` fails when the checked-in code differs (CI runs it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$root/scripts/flatc.sh" --rust --gen-all -o "$out" "$root/wire/schema/natter.fbs"
if [ "${1:-}" = "--check" ]; then
  if ! diff -ru "$root/wire/src/generated" "$out"; then
    echo "wire/src/generated is stale: run scripts/gen-wire.sh and commit" >&2
    exit 1
  fi
  echo "wire/src/generated matches the schema"
else
  rm -rf "$root/wire/src/generated"
  mkdir -p "$root/wire/src/generated"
  cp -r "$out"/. "$root/wire/src/generated/"
  echo "regenerated wire/src/generated"
fi
