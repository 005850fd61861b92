"""Shared fixtures, one module per area under tests/support/.

Expensive artifacts (prepared MovieLens, a quickly trained run, a built model repository,
a running tritonserver) are session-scoped and built once, in data-flow order.
"""

import importlib.util
from pathlib import Path

# A bare GPU machine (make gpu-check: CUDA torch, triton, numpy, no venv) runs the GPU tests,
# which need none of these fixtures; the plugins import yaml, grpc and tritonclient.
BARE_MACHINE = importlib.util.find_spec("tritonclient") is None
if BARE_MACHINE:
    # nothing installed: the stage folders beside seminar/ (pyproject's package-dir) join it
    import seminar

    seminar.__path__.append(str(Path(__file__).resolve().parents[1]))
pytest_plugins = (
    []
    if BARE_MACHINE
    else [
        "tests.support.data",
        "tests.support.training",
        "tests.support.pq",
        "tests.support.build",
        "tests.support.serving",
        "tests.support.clients",
        "tests.support.events",
        "tests.support.docker",
    ]
)
