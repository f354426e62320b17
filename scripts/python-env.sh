#!/usr/bin/env bash
# Sets up ./.venv for the Python client and its tests: `pip install -e clients/python`
# (which pins the flatbuffers runtime) and the pinned test tools of
# clients/python/requirements-dev.txt. Idempotent: when the venv already matches (a stamp
# holds the hash of what was installed) it returns at once. scripts/flatc.sh shares the venv.
# Prints the venv's python on success; says what is missing and exits 1 otherwise.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.natter-python-env"
want=$(cat "$0" "$root/clients/python/pyproject.toml" "$root/clients/python/requirements-dev.txt" \
  | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
  && "$venv/bin/python" -c 'import natter, flatbuffers, pytest' 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi

missing() {
  echo "scripts/python-env.sh: $1" >&2
  exit 1
}
command -v python3 >/dev/null || missing "python3 (3.9 or newer) is not installed (Debian: apt-get install python3 python3-venv)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
  || missing "python3 is $(python3 -V 2>&1); the client needs 3.9 or newer"
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv" >&2 || missing "python3 cannot create a venv (Debian: apt-get install python3-venv)"
fi
"$venv/bin/pip" install -q --disable-pip-version-check \
  -r "$root/clients/python/requirements-dev.txt" -e "$root/clients/python" >&2 \
  || missing "pip could not install clients/python and its test tools from PyPI (offline?)"
"$venv/bin/python" -c 'import natter, flatbuffers, pytest' \
  || missing "the venv was installed but cannot import natter, flatbuffers and pytest"
echo "$want" >"$stamp"
echo "$venv/bin/python"
