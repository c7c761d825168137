#!/usr/bin/env bash
# The pure-Python wheels the GPU machine lacks (it has no network: ../shared/GPU.md), downloaded on a CPU
# machine into the git-ignored .whl/ folder that benchmarks/gpu_suite.sh installs into a temporary target:
# open_clip (with ftfy and wcwidth) and Inf-CL, the benchmarks' baselines, and pytest-xdist (with execnet),
# so that the suite's GPU tests run on several workers (a test that crashes its process is reported as
# failed and the others still run; without it they run in one process against the stage's timeout).
# Python 3.12 x86-64, the GPU machines'. Carry ".whl" in the GPU call.
#
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  inf-cl==1.2.1 open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 pytest-xdist==3.8.0 execnet==2.1.2
ls .whl
