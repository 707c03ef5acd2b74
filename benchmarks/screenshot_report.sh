#!/usr/bin/env bash
# Screenshot a what-if report with headless Chromium (Debian's `chromium` package), to look at it as a reader would.
#   benchmarks/screenshot_report.sh out/ep_degree/report.html out/ep_degree/report.png [1400,3000]
# Install once with: apt-get update && apt-get install -y chromium
# Offline and isolated: a fresh profile dir, no network services, no GPU.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTH,HEIGHT]" >&2
  exit 2
fi
html=$(realpath "$1")
out=$(realpath -m "$2")
size=${3:-1400,3000}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "$0: chromium not found (apt-get update && apt-get install -y chromium)" >&2
  exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --screenshot="$out" --window-size="$size" \
  "file://$html" >/dev/null 2>&1
test -s "$out" && echo "wrote $out"
