"""Test-only: subprocesses started by tests/test_open_clip*.py put this directory on PYTHONPATH so that
torchvision imports next to the CPU torch wheel (see tests/_torchvision_shim.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import tests._torchvision_shim  # noqa: E402, F401
