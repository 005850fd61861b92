"""The data pipeline: sources -> canonical tables -> prepared dataset (docs/data.md).

    schema.py     canonical events/items schema, validation with one-sentence DataErrors
    movielens.py  ml-latest-small -> canonical tables
    events.py     users' own Parquet logs -> canonical tables
    synthetic.py  SYNTHETIC generator with planted topics; lifelong_user for benchmarks
    prepare.py    the shared writer: ids -> indices, arrays, atomic output, meta.json
    splits.py     test/valid targets and seeded negatives
    tokenizer.py  word-level query tokenizer (standard library only: Triton imports it)
    features.py   frozen MiniLM text embeddings with an on-disk content cache
    dataset.py    PreparedDataset.load: memory-mapped access for training, PQ and build
    cli.py        `seminar data ...` (`seminar bench synthetic` is bench/synthetic.py)

Nothing is imported here, so `seminar.data.tokenizer` stays free of numpy and torch.
"""
