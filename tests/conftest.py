"""Shared test configuration."""

import os

# Keep test processes from fighting over the 2 cores with ONNX Runtime / torch thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
