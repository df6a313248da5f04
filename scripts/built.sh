#!/usr/bin/env bash
# Runs "$@" on an up-to-date build: builds dist/ only when it is missing or older than src/ (or
# the tsconfigs), then execs "$@" so that node replaces this shell and gets npm's signals itself.
# Usage (from the package root, as npm runs scripts): bash scripts/built.sh node dist/cli.js ...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stamp="$root/dist/cli.js"
if [ ! -f "$stamp" ] || [ -n "$(find "$root/src" "$root/tsconfig.json" "$root/tsconfig.build.json" -newer "$stamp" -print -quit)" ]; then
  (cd "$root" && npm run build --silent)
fi
exec "$@"
