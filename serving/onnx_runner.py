"""One ONNX Runtime runner for the cpu target's exported models.

The CPU tritonserver from nvidia-pytriton has no ONNX Runtime backend, so `query_encoder`,
`item_encoder` and `ranking_head` are Python-backend models (serving/backends/onnx_model.py) that
wrap this runner. It checks at load that the graph's inputs and outputs are exactly the tensors
config.pbtxt declares (names and dtypes), so a stale graph never reports READY, and, when
given the index ranges its build wrote, that every int64 input (a table index) has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

# ONNX Runtime's type strings for the dtypes the pipeline uses.
_ORT_TYPES = {"tensor(int64)": np.dtype(np.int64), "tensor(float)": np.dtype(np.float32)}


class OnnxRunner:
    """`run(feeds) -> outputs`, both keyed by tensor name, rows first."""

    def __init__(
        self,
        path: Path,
        inputs: Mapping[str, np.dtype],
        outputs: Mapping[str, np.dtype],
        intra_op_threads: int = 1,
        index_ranges: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        self._check("input", self.session.get_inputs(), self.inputs, path)
        self._check("output", self.session.get_outputs(), self.outputs, path)
        self.output_names = list(self.outputs)
        if index_ranges is not None:
            index_inputs = {n for n, dtype in self.inputs.items() if dtype == np.int64}
            if set(index_ranges) != index_inputs:
                raise ValueError(
                    f"{path}: index ranges given for {sorted(index_ranges)}, but the graph's "
                    f"index (int64) inputs are {sorted(index_inputs)}"
                )

    @staticmethod
    def _check(kind: str, graph: list, declared: Mapping[str, np.dtype], path: Path) -> None:
        have = {t.name: _ORT_TYPES.get(t.type) for t in graph}
        if set(have) != set(declared):
            raise ValueError(
                f"{path}: graph {kind}s {sorted(have)} differ from the config's {sorted(declared)}"
            )
        for name, dtype in declared.items():
            if have[name] != dtype:
                raise ValueError(
                    f"{path}: graph {kind} {name} is {have[name]}, config says {dtype}"
                )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, {k: feeds[k] for k in self.inputs})
        return dict(zip(self.output_names, values, strict=True))
