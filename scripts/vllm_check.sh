#!/usr/bin/env bash
# The vLLM-marked tests against real vLLM, in a venv of their own (vLLM pins its own torch: a CUDA build of
# several GB, too heavy for CI). Runs on a CPU machine (vLLM's CPU platform; the engine test skips) or a GPU one.
#
#   scripts/vllm_check.sh [VENV]        (default VENV: .venv-vllm; created and filled on the first run)
#
# TURNSCRIBE_VLLM_CHECKPOINT=/models/fixed adds the engine test on the real checkpoint (GPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "vllm==0.33.0"
  "$VENV/bin/pip" install -q -e ".[vllm,test]"
fi
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
exec "$VENV/bin/python" -m pytest -rs tests/test_vllm_engine.py tests/test_vllm_plugin.py tests/test_vllm_decoder.py tests/test_vllm_qa.py
