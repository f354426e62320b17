#!/usr/bin/env bash
# Builds natter's web page (clients/web) into clients/web/dist/: type-checks src/ with the pinned
# typescript, bundles src/main.ts (with the generated bindings and the npm flatbuffers runtime) into
# dist/app.js with the pinned esbuild, and copies src/index.html and src/app.css beside it. natterd
# embeds dist/ (server/src/http/web.rs), so dist/ is checked in: rebuild and commit it after
# changing src/ or the bindings.
#
#   scripts/build-web.sh           rebuild dist/
#   scripts/build-web.sh --check   rebuild into a temporary directory and fail if dist/ differs
#                                  (the drift check; scripts/test.sh runs it)
#
# The toolchain comes from clients/web/package-lock.json (npm ci when node_modules does not match
# it). Says what is missing and exits 1 when node/npm are absent or npm cannot install.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
web="$root/clients/web"
check=false
[ "${1:-}" = "--check" ] && check=true
command -v npm >/dev/null \
  || { echo "scripts/build-web.sh: npm (Node.js 18 or newer) is not installed (Debian: apt-get install nodejs npm)" >&2; exit 1; }
cd "$web"
if ! node -e 'const l=require("./package-lock.json").packages;for(const p of ["esbuild","flatbuffers","typescript"])if(require("./node_modules/"+p+"/package.json").version!==l["node_modules/"+p].version)process.exit(1)' 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error >&2 \
    || { echo "scripts/build-web.sh: npm could not install the pinned esbuild, flatbuffers and typescript" >&2; exit 1; }
fi
node_modules/.bin/tsc -p tsconfig.json
out="$web/dist"
if $check; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"
# --alias resolves `flatbuffers` from clients/web (not from the bindings' own node_modules, which
# scripts/check-ts-bindings.sh may have installed) and --tsconfig makes clients/web/tsconfig.json
# govern every file (not the bindings' own tsconfig.json for the generated code), so the bundle
# depends on nothing outside these inputs.
node_modules/.bin/esbuild src/main.ts --bundle --minify --format=iife --target=es2020 --charset=utf8 \
  --legal-comments=none --alias:flatbuffers=flatbuffers --tsconfig=tsconfig.json --log-level=warning \
  --outfile="$out/app.js"
cp src/index.html src/app.css "$out/"
if $check; then
  if ! diff -r -q "$out" "$web/dist" >/dev/null; then
    diff -r -q "$out" "$web/dist" >&2 || true
    echo "scripts/build-web.sh --check: clients/web/dist/ is stale: run scripts/build-web.sh and commit dist/" >&2
    exit 1
  fi
  echo "clients/web/dist/ matches a fresh build of clients/web/src"
else
  echo "built clients/web/dist/ ($(wc -c <"$out/app.js") bytes of app.js)"
fi
