#!/usr/bin/env bash
# GPU checks for a machine with PyTorch (CUDA) and transformers preinstalled and no network. turnscribe runs from
# this checkout (src/ on PYTHONPATH); what else it needs comes from .whl/ when present (scripts/gpu_wheels.sh
# makes it elsewhere; it is installed into /tmp/site). Writes everything to $OUT (default ./gpu-out):
#   versions.txt, nvidia-smi.txt, missing.txt   what is there
#   gpu-tests.txt                              pytest -m gpu (bf16 batched vs single-window; fast vs plain)
#   bench.json / bench.txt / bench.log          `turnscribe bench`, full-size random model, plain path
#   bench-fast.json / ...                       the same with --fast (static cache + torch.compile)
#   audio-decode.txt                            benchmarks/audio_decode.py on this machine's cores (no GPU)
#
#   scripts/gpu_check.sh [tests|bench|bench-fast|audio|all]...   (default: all)
#
# Each step has its own time limit (seconds): TESTS_TIMEOUT, BENCH_TIMEOUT, AUDIO_TIMEOUT; BENCH_ARGS adds
# options to both bench runs (e.g. "--concurrency 1 --concurrency 128 --long-form 3600 --many-files 16").
# A failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/wheels.txt" 2>&1 || echo "installing .whl/ failed: see $OUT/wheels.txt"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
want() { for s in "${steps[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY - > "$OUT/versions.txt" 2>&1 <<'PYEOF'
import torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("transformers", transformers.__version__)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name())
PYEOF
# What turnscribe, the bench and the tests import: a missing one explains a failure below.
$PY - > "$OUT/missing.txt" 2>&1 <<'PYEOF'
import importlib.util
needed = ["turnscribe", "numpy", "scipy", "av", "typer", "rich", "pyannote.core", "pyannote.metrics", "meeteval",
          "srt", "webvtt", "praatio", "resemblyzer", "webrtcvad", "librosa", "soundfile", "soxr", "pytest",
          "hypothesis", "safetensors", "tokenizers"]
missing = []
for name in needed:
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        missing.append(name)
print("missing:", " ".join(missing) or "none")
PYEOF
cat "$OUT/versions.txt" "$OUT/missing.txt"

status=0
if want tests; then
  echo "== gpu tests"
  timeout "${TESTS_TIMEOUT:-480}" $PY -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_gpu.py \
    > "$OUT/gpu-tests.txt" 2>&1 || status=1
  tail -5 "$OUT/gpu-tests.txt"
fi
if want bench; then
  echo "== bench (plain)"
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-540}" $PY -m turnscribe bench --device cuda --json "$OUT/bench.json" ${BENCH_ARGS:-} \
    > "$OUT/bench.txt" 2> "$OUT/bench.log" || status=1
  tail -25 "$OUT/bench.txt"; tail -3 "$OUT/bench.log"
fi
if want bench-fast; then
  echo "== bench (--fast)"
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-540}" $PY -m turnscribe bench --device cuda --fast --json "$OUT/bench-fast.json" \
    ${BENCH_ARGS:-} > "$OUT/bench-fast.txt" 2> "$OUT/bench-fast.log" || status=1
  tail -25 "$OUT/bench-fast.txt"; tail -3 "$OUT/bench-fast.log"
fi
if want audio; then
  echo "== audio decoding: threads vs processes"
  timeout "${AUDIO_TIMEOUT:-180}" $PY benchmarks/audio_decode.py --files 8 --minutes 5 \
    > "$OUT/audio-decode.txt" 2>&1 || status=1
  tail -8 "$OUT/audio-decode.txt"
fi
exit $status
