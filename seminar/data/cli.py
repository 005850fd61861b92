"""`seminar data ...` and `seminar bench synthetic` (owned by the data pipeline).

Heavy imports (pyarrow, torch through MiniLM) happen inside the command bodies so that
`seminar --help` stays instant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from seminar.errors import cli_guard, reading_options

app = typer.Typer(
    help=(
        "Prepare datasets into the canonical layout, and fold the online event log into them "
        "(docs/data.md, docs/design.md section 1)."
    ),
    no_args_is_help=True,
)
prepare_app = typer.Typer(
    help=(
        "Turn a source into a prepared dataset directory: sequence arrays, evaluation splits "
        "(last positive = test, the one before = validation, 99 seeded negatives), query "
        "vocabulary and frozen MiniLM text features. The directory appears only when complete."
    ),
    no_args_is_help=True,
)
app.add_typer(prepare_app, name="prepare")

OutOption = Annotated[
    Path,
    typer.Option("--out", help="Prepared dataset directory to create (replaced if it is one)."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the statistics as one JSON object instead of a table.")
]
SeedOption = Annotated[int, typer.Option(help="Seed of the sampled evaluation negatives.")]
NegativesOption = Annotated[
    int, typer.Option(help="Negatives per evaluated user and split (items never interacted with).")
]


def _run(job: Callable[[], Any], as_json: bool, title: str) -> None:
    """Run a prepare job and print its statistics."""
    _print_stats(job().to_dict(), as_json, title)


def _print_stats(stats: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(stats))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        table.add_row(key, f"{value:,.1f}" if isinstance(value, float) else f"{value:,}")
    Console().print(table)


def _config(seed: int, negatives: int) -> Any:
    """Progress always goes to stderr: `--json` changes only what stdout prints."""
    from seminar.data.prepare import PrepareConfig

    with reading_options():
        return PrepareConfig(seed=seed, negatives=negatives)


@prepare_app.command("movielens")
@cli_guard
def prepare_movielens(
    source: Annotated[
        Path,
        typer.Option(help="ml-latest-small directory (ratings.csv, tags.csv, movies.csv)."),
    ] = Path("datasets/movielens/ml-latest-small"),
    out: OutOption = Path("data/movielens"),
    seed: SeedOption = 0,
    negatives: NegativesOption = 99,
    as_json: JsonOption = False,
) -> None:
    """MovieLens: ratings -> rec events (positive = rating >= 4.0), tags -> search events.

    Item text is "title | genres"; attributes are genre=<g> and decade=<1990s> (from the title).
    """
    from seminar.data.movielens import prepare_movielens as run

    _run(lambda: run(source, out, _config(seed, negatives)), as_json, "MovieLens")


@prepare_app.command("events")
@cli_guard
def prepare_events(
    events: Annotated[
        Path, typer.Option(help="Event log, Parquet in the canonical schema (docs/data.md).")
    ],
    items: Annotated[
        Path, typer.Option(help="Item catalog, Parquet in the canonical schema (docs/data.md).")
    ],
    out: OutOption,
    name: Annotated[str, typer.Option(help="Dataset name recorded in meta.json.")] = "events",
    seed: SeedOption = 0,
    negatives: NegativesOption = 99,
    as_json: JsonOption = False,
) -> None:
    """Your own logs: canonical events.parquet + items.parquet -> prepared dataset.

    Positive = label 1. Bad input (missing or mistyped columns, empty files, unknown or
    duplicate item ids, non-UTF-8 text) exits with code 3 and names the file and column.
    """
    from seminar.data.events import prepare_events as run

    _run(
        lambda: run(events, items, out, name, _config(seed, negatives)),
        as_json,
        name,
    )


@prepare_app.command("synthetic")
@cli_guard
def prepare_synthetic(
    out: OutOption,
    users: Annotated[int, typer.Option(help="Number of synthetic users.")] = 1000,
    events_per_user: Annotated[
        int, typer.Option(help="Mean events per user (lengths vary, see --length-spread).")
    ] = 200,
    items: Annotated[int, typer.Option(help="Catalog size.")] = 2000,
    topics: Annotated[int, typer.Option(help="Latent topics planted in items and users.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the generator and the negatives.")] = 0,
    length_spread: Annotated[
        float, typer.Option(help="Log-normal sigma of per-user lengths; 0 = exactly the mean.")
    ] = 0.5,
    min_events: Annotated[int, typer.Option(help="Fewest events a user gets.")] = 5,
    max_events: Annotated[int, typer.Option(help="Most events a user gets; 0 = no bound.")] = 0,
    image_dim: Annotated[
        int, typer.Option(help="Synthetic image embedding size (noisy topic vector); 0 = none.")
    ] = 32,
    images: Annotated[
        bool,
        typer.Option(
            "--images",
            help=(
                "Render one SYNTHETIC JPEG per item (OUT/images/) and embed them with the DALI "
                "pipeline and the CNN image tower, instead of the noisy vector."
            ),
        ),
    ] = False,
    image_topics: Annotated[
        int,
        typer.Option(
            help=(
                "0: an image shows its item's topic. N: items get one of N planted image topics "
                "that text and attributes do not reveal, and each user prefers one."
            )
        ),
    ] = 0,
    untitled: Annotated[
        float,
        typer.Option(
            help="Share of items whose text and attributes hide their topic (only the image shows it)."
        ),
    ] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """SYNTHETIC lifelong logs with planted topics (truth stored in meta.json / planted/).

    Items get a topic, text from that topic's vocabulary, topic-correlated attributes and a
    synthetic image vector (with --images a rendered JPEG: shape, colour and texture of its
    image topic, plus noise); users get a topic mixture; search and rec events interleave and
    labels follow interest; a search event's query is 1-3 words of its item's topic. Streams
    to disk in bounded memory.
    """
    from seminar.data.synthetic import SyntheticConfig
    from seminar.data.synthetic import prepare_synthetic as run

    with reading_options():
        config = SyntheticConfig(
            users=users,
            events_per_user=events_per_user,
            items=items,
            topics=topics,
            seed=seed,
            length_spread=length_spread,
            min_events=min_events,
            max_events=max_events,
            image_dim=image_dim,
            images=images,
            image_topics=image_topics,
            untitled=untitled,
        )
    prepare = _config(seed, 99)
    _run(lambda: run(config, out, prepare), as_json, "SYNTHETIC")


@app.command("append")
@cli_guard
def append(
    data: Annotated[
        Path, typer.Option(help="The prepared dataset to extend; it is never modified.")
    ],
    event_log: Annotated[
        str,
        typer.Option(
            help="The online event log: sqlite://PATH or redis://HOST:PORT (the gateway's)."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="The new prepared dataset directory to create.")
    ],
    force: Annotated[
        bool, typer.Option(help="Replace --out if it exists (a prepared dataset).")
    ] = False,
    items: Annotated[
        Path | None,
        typer.Option(
            help="Parquet catalog of items that arrived since DATA (its columns; docs/data.md). "
            "Their image vectors: its image_embedding column (from `seminar images embed`, "
            "the served image_encoder step), else their image_ref files through DATA's own "
            "DALI preprocessing and image tower."
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print what was folded and the statistics as one JSON object."),
    ] = False,
) -> None:
    """Fold the events the log recorded after DATA's mark, and new catalog items (--items),
    into a new prepared dataset (OUT).

    Reads the log up to its current end (its high watermark W_new, taken before reading),
    adds each logged event as a canonical row after the user's events (label = clicked; new
    users allowed; an item missing from the catalog is added with empty text), reruns the
    prepare pipeline and records the mark (log id, W_new) in OUT/meta.json, so the next train
    and build include these events and serving reads only the events after W_new. Nothing
    logged after the mark: OUT is a copy of DATA with the mark moved. A log other than the one
    DATA was folded from exits 3; an unreachable log exits 6; an --items row whose id DATA
    has, or whose image is missing or corrupt, exits 3 naming the item. `seminar build --run
    RUN --data OUT` then serves RUN's model on the grown catalog without retraining. Example:
    seminar data append --data data/movielens --event-log sqlite:///data/events.db --out
    data/movielens-2
    """
    from seminar.data.append import append_events, open_existing_log

    with open_existing_log(event_log) as log:
        fold, stats = append_events(data, log, out, force=force, items=items)
    if as_json:
        typer.echo(json.dumps({**fold.to_json(), "stats": stats.to_dict()}))
        return
    typer.echo(
        f"folded {fold.events:,} logged events (seq {fold.watermark_from + 1:,} to "
        f"{fold.watermark_to:,} of log {fold.log_id}): {fold.new_users:,} new users, "
        f"{fold.new_items:,} new items; {fold.catalog_items:,} catalog items added; {out} "
        f"holds the events up to seq {fold.watermark_to:,}"
    )
    _print_stats(stats.to_dict(), False, str(out))


@app.command("info")
@cli_guard
def info(
    data: Annotated[Path, typer.Argument(help="A prepared dataset directory.")],
    as_json: JsonOption = False,
) -> None:
    """Open a prepared dataset (checking its arrays) and print its statistics from meta.json."""
    from seminar.data.dataset import PreparedDataset

    ds = PreparedDataset.load(data)
    label = "SYNTHETIC " if ds.synthetic else ""
    _print_stats(ds.meta["stats"], as_json, f"{label}{ds.meta['name']}")
