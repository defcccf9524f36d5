#!/usr/bin/env bash
# Wheels for the GPU machine lent by the `device` tool, made here (it reaches no network; this machine reaches the
# package registry). Its image has Python 3.12, PyTorch, transformers, numpy, scipy, pandas, scikit-learn, numba,
# typer, rich, pytest and hypothesis, but not what turnscribe adds (the list below: PyAV, resemblyzer and librosa's
# audio stack, pyannote.core, meeteval, the format writers). They go to .whl/ (git-ignored, ~56 MB, under the
# 64 MiB a device call may carry); scripts/gpu_check.sh installs them from there when it is present.
#
#   scripts/gpu_wheels.sh            then: run(carry=[".whl"], command="scripts/gpu_check.sh ...")
#
# meeteval and srt publish no wheel for Python 3.12, so they are built here with a local python3.12 (PYTHON312).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.whl
PY=${PYTHON:-.venv/bin/python}
PY312=${PYTHON312:-python3.12}
# The versions this project is tested with (one version of each: two would stop the install there).
BINARY=(
  av==18.1.0 resemblyzer==0.1.4 webrtcvad-wheels==2.0.14.post1 librosa==0.11.0 audioread==3.1.0 decorator==5.3.1
  pooch==1.9.0 platformdirs==4.14.9 soundfile==0.14.0 soxr==1.1.0 pyannote.core==6.1.0 pyannote.metrics==4.2.0
  pyannote.database==6.1.1 kaldialign==0.12.0 praatio==6.2.2 webvtt-py==0.6.0 cffi==2.1.1 pycparser==3.12
)
BUILT=(meeteval==0.4.3 srt==3.5.3)
platforms=()
for tag in manylinux_2_{17,24,27,28,31,34,35}_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$OUT" "${BINARY[@]}"
"$PY312" -m pip wheel -q --no-deps -w "$OUT" "${BUILT[@]}"
ls -1 "$OUT"
du -sh "$OUT"
