"""Shared fixtures, one module per area under tests/support/.

Expensive artifacts (prepared MovieLens, a quickly trained run, a built model repository,
a running tritonserver) are session-scoped and built once, in data-flow order.
"""

import importlib.util

# A bare GPU machine (make gpu-check: CUDA torch, triton, numpy, no venv) runs the GPU tests,
# which need none of these fixtures; the plugins import yaml, grpc and tritonclient.
BARE_MACHINE = importlib.util.find_spec("tritonclient") is None
pytest_plugins = [] if BARE_MACHINE else [
    "tests.support.data",
    "tests.support.training",
    "tests.support.pq",
    "tests.support.build",
    "tests.support.serving",
    "tests.support.clients",
    "tests.support.events",
    "tests.support.docker",
]
