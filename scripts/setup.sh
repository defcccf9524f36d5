#!/usr/bin/env bash
# Create .venv and install turnscribe into it. `--test` also installs what the tests need
# (test extras, and espeak-ng from the system's packages for synthetic voices).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Install torch before the project: a dependency asking for plain "torch" may otherwise pull a
# multi-GB CUDA build. Override with TORCH_SPEC (e.g. TORCH_SPEC=torch for the default CUDA build).
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [[ "${1:-}" == "--test" ]] && ! command -v espeak-ng >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "warning: espeak-ng is missing (sudo apt-get install espeak-ng); voice tests will be skipped" >&2
  fi
fi

[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
if [[ "${1:-}" == "--test" ]]; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e .
fi
