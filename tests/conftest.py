"""Shared fixtures, one module per area under tests/support/.

Expensive artifacts (prepared MovieLens, a quickly trained run, a built model repository,
a running tritonserver) are session-scoped and built once, in data-flow order.
"""

pytest_plugins = [
    "tests.support.data",
    "tests.support.training",
    "tests.support.pq",
    "tests.support.build",
    "tests.support.serving",
    "tests.support.clients",
    "tests.support.events",
    "tests.support.docker",
]
