#!/usr/bin/env bash
# Install turnscribe on first use, then run it: scripts/run.sh transcribe meeting.mp3
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
[[ -x "$here/.venv/bin/turnscribe" ]] || bash "$here/scripts/setup.sh"
exec "$here/.venv/bin/turnscribe" "$@"
