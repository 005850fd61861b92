"""`seminar train | evaluate | score | bench quality` (owned by training/).

Heavy imports (torch, the model) happen inside the command bodies so `seminar --help` is fast.
Bad input exits with its kind's code (seminar.errors) and one sentence naming the file, field
or id.
"""

from __future__ import annotations

import json
from enum import StrEnum, unique
from pathlib import Path
from typing import Annotated, Any

import typer

from seminar import contract
from seminar.errors import ArtifactError, DataError, UsageError, cli_guard, reading_options
from seminar.events.tail import DEFAULT_MAX_TAIL_EVENTS
from seminar.model.config import ModelKind


@unique
class Split(StrEnum):
    test = "test"
    valid = "valid"
    search = "search"


@unique
class Gsu(StrEnum):
    exact = "exact"
    pq = "pq"


def require_data_dir(data: Path) -> None:
    """DataError unless `data` is a directory, naming the command that prepares it."""
    if not data.is_dir():
        raise DataError(
            f"{data}: data directory not found; create it with `seminar data prepare movielens "
            f"--out {data}`."
        )


@cli_guard
def train(
    data: Annotated[Path, typer.Option(help="Prepared dataset directory (seminar data prepare).")],
    out: Annotated[
        Path, typer.Option(help="Run directory to write (checkpoint, config, metrics).")
    ],
    model: Annotated[ModelKind, typer.Option(help="Which model to train.")] = ModelKind.SEMINAR,
    quick: Annotated[
        bool, typer.Option("--quick", help="Small configuration (D=32, K=20, 2 epochs): minutes.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, batches and negatives.")] = 0,
    pretrain: Annotated[
        bool, typer.Option("--pretrain/--no-pretrain", help="PSU pretraining (seminar only).")
    ] = True,
    epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs (max).")] = None,
    pretrain_epochs: Annotated[int | None, typer.Option(help="PSU pretraining epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    max_train_targets: Annotated[
        int | None, typer.Option(help="Subsample of training targets per run (0 = all).")
    ] = None,
    align_weight: Annotated[float | None, typer.Option(help="PSU alignment loss weight.")] = None,
    next_weight: Annotated[float | None, typer.Option(help="PSU next-pair loss weight.")] = None,
    relevance_weight: Annotated[
        float | None, typer.Option(help="PSU query-item relevance loss weight.")
    ] = None,
    search_weight: Annotated[
        float | None,
        typer.Option(
            help="Fine-tuning loss weight of search targets (1 = as recommendation ones)."
        ),
    ] = None,
    dim: Annotated[int | None, typer.Option(help="Hidden size D.")] = None,
    heads: Annotated[int | None, typer.Option(help="GSU/ESU heads H.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Events retrieved per head K.")] = None,
    max_history: Annotated[
        int | None, typer.Option(help="Most recent events per training target.")
    ] = None,
    text: Annotated[bool, typer.Option("--text/--no-text", help="Text modality.")] = True,
    attr: Annotated[bool, typer.Option("--attr/--no-attr", help="Attribute modality.")] = True,
    image: Annotated[
        bool,
        typer.Option("--image/--no-image", help="Image modality (where the dataset has one)."),
    ] = True,
    query_text: Annotated[
        bool,
        typer.Option(
            "--query-text/--no-query-text",
            help="Fuse the query's MiniLM embedding into the query encoder (off: tokens only).",
        ),
    ] = True,
    query_relevance: Annotated[
        bool,
        typer.Option(
            "--query-relevance/--no-query-relevance",
            help="Query-item relevance features (cosine, product) in the ranking head.",
        ),
    ] = True,
    eval_users: Annotated[
        int | None, typer.Option(help="Validate on the first N users only (0 = all).")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads (0 = default).")] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/resume.pt (same configuration).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train a model on a prepared dataset (SEMINAR: PSU pretraining, then fine-tuning).

    Early stopping on validation NDCG@10; the best epoch is evaluated on the test split and
    written to OUT (checkpoint.safetensors, config.json, metrics.json, curve.png). Under
    `torchrun --nproc-per-node N -m seminar.cli train ...` it trains data-parallel (gloo on CPU).
    """
    from seminar.training.config import QUICK_MODEL, QUICK_TRAIN, TrainConfig
    from seminar.training.trainer import train_run

    require_data_dir(data)
    base = dict(QUICK_TRAIN) if quick else {}
    model_fields: dict[str, Any] = dict(QUICK_MODEL) if quick else {}
    train_fields = {
        "seed": seed,
        "pretrain": pretrain,
        "epochs": epochs,
        "pretrain_epochs": pretrain_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "max_train_targets": max_train_targets,
        "align_weight": align_weight,
        "next_weight": next_weight,
        "relevance_weight": relevance_weight,
        "search_weight": search_weight,
        "threads": threads,
        "eval_users": eval_users,
        "progress": not as_json,
    }
    model_changes = {"dim": dim, "heads": heads, "top_k": top_k, "max_history": max_history}
    model_fields.update({k: v for k, v in model_changes.items() if v is not None})
    model_fields.update(
        {
            "use_text": text,
            "use_attr": attr,
            "use_image": image,
            "use_query_text": query_text,
            "query_relevance": query_relevance,
        }
    )
    with reading_options():
        tc = TrainConfig(**base).override(**train_fields)
    summary = train_run(data, out, model.value, tc, model_fields, resume=resume)
    if not summary:  # a non-zero DDP rank
        return
    if as_json:
        typer.echo(json.dumps(summary["test"], indent=2))
        return
    _print_metrics(f"{summary['model']} test ({out})", summary["test"])
    secs = summary["seconds"]
    typer.echo(
        f"time: pretrain {secs['pretrain']:.0f}s, fine-tune {secs['finetune']:.0f}s "
        f"({summary['samples_per_s']['finetune']:.0f} samples/s), eval {secs['eval']:.0f}s, "
        f"total {secs['total']:.0f}s"
    )


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    from seminar.training.metrics import METRIC_NAMES

    typer.echo(f"| {title} | " + " | ".join(METRIC_NAMES) + " |")
    typer.echo("|---|" + "---:|" * len(METRIC_NAMES))
    typer.echo("| | " + " | ".join(f"{metrics[m]:.4f}" for m in METRIC_NAMES) + " |")


def _retriever(gsu: Gsu, run: Any, pq_dir: Path | None, dataset: Any) -> Any:
    """None for the exact GSU; for --gsu pq the served artifacts of --pq-dir, or else the
    configuration `seminar build --target cpu` would serve, built from the run."""
    if gsu is Gsu.exact:
        return None
    try:
        import seminar.pq as pq

        load, build = pq.load_pq_retriever, pq.build_pq_retriever
    except (ImportError, AttributeError):
        raise UsageError("--gsu pq needs seminar.pq, which is not available.") from None
    if pq_dir is not None:
        if not pq_dir.is_dir():
            raise ArtifactError(f"{pq_dir}: PQ artifact directory not found.")
        return load(pq_dir)
    return build(run.model, dataset, pq.PQConfig.for_serving("cpu"))


@cli_guard
def evaluate(
    run: Annotated[Path, typer.Option(help="Run directory written by `seminar train`.")],
    split: Annotated[
        Split,
        typer.Option(
            help="Which 1 + 99 candidate lists: the test or validation targets, or search: "
            "every searching user's last positive search event, with the history before it."
        ),
    ] = Split.test,
    no_query: Annotated[
        bool,
        typer.Option(
            "--no-query",
            help="Score every target without its query (query index 0): the query ablation.",
        ),
    ] = False,
    by_target: Annotated[
        bool,
        typer.Option(
            "--by-target",
            help="Metrics of search targets and of recommendation targets apart, beside all.",
        ),
    ] = False,
    gsu: Annotated[
        Gsu, typer.Option(help="exact: score every event; pq: seminar.pq's approximate GSU.")
    ] = Gsu.exact,
    pq_dir: Annotated[
        Path | None, typer.Option(help="Saved PQ artifacts (default: build them in memory).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Dataset directory (default: the one in config.json).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Evaluate a trained run: HIT@{1,5,10,50}, NDCG@{1,5,10,50}, MRR, AUC, GAUC.

    A target is a search when its event has a query. Search quality: `--split search` (every
    user who searched), and `--split search --no-query` for what the query adds.
    """
    from seminar.training.checkpoint import load_run, open_run_data
    from seminar.training.evaluate import evaluate_by_target

    loaded = load_run(run)
    ds = open_run_data(loaded, data)
    retriever = _retriever(gsu, loaded, pq_dir, ds)
    groups = evaluate_by_target(
        loaded.model,
        ds,
        split.value,
        retriever=retriever,
        without_query=no_query,
        progress=not as_json,
    )
    if not groups.users["all"]:
        raise DataError(f"{ds.path}: the {split.value} split has no evaluated user.")
    shown = groups.metrics if by_target else {"all": groups.metrics["all"]}
    if as_json:
        document = {**shown, "users": groups.users} if by_target else shown["all"]
        typer.echo(json.dumps(document, indent=2))
        return
    query = ", no query" if no_query else ""
    for group, metrics in shown.items():
        title = (
            f"{run} {split.value} ({gsu.value} GSU{query}): {group}, {groups.users[group]} users"
        )
        _print_metrics(title, metrics)


@cli_guard
def score(
    run: Annotated[Path, typer.Option(help="Run directory written by `seminar train`.")],
    user: Annotated[int, typer.Option(help="External user id (e.g. MovieLens userId).")],
    items: Annotated[str, typer.Option(help="Comma-separated external item ids, e.g. 1,2,3.")],
    query: Annotated[str, typer.Option(help="Search query text; empty = recommendation.")] = "",
    gsu: Annotated[Gsu, typer.Option(help="exact or pq retrieval.")] = Gsu.exact,
    pq_dir: Annotated[
        Path | None, typer.Option(help="PQ artifacts written by the build (for --gsu pq).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Dataset directory (default: the one in config.json).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"scores": [...]}.')] = False,
    event_log: Annotated[
        str | None,
        typer.Option(
            help="Append the user's online tail from this event log (sqlite://PATH or redis://HOST:PORT): the events after the dataset's watermark, as `seminar serve --event-log` scores them (exact GSU)."
        ),
    ] = None,
    max_tail_events: Annotated[
        int,
        typer.Option(min=0, help="Newest tail events appended (the build's --max-tail-events)."),
    ] = DEFAULT_MAX_TAIL_EVENTS,
) -> None:
    """Offline reference logits for one request, in the order of --items.

    Computes what the serving ensemble computes: dataset tokenizer, the user's full history
    (with --event-log, plus the events recorded since the dataset was built), exact (or the
    given PQ) GSU, ESU and scorer. Unknown item ids score as OOV. A --data grown from the
    run's dataset by `seminar data append` is read by the run's model rebased onto it, as
    `seminar build --data` serves it.
    """
    from seminar.training.checkpoint import load_run
    from seminar.training.rebase import run_on
    from seminar.training.scoring import score_request

    try:
        item_ids = [int(x) for x in items.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--items: {items!r} is not a comma-separated list of ids.") from None
    loaded, ds = run_on(load_run(run), data)
    tail = []
    if event_log is not None:
        if gsu is not Gsu.exact:
            raise UsageError("--event-log scores the online tail exactly: use --gsu exact.")
        from seminar.events import Watermark, open_event_log
        from seminar.events.tail import read_tail

        mark = Watermark.from_json(ds.meta.get(contract.EVENT_LOG_FIELD))
        with open_event_log(event_log) as log:
            mark.check_log(log)
            tail = [stored.event for stored in read_tail(log, user, mark, max_tail_events)]
    retriever = _retriever(gsu, loaded, pq_dir, ds)
    scores = score_request(loaded, user, query, item_ids, retriever=retriever, data=data, tail=tail)
    if as_json:
        typer.echo(json.dumps({"scores": scores}))
    else:
        for item_id, value in zip(items.split(","), scores, strict=True):
            typer.echo(f"{item_id.strip()}\t{value:.6f}")


@cli_guard
def degrade(
    run: Annotated[Path, typer.Option(help="Run directory to copy (seminar train).")],
    out: Annotated[Path, typer.Option(help="New run directory for the degraded copy.")],
    seed: Annotated[int, typer.Option(help="Seed of the permutation of items.")] = 0,
) -> None:
    """Write a deliberately WORSE copy of a run: the losing arm of an A/B simulation.

    Every per-item table of the checkpoint (id embedding, text, attribute and image features) is permuted between items, so the model applies what it learned about one item to another. OUT/config.json says "degraded"; OUT has no metrics.json. Build it with `seminar build` like any run.
    """
    from seminar.training.degrade import write_degraded_run

    written = write_degraded_run(run, out, seed)
    typer.echo(f"wrote {written} (DEGRADED on purpose: items permuted, seed {seed})")
