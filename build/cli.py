"""`seminar build`: a trained run -> a new numbered version of the Triton model repository.
`seminar retire`: take a version out of the repository (and a live Triton) safely."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from seminar import contract
from seminar.errors import DataError, UsageError, cli_guard, reading_options
from seminar.events.tail import DEFAULT_MAX_TAIL_EVENTS

# What the summary's artifact column says of a model with no exported graph.
WRITTEN = {
    contract.PQ_RETRIEVAL_MODEL: "pq artifacts",
    contract.PIPELINE_MODEL: "fused step",
    contract.NATIVE_MODEL: "fused step (C++)",
}
# What writes the native step for --graph native (builder.BuildInputs.write_native): serving's
# code, which this stage may not import, so the application mounting both sets it (cli/).
NATIVE_WRITER: Callable[[Path, int], object] | None = None


def _summary(summary, console) -> None:
    """The final table: one row per composing model."""
    from rich.table import Table

    from seminar import contract

    table = Table(title=f"{summary.repo} version {summary.version} ({summary.target.value})")
    for col in ("model", "artifact", "parity cases", "max abs diff", "polygraphy", "bytes"):
        table.add_column(col, justify="right" if col in ("bytes", "parity cases") else "left")
    for name in summary.files:  # the models this build wrote, in data-flow order
        res = summary.exports.get(name)
        kind = "ONNX" if summary.target is contract.Target.CPU else "TensorRT plan + ONNX"
        table.add_row(
            name,
            kind if res else WRITTEN.get(name, "id maps"),
            str(len(res.cases)) if res else "-",
            f"{res.max_abs_diff:.2e}" if res else "-",
            res.polygraphy if res else "-",
            f"{summary.files[name]:,}",
        )
    console.print(table)
    console.print(
        f"ensembles: {contract.pinned_ensemble_name(summary.version)} (A/B handle), "
        f"{contract.ENSEMBLE_MODEL} (pinned to the newest version); {summary.seconds:.1f} s"
    )


@cli_guard
def build(
    run: Annotated[
        Path, typer.Option(help="Trained run directory (checkpoint.safetensors + config.json).")
    ],
    version: Annotated[int, typer.Option(min=1, help="Version number to write for every model.")],
    target: Annotated[
        str,
        typer.Option(
            help="cpu: Python backend + ONNX Runtime, KIND_CPU. gpu: TensorRT plans, KIND_GPU."
        ),
    ] = contract.Target.CPU.value,
    repo: Annotated[
        Path, typer.Option(help="Triton model repository to add the version to.")
    ] = Path("model_repository"),
    data: Annotated[
        Path | None,
        typer.Option(help="Prepared dataset (default: the one recorded in RUN/config.json)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the version if it already exists.")] = False,
    max_batch: Annotated[
        int, typer.Option(min=1, help="max_batch_size (candidate rows) and TensorRT profile max.")
    ] = 1024,
    execution_env: Annotated[
        Path | None,
        typer.Option(
            help="Write EXECUTION_ENV_PATH=DIR for the Python models (default: the stub finds the venv on PATH)."
        ),
    ] = None,
    polygraphy: Annotated[
        bool, typer.Option(help="Run `polygraphy run --onnxrt` on each graph.")
    ] = True,
    pq_subspaces: Annotated[
        int, typer.Option(min=1, help="PQ sub-spaces S per modality (D % S == 0).")
    ] = 16,
    pq_bits: Annotated[
        int | None,
        typer.Option(
            help="Bits per PQ code: 8 (256 centroids) or 4 (16, faiss fast-scan). Default: 4 for --target cpu, 8 for gpu."
        ),
    ] = None,
    pq_rerank: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Rescore a shortlist of RERANK x K events exactly and keep the best K (1 = pure PQ top-K). Default: 4 for --target cpu, 1 for gpu.",
        ),
    ] = None,
    pq_iters: Annotated[int, typer.Option(min=1, help="k-means iterations per PQ sub-space.")] = 25,
    max_tail_events: Annotated[
        int,
        typer.Option(
            min=0,
            help="Newest online events per user (seminar serve --event-log) scored beside the stored sequence; 0 = none. Older ones wait for `seminar data append`.",
        ),
    ] = DEFAULT_MAX_TAIL_EVENTS,
    graph: Annotated[
        str | None,
        typer.Option(
            help="What the ensemble schedules: `steps` (the six models, each its own Triton model) or, on --target cpu, `fused` (one Python step, `pipeline`, runs the six steps' work in one process: one IPC per request instead of one per step; the six models stay loaded, each answering on its own) or `native` (the same step in C++ inside tritonserver, `seminar_native`: no Python and no IPC on a recommendation; searches, and every request under an event log, are forwarded to `pipeline`, written beside it). Default: fused for --target cpu, steps for gpu.",
        ),
    ] = None,
) -> None:
    """Export a trained run into a new numbered version of the Triton model repository.

    Writes version N of features, query_encoder, item_encoder, pq_retrieval and ranking_head, the pinned ensemble seminar_vN (the handle an A/B arm names) and the contract ensemble `seminar`, re-pinned to the newest version.

    The exported graphs must match PyTorch within 1e-4 on real MovieLens and random inputs (batch 1, 7, 256) or nothing is written. The version is staged beside the repository and renamed into place, so it appears whole or not at all; builds (and retires) of one repository take turns on a lock file beside it. Settings kept once per model (--max-batch, --execution-env, --target) must match the versions already there, or the build is refused. Example: seminar build --run runs/quick --version 2
    """
    from rich.console import Console

    console = Console(stderr=True)
    try:
        tgt = contract.Target(target)
    except ValueError:
        raise UsageError(f"--target must be cpu or gpu, got {target!r}") from None
    try:
        scheduled = None if graph is None else contract.Graph(graph)
    except ValueError:
        choices = ", ".join(g.value for g in contract.Graph)
        raise UsageError(f"--graph must be one of {choices}, got {graph!r}") from None
    if tgt is contract.Target.GPU:
        # Fail fast, before loading anything or touching the repository.
        from seminar.build import tensorrt

        reason = tensorrt.unavailable_reason()
        if reason:
            raise UsageError(reason)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from seminar.build import builder, export, repository
    from seminar.data.dataset import PreparedDataset
    from seminar.pq import PQConfig
    from seminar.training.checkpoint import load_run
    from seminar.training.rebase import model_for_dataset

    with reading_options():
        pq_config = PQConfig.for_serving(
            "cpu" if tgt is contract.Target.CPU else "cuda",
            n_subspaces=pq_subspaces,
            nbits=pq_bits,
            rerank=pq_rerank,
            kmeans_iters=pq_iters,
        )
        serving = repository.ServingConfig(
            max_batch_size=max_batch,
            preferred_batch_sizes=tuple(b for b in (128, 256, 512) if b <= max_batch)
            or (max_batch,),
            execution_env=str(execution_env.resolve()) if execution_env else None,
            max_tail_events=max_tail_events,
            graph=scheduled,
        )
        request = builder.BuildRequest(
            repo=repo,
            version=version,
            target=tgt,
            force=force,
            serving=serving,
            export=export.ExportConfig(max_batch=max(max_batch, 256), polygraphy=polygraphy),
        )
    loaded = load_run(run)
    recorded = loaded.data.get("path")
    data_dir = data or (Path(recorded) if recorded else None)
    if data_dir is None:
        raise UsageError(f"{run / 'config.json'}: records no dataset path; pass --data DATA")
    if not (data_dir / "arrays").is_dir():
        raise DataError(f"{data_dir}: not a prepared dataset (no arrays/); pass --data DATA")
    model, rebase = model_for_dataset(loaded, PreparedDataset.load(data_dir))
    if rebase is not None:
        console.print(rebase.sentence(), markup=False, highlight=False)
    dims = contract.PipelineDims.from_model_config(model.config)
    inputs = builder.BuildInputs(
        model,
        dims,
        data_dir,
        run_dir=run,
        pq_config=pq_config,
        rebase=rebase.sentence() if rebase else None,
        write_native=NATIVE_WRITER,
    )
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("preflight", total=None)
        summary = builder.build_version(
            request,
            inputs,
            lambda msg: progress.update(task, description=msg),
            # One line above the spinner, never wrapped: who holds the repository lock.
            on_lock_wait=lambda line: progress.console.print(
                line, markup=False, highlight=False, soft_wrap=True
            ),
        )
    # The summary is the command's result: stdout, wide enough that model names never wrap.
    _summary(summary, Console(width=max(110, console.width)))


@cli_guard
def retire(
    version: Annotated[int, typer.Option(min=1, help="The version to take out.")],
    repo: Annotated[
        Path, typer.Option(help="Triton model repository written by `seminar build`.")
    ] = Path("model_repository"),
    server: Annotated[
        str | None,
        typer.Option(
            help="HOST:HTTP_PORT of a Triton serving the repository in explicit model-control "
            "mode: it is reloaded step by step so it keeps answering (default: files only)."
        ),
    ] = None,
    admin_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the key Triton's restricted repository API wants in header "
            "seminar-admin-key (tritonserver --http-restricted-api=model-repository:"
            "seminar-admin-key=KEY)."
        ),
    ] = None,
    ready_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for a reloaded model to be READY.")
    ] = 120.0,
) -> None:
    """Take version N out of the model repository, and out of a live Triton with --server.

    If the contract ensemble `seminar` is pinned to N, it is first re-pinned to the newest other complete version M (and with --server reloaded until version M is READY); then seminar_vN is unloaded and version N of every model is moved out of the repository and deleted, and with --server each composing model is reloaded so Triton drops N. The order keeps the repository servable if the command stops half-way; running it again finishes the job. Remove seminar_vN from the gateway's A/B arms first.

    Exit codes: 2 unreadable key file, 4 not a repository or unknown version, 5 the only complete version (never retired), 6 Triton unreachable or refused a call. Example: seminar retire --repo model_repository --version 1 --server 127.0.0.1:8000
    """
    from seminar.build import retire

    def say(line: str) -> None:
        typer.echo(line, err=True)

    with reading_options():
        request = retire.RetireRequest(
            repo=repo,
            version=version,
            server=server,
            admin_key=retire.read_admin_key(admin_key_file) if admin_key_file else None,
            ready_timeout_s=ready_timeout,
        )
    summary = retire.retire_version(request, say)
    pinned = (
        f"; {contract.ENSEMBLE_MODEL} now serves version {summary.repinned_to}"
        if summary.repinned_to
        else ""
    )
    typer.echo(f"retired version {summary.version} from {repo}{pinned} ({summary.seconds:.1f} s)")
