#!/usr/bin/env bash
# The GPU machines' torch and triton (torch 2.11 with CUDA 13.0, triton 3.6: ../shared/GPU.md) on a CPU
# machine, before a GPU is lent: builds the extension against them exactly as benchmarks/gpu_suite.sh
# does (C++ and CUDA for sm_90, VLKERNELS_FORCE_CUDA_BUILD=1) and runs the CPU test suite with them, so
# that a version difference fails here and not in the GPU run's few minutes.
#
# torch 2.11 has no CPU wheel on the package index this project uses, so the check takes the CUDA wheel
# (about 530 MB, without its several GB of CUDA library packages) and gives the loader stubs of the
# libraries it lacks (benchmarks/cuda_wheel_stubs.py). Needs nvcc and the CUDA runtime in $CUDA_HOME.
#
# Usage: bash benchmarks/gpu_versions_check.sh [WORKDIR] [PYTEST ARGS...]
#   WORKDIR (default /tmp/vlkernels-gpu-versions): the venv, wheel, stubs and a clone of this
#   checkout's HEAD (commit first: uncommitted changes are not tested). Extra arguments go to pytest.
#   VLKERNELS_CHECK_TORCH / VLKERNELS_CHECK_TRITON pick other releases (torch 2.15.0 with triton 3.9.0,
#   the newest, found the C++ standard setup.py forced: torch 2.15's headers need C++20);
#   VLKERNELS_CHECK_PYTHON another interpreter (e.g. python3.12, the GPU machines'; python3.10, the
#   oldest pyproject.toml allows), with VLKERNELS_CHECK_TORCHVISION the torchvision for that torch.
# Not part of CI (it downloads the wheel); it takes the CI's time plus about 3 minutes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/vlkernels-gpu-versions}
shift || true
TORCH=${VLKERNELS_CHECK_TORCH:-2.11.0}
TRITON=${VLKERNELS_CHECK_TRITON:-3.6.0}
BASE_PY=${VLKERNELS_CHECK_PYTHON:-}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
mkdir -p "$W"
if [ ! -x "$W/venv/bin/python" ]; then
  if [ -z "$BASE_PY" ]; then
    python3 -m venv --system-site-packages "$W/venv"  # the test dependencies from this machine's python3
  else
    # Another Python (the GPU machines' 3.12, the oldest pyproject.toml allows, 3.10): a venv of its own
    # with the test dependencies; those that would pull a torch (CUDA packages) without their deps.
    "$BASE_PY" -m venv "$W/venv"
    "$W/venv/bin/python" -m pip install -q filelock typing-extensions sympy networkx jinja2 fsspec \
      "numpy<2.4" pytest pytest-benchmark hypothesis pillow scikit-image matplotlib webdataset pandas \
      braceexpand ftfy regex huggingface_hub tqdm safetensors pyyaml ninja 2>&1 | grep -v "^WARNING" || true
    "$W/venv/bin/python" -m pip install -q --no-deps "torchvision==${VLKERNELS_CHECK_TORCHVISION:-0.26.0}" \
      open_clip_torch==3.3.0 timm 2>&1 | grep -v "^WARNING" || true
  fi
fi
PY="$W/venv/bin/python"
"$PY" -m pip download -q --no-deps -d "$W/wheels" "torch==$TORCH"
"$PY" -m pip install -q --no-deps "$W"/wheels/torch-"$TORCH"-*.whl "triton==$TRITON" "numpy<2.4" \
  "setuptools>=77.0.3" wheel 2>&1 | grep -v "^WARNING" || true
LIB=$("$PY" -c "import sysconfig, os; print(os.path.join(sysconfig.get_paths()['purelib'], 'torch', 'lib'))")
python3 "$ROOT/benchmarks/cuda_wheel_stubs.py" "$LIB" "$W/stubs"
export LD_LIBRARY_PATH="$W/stubs:$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
rm -rf "$W/src"
git clone -q "$ROOT" "$W/src"
cd "$W/src"
VLKERNELS_CUDA_ARCHS=9.0 VLKERNELS_FORCE_CUDA_BUILD=1 MAX_JOBS=${MAX_JOBS:-2} \
  "$PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v "^WARNING" || true
"$PY" -c "import vlkernels._ext as e; assert e.load_error() is None, e.load_error(); print('extension:', e.build_info())"
# (A torchvision wheel built for another torch cannot load its ops: tests/_torchvision_shim.py.)
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
