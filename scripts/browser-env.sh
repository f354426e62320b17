#!/usr/bin/env bash
# Sets up what the browser test (server/tests/browser.rs, clients/web/browser-test/) needs:
# Debian's headless-capable `chromium` at /usr/bin/chromium (apt-get install -y chromium when it
# is missing) and the pinned playwright-core from clients/web/browser-test/package-lock.json
# (npm ci when node_modules does not match it; playwright-core downloads no browser of its own).
# Idempotent: returns at once when both are in place. Says what is missing and exits 1 when it
# cannot install them: the test then fails, it is never skipped silently.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/clients/web/browser-test"
missing() {
  echo "scripts/browser-env.sh: $1" >&2
  exit 1
}

if [ ! -x /usr/bin/chromium ]; then
  command -v apt-get >/dev/null \
    || missing "/usr/bin/chromium is missing and there is no apt-get to install it (install Debian's chromium package)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || missing "/usr/bin/chromium is missing; installing it needs root (apt-get install -y chromium)"
    sudo="sudo -n"
  fi
  echo "scripts/browser-env.sh: installing chromium (apt-get install -y chromium)…" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq chromium >&2 \
    || { $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq chromium >&2; } \
    || missing "apt-get could not install chromium (offline, or no Debian package source?)"
  [ -x /usr/bin/chromium ] || missing "apt-get installed chromium but /usr/bin/chromium is not there"
fi

command -v npm >/dev/null \
  || missing "npm (Node.js 18 or newer) is not installed (Debian: apt-get install nodejs npm)"
cd "$dir"
if ! node -e 'const l=require("./package-lock.json").packages;const p="playwright-core";if(require("./node_modules/"+p+"/package.json").version!==l["node_modules/"+p].version)process.exit(1)' 2>/dev/null; then
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2 \
    || missing "npm could not install the pinned playwright-core (offline?)"
fi
echo "chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}') and playwright-core $(node -p 'require("./node_modules/playwright-core/package.json").version') are ready" >&2
