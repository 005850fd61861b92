"""SEMINAR: Search Enhanced Multi-modal Interest Network and Approximate Retrieval.

Package map, in data-flow order:
    seminar.data      event logs + catalogs -> prepared dataset (splits, vocab, frozen features)
    seminar.model     the SEMINAR model and the baselines (one home for training, export, serving)
    seminar.pq        multi-modal product quantization: codebooks, sequence store, ADC top-K
    seminar.training  PSU pretraining, fine-tuning, evaluation, quality benchmark   (folder training/)
    seminar.build     ONNX / TensorRT export, PQ artifacts, Triton model repository  (folder build/)
    seminar.serving   running the real tritonserver
    seminar.clients   gRPC gateway with A/B arms, client, load generator, perf        (folder clients/)
"""

__version__ = "0.1.0"
