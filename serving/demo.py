"""Demo: the real tritonserver ranks MovieLens candidates for a few users.

Called by `make demo` (cli/demo.py) after the repository is built: starts Triton over the
repository, asks the `seminar` ensemble to score each user's test candidates (the held-out
positive and its 99 sampled negatives), once as a recommendation request and once with a search
query, prints the top movies with their scores, and stops the server.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from seminar import contract


def _titles(data) -> dict[int, str]:
    items = data.items_table()
    return dict(
        zip(items.column("item_id").to_pylist(), items.column("text").to_pylist(), strict=True)
    )


def rank_movielens_users(
    repo: Path,
    data: Path,
    users: int = 3,
    top: int = 5,
    queries: tuple[str, ...] = ("", "comedy"),
    model: str = contract.ENSEMBLE_MODEL,
    grpc_url: str | None = None,
) -> list[dict]:
    """Rank each of the first `users` evaluated users' test candidates on a real tritonserver.

    Starts (and stops) a server over `repo` unless `grpc_url` names one already serving it.
    Returns one dict per (user, query) with the ranked item ids and scores (best first), and
    prints them with movie titles.
    """
    import tritonclient.grpc as grpcclient

    from seminar.data.dataset import PreparedDataset
    from seminar.serving.serve_process import ServeProcess

    ds = PreparedDataset.load(data)
    chosen = ds.evaluated_users()[:users]
    if grpc_url is not None:
        return _rank(grpcclient.InferenceServerClient(grpc_url), ds, chosen, queries, top, model)
    typer.echo(f"starting seminar serve over {repo} ...")
    with ServeProcess(Path(repo), "--wait-model", model) as serve:
        typer.echo(f"ready: grpc {serve.grpc_url}, health {serve.health_url}/ready")
        client = grpcclient.InferenceServerClient(serve.grpc_url)
        results = _rank(client, ds, chosen, queries, top, model)
    typer.echo("seminar serve stopped.")
    return results


def _rank(client, ds, chosen, queries: tuple[str, ...], top: int, model: str) -> list[dict]:
    from seminar.serving.client import score

    titles = _titles(ds)
    results = []
    for u in chosen:
        user_id = int(ds.user_ids[u])
        positive = int(ds.seq_item[ds.test_pos[u]])
        candidates = np.concatenate([[positive], ds.test_negatives[u]])  # item indices
        item_ids = np.array([ds.item_id(int(i)) for i in candidates], dtype=np.int64)
        for query in queries:
            scores = score(client, user_id, query, item_ids, model=model)
            order = np.argsort(-scores, kind="stable")
            rank_of_positive = int(np.flatnonzero(order == 0)[0]) + 1
            label = f"search {query!r}" if query else "recommendation"
            typer.echo(
                f"\nuser {user_id} ({label}): held-out movie ranked {rank_of_positive} of "
                f"{len(item_ids)}"
            )
            for rank, row in enumerate(order[:top], start=1):
                mark = "  <- held out" if row == 0 else ""
                typer.echo(
                    f"  {rank}. {scores[row]:+.3f}  {titles.get(int(item_ids[row]), '?')}{mark}"
                )
            results.append(
                {
                    "user_id": user_id,
                    "query": query,
                    "item_ids": item_ids[order].tolist(),
                    "scores": scores[order].tolist(),
                }
            )
    return results
