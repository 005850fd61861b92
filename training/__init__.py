"""seminar.training: PSU pretraining, fine-tuning, evaluation and the offline reference scorer.

config (TrainConfig, presets) -> batches (PreparedDataset -> tensors) -> trainer (train_run,
DDP) -> checkpoint (run directories) -> evaluate / metrics -> scoring (score_request); cli
holds the commands. `seminar bench quality` lives with the other benchmarks (bench/quality.py).
"""
