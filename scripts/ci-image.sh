#!/usr/bin/env bash
# CI's image check (.ci/run): builds the image with podman and runs scripts/image-smoke.sh on it.
# Where podman cannot do that, it prints why and exits 0: no podman or runc, no node:24-slim and
# no way to build the stand-in (../shared/container/make-standin-base.sh needs root and
# debootstrap), or podman cannot start a container. About 2 minutes with the stand-in to build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
shared=../shared/container
base=docker.io/library/node:24-slim
tag=${RUNWATCH_SMOKE_IMAGE:-localhost/runwatch:ci}
skip() { echo "ci-image: skipped, $*" >&2; exit 0; }
pm() { podman --runtime runc --log-level fatal "$@"; }

command -v podman >/dev/null 2>&1 || skip "no podman on this machine (the image is checked where podman is: bash scripts/image-smoke.sh IMAGE)"
command -v runc >/dev/null 2>&1 || skip "podman is here but runc is not (see $shared/setup-podman.sh)"
command -v curl >/dev/null 2>&1 || skip "no curl (scripts/image-smoke.sh needs it)"
if ! pm image exists "$base"; then
  if [ -f "$shared/make-standin-base.sh" ] && [ "$(id -u)" = 0 ] && command -v debootstrap >/dev/null 2>&1; then
    echo "ci-image: no $base: building the stand-in ($shared/make-standin-base.sh)" >&2
    start=$SECONDS
    bash "$shared/make-standin-base.sh"
    echo "ci-image: stand-in built in $((SECONDS - start)) s" >&2
  else
    skip "no $base image and no way to build the stand-in (root, debootstrap and $shared/make-standin-base.sh)"
  fi
fi
pm run --rm --network host "$base" true >/dev/null 2>&1 || skip "podman cannot start a container here (see $shared/setup-podman.sh)"

start=$SECONDS
if [ -f "$shared/build-image.sh" ]; then
  bash "$shared/build-image.sh" . "$tag"
else
  pm build --pull=never --network host --format docker -t "$tag" .
fi
echo "ci-image: built $tag in $((SECONDS - start)) s" >&2
bash scripts/image-smoke.sh "$tag"
