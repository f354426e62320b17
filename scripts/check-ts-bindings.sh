#!/usr/bin/env bash
# Type-checks the generated TypeScript bindings (clients/bindings/typescript/generated/) and
# their example against the pinned npm `flatbuffers` runtime (25.9.23) with the pinned
# `typescript` (5.9.3), both from clients/bindings/typescript/package-lock.json. About 10 s.
# scripts/test.sh runs it. Says what is missing and exits 1 when node/npm are absent.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/clients/bindings/typescript"
command -v npm >/dev/null \
  || { echo "scripts/check-ts-bindings.sh: npm (Node.js 18 or newer) is not installed (Debian: apt-get install nodejs npm)" >&2; exit 1; }
cd "$dir"
if ! node -e 'const l=require("./package-lock.json").packages;for(const p of ["flatbuffers","typescript"])if(require("./node_modules/"+p+"/package.json").version!==l["node_modules/"+p].version)process.exit(1)' 2>/dev/null; then
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2 \
    || { echo "scripts/check-ts-bindings.sh: npm could not install the pinned flatbuffers and typescript" >&2; exit 1; }
fi
node_modules/.bin/tsc -p tsconfig.json
echo "TypeScript bindings type-check against flatbuffers $(node -p 'require("./node_modules/flatbuffers/package.json").version')"
