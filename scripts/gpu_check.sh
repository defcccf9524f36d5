#!/usr/bin/env bash
# GPU checks for a machine with PyTorch (CUDA) and transformers preinstalled and no network. turnscribe runs from
# this checkout (src/ on PYTHONPATH); what else it needs comes from .whl/ when present (scripts/gpu_wheels.sh
# makes it elsewhere; it is installed into /tmp/site).
#
#   scripts/gpu_check.sh [preflight|tests|bench|bench-fast|audio|gil|all]...   (default: all)
#
# Sized for one device call of under 10 minutes: the steps run in this order, preflight, bench, tests,
# bench-fast, audio, gil (the plain benchmark's figures are what the README lacks most), and share BUDGET seconds
# (default 540), each capped by its own limit (BENCH_TIMEOUT, TESTS_TIMEOUT, BENCH_FAST_TIMEOUT, AUDIO_TIMEOUT,
# GIL_TIMEOUT) and by what is left; a step with under a minute left is skipped. BENCH_ARGS / BENCH_FAST_ARGS
# replace the two bench runs' options (the --fast run compiles a CUDA graph per batch shape, so it measures fewer
# shapes by default). `turnscribe bench` rewrites its JSON after each measurement, so a run cut off by its limit
# keeps what it measured.
#
# Every log goes to WORK (default /tmp/gpu-check); at the end OUT (default ./gpu-out) gets at most 8 files, the
# device tool's limit: summary.txt (versions, preflight, each step's tail), gpu-tests.txt, bench.json,
# bench-fast.json, audio-decode.txt, gil-switching.txt, and gpu-check.tar.gz with everything.
# Then, here: python benchmarks/gpu_bench.py OUT/bench.json OUT/bench-fast.json --update-readme
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-check}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-540}
mkdir -p "$OUT" "$WORK"
SUMMARY=$WORK/summary.txt
: > "$SUMMARY"
say() { echo "$@" | tee -a "$SUMMARY"; }

pack() {
  tar czf "$OUT/gpu-check.tar.gz" -C "$WORK" . 2>/dev/null
  for f in summary.txt gpu-tests.txt bench.json bench-fast.json audio-decode.txt gil-switching.txt; do
    [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f"
  done
}
trap pack EXIT

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$WORK/wheels.txt" 2>&1 || say "installing .whl/ failed: see wheels.txt"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
want() { for s in "${steps[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }

# Seconds a step may take: its own limit, or what is left of BUDGET (less 20 s for packing), whichever is less.
limit() {
  local left=$((BUDGET - SECONDS - 20))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
status=0
step() {  # step NAME OWN_LIMIT LOG COMMAND...
  local name=$1 own=$2 log=$3 seconds
  shift 3
  seconds=$(limit "$own")
  if [ "$seconds" -lt 60 ]; then
    say "== $name: skipped, ${seconds}s left of the budget"
    return
  fi
  say "== $name (up to ${seconds}s)"
  local t0=$SECONDS
  timeout "$seconds" "$@" > "$WORK/$log" 2>&1
  local rc=$?
  [ "$rc" -ne 0 ] && status=1
  say "   exit $rc after $((SECONDS - t0))s$([ "$rc" -eq 124 ] && echo ' (time limit)')"
  tail -25 "$WORK/$log" | tee -a "$SUMMARY"
}

nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
head -15 "$WORK/nvidia-smi.txt" >> "$SUMMARY"
if want preflight; then
  # Imports and the two things that would spoil every later step: a package that fails to import (librosa's
  # numba, resemblyzer), and an attention kernel that returns NaN for fully masked rows (padded frames).
  $PY - >> "$SUMMARY" 2>&1 <<'PYEOF'
import importlib
import torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("transformers", transformers.__version__)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name())
failed = []
for name in ["turnscribe", "numpy", "scipy", "av", "typer", "rich", "pyannote.core", "pyannote.metrics",
             "meeteval.wer", "srt", "webvtt", "praatio", "resemblyzer", "webrtcvad", "librosa.filters", "soundfile",
             "soxr", "pytest", "hypothesis", "safetensors", "tokenizers"]:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name} ({type(e).__name__}: {e})")
try:
    from transformers import CohereAsrFeatureExtractor
    CohereAsrFeatureExtractor()
except Exception as e:
    failed.append(f"CohereAsrFeatureExtractor ({type(e).__name__}: {e})")
print("imports failing:", "; ".join(failed) or "none")
if torch.cuda.is_available():
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.randn(2, 8, 376, 160, device="cuda", dtype=torch.bfloat16)
    mask = torch.zeros(2, 1, 376, 376, device="cuda", dtype=torch.bfloat16)
    mask[1, :, 300:, :] = float("-inf")  # fully masked query rows, as padded frames are
    mask[1, :, :, 300:] = float("-inf")
    for backend in [None, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]:
        try:
            if backend is None:
                out = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            else:
                with sdpa_kernel([backend]):
                    out = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            print(f"sdpa {backend or 'default'}: NaN in masked rows {bool(out[1, :, 300:].isnan().any())}, "
                  f"in the rest {bool(out[1, :, :300].isnan().any())}")
        except Exception as e:
            print(f"sdpa {backend}: {type(e).__name__}: {str(e)[:120]}")
PYEOF
  tail -12 "$SUMMARY"
fi
if want bench; then
  # shellcheck disable=SC2086
  step "bench (plain)" "${BENCH_TIMEOUT:-240}" bench.txt \
    $PY -m turnscribe bench --device cuda --json "$WORK/bench.json" ${BENCH_ARGS:-}
fi
if want tests; then
  # -v: a line per test as it ends, so a run cut off by its limit still says which passed; the slow one last.
  step "gpu tests" "${TESTS_TIMEOUT:-200}" gpu-tests.txt \
    $PY -m pytest -v -p no:cacheprovider -m gpu -rs tests/test_gpu.py
fi
if want bench-fast; then
  # shellcheck disable=SC2086
  step "bench (--fast)" "${BENCH_FAST_TIMEOUT:-240}" bench-fast.txt \
    $PY -m turnscribe bench --device cuda --fast --json "$WORK/bench-fast.json" \
    ${BENCH_FAST_ARGS:---concurrency 1 --concurrency 128 --long-form 3600 --many-files 8 --no-batch-search}
fi
if want audio; then
  step "audio decoding: threads vs processes" "${AUDIO_TIMEOUT:-150}" audio-decode.txt \
    $PY benchmarks/audio_decode.py --files 8 --minutes 5
fi
if want gil; then
  step "file threads beside the GPU's thread: GIL switching" "${GIL_TIMEOUT:-90}" gil-switching.txt \
    $PY benchmarks/gil_switching.py --threads 1 4 16
fi
say "total ${SECONDS}s"
exit $status
