#!/usr/bin/env bash
# Installs what the fault scenarios of scripts/chaos.sh need, idempotently:
# libfiu's `fiu-run` / `fiu-ctrl` (Debian package fiu-utils) for injected
# fsync / fdatasync / write errors. Run by scripts/chaos.sh before the scenarios.
set -euo pipefail
if command -v fiu-run >/dev/null 2>&1 && command -v fiu-ctrl >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "chaos-setup: fiu-utils is missing and installing it needs root (apt-get install -y fiu-utils)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y fiu-utils >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y fiu-utils >/dev/null; }
command -v fiu-run >/dev/null
