#!/usr/bin/env bash
# Create .venv and install turnscribe into it. `--test` also installs what the tests need
# (test extras; from the system's packages espeak-ng for synthetic voices and Chromium for the web page).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Install torch before the project, at the version the suite is tested with: a dependency asking for plain
# "torch" would otherwise pull the newest. Whether that is a CPU or a (multi-GB) CUDA build depends on the package
# index pip uses; README "The two commands" shows how to ask for the CPU build. Override with TORCH_SPEC.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [[ "${1:-}" == "--test" ]]; then
  missing=()
  command -v espeak-ng >/dev/null || missing+=(espeak-ng)
  command -v chromium >/dev/null || missing+=(chromium)
  if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "warning: missing ${missing[*]} (sudo apt-get install ${missing[*]}); their tests will be skipped" >&2
    fi
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
