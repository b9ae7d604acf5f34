#!/usr/bin/env bash
# Debian packages the test suite needs; installed only when missing, so re-runs cost nothing.
#   dataset-fashion-mnist: the real Fashion-MNIST IDX files (/usr/share/datasets/fashion-mnist)
#   chromium, chromium-driver: headless browser for the web page's tests (tests/web)
#   shellcheck: lints deploy/lint.sh and the entrypoints (tests/deploy)
set -euo pipefail
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v shellcheck >/dev/null || need+=(shellcheck)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "missing system packages: ${need[*]} (install them with your package manager)" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
