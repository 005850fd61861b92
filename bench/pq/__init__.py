"""`seminar bench pq`: exact GSU vs PQ GSU (torch, faiss fast path) vs raw faiss, per request.

A request is 1 user x 100 candidates x 4 heads, top-50, over that user's whole stored
sequence. One module per part of the report, each measuring and rendering its own numbers:

    config.py         the request, the methods by label, BenchConfig
    world.py          tables users are drawn over (SYNTHETIC or a trained run's) + codebooks
    gsu.py            the GSUs compared, and recall against the exact one
    latency.py        latency and recall per method and L (interleaved), the main table
    breakdown.py      each step of both GSUs timed alone at L = 10k, machine rates, bound
    distributions.py  recall at L = 10k over table distributions
    trained_run.py    with --run: recall and the NDCG@10 change on the run's test split
    run.py            one run: measure all, write pq.md / pq.json / the figure
"""
