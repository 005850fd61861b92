"""SEMINAR: Search Enhanced Multi-modal Interest Network and Approximate Retrieval.

The library (this folder), which every stage imports and which imports no stage:
    seminar.contract  every name and index convention, and the serving pipeline, declared once
    seminar.errors    every error a user can meet, by kind, with its exit code
    seminar.provenance  the machine and the git revision named next to every result
    seminar.data      event logs + catalogs -> prepared dataset (splits, vocab, frozen features)
    seminar.model     the SEMINAR model and the baselines (one home for training, export, serving)
    seminar.pq        multi-modal product quantization: codebooks, sequence store, ADC top-K

The stages, in data-flow order, each a top-level folder that imports only the library and the
stages before it (README, "Layout"):
    seminar.training  PSU pretraining, fine-tuning, evaluation, scoring              (training/)
    seminar.build     ONNX / TensorRT export, PQ artifacts, Triton model repository  (build/)
    seminar.serving   the Triton backends, tritonserver under its supervisor         (serving/)
    seminar.clients   gRPC gateway with A/B arms, client, load generator             (clients/)
    seminar.bench     every benchmark                                                (bench/)
    seminar.cli       the `seminar` command and `make demo`                          (cli/)
"""

__version__ = "0.1.0"
