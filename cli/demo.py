"""`make demo`: the whole product end to end on the CPU, one step per stage of the data flow.

Every step runs the same `seminar` command a user would type, so the demo is also a smoke
test of the CLI. Steps whose output already exists are reused (delete `data/`, `runs/` and the
built versions to start from scratch). Its `--quick` runs go to `runs/demo-seminar` and
`runs/demo-twin`, so that they never pass for the default-configuration `runs/seminar` that
README's step by step and the benchmarks use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import typer

from seminar import contract
from seminar.errors import cli_guard

REPO_ROOT = Path(__file__).resolve().parent.parent
MOVIELENS_SOURCE = REPO_ROOT / "datasets" / "movielens" / "ml-latest-small"
SHOWN_METRICS = ("hit@10", "ndcg@10", "mrr", "auc", "gauc")


def _banner(title: str) -> None:
    typer.secho(f"\n=== {title} ===", bold=True)


def _seminar(*args: str, capture: bool = False) -> str:
    """Run `seminar ARGS...` with this interpreter; stop the demo on failure."""
    command = [sys.executable, "-m", "seminar.cli", *args]
    typer.echo("$ seminar " + " ".join(args))
    started = time.perf_counter()
    result = subprocess.run(command, text=True, capture_output=capture, cwd=REPO_ROOT)
    if result.returncode != 0:
        if capture:
            typer.echo(result.stdout + result.stderr, err=True)
        typer.secho(f"demo stopped: `seminar {args[0]}` exited {result.returncode}", fg="red")
        raise typer.Exit(code=result.returncode)
    typer.echo(f"  ({time.perf_counter() - started:.1f} s)")
    return result.stdout if capture else ""


@cli_guard
def main(
    data: Path = typer.Option(Path("data/movielens"), help="Prepared MovieLens directory."),
    runs: Path = typer.Option(Path("runs"), help="Where the demo's training runs go."),
    repo: Path = typer.Option(Path("model_repository"), help="Triton model repository."),
) -> None:
    """Prepare MovieLens, train SEMINAR and TWIN, build two versions, serve, rank, load-test."""
    _banner("1. data: MovieLens ml-latest-small -> prepared dataset")
    if not (data / "meta.json").exists():
        _seminar(
            "data", "prepare", "movielens", "--source", str(MOVIELENS_SOURCE), "--out", str(data)
        )
    else:
        typer.echo(f"reusing {data}")
        stats = json.loads((data / "meta.json").read_text()).get("stats", {})
        typer.echo(json.dumps(stats, indent=2))

    _banner("2. training: SEMINAR (PSU pretraining + fine-tuning) and TWIN, quick configuration")
    metrics: dict[str, dict[str, float]] = {}
    for model in ("seminar", "twin"):
        run = runs / f"demo-{model}"
        if not (run / "checkpoint.safetensors").exists():
            shutil.rmtree(run, ignore_errors=True)
            _seminar("train", "--data", str(data), "--model", model, "--quick", "--out", str(run))
        out = _seminar("evaluate", "--run", str(run), "--json", capture=True)
        metrics[model] = json.loads(out)
    typer.echo("\n| model | " + " | ".join(SHOWN_METRICS) + " |")
    typer.echo("|---|" + "---|" * len(SHOWN_METRICS))
    for model, values in metrics.items():
        typer.echo(f"| {model} | " + " | ".join(f"{values[m]:.4f}" for m in SHOWN_METRICS) + " |")

    _banner("3. build: two versions of the CPU model repository (v1 = SEMINAR, v2 = TWIN)")
    for version, model in ((1, "seminar"), (2, "twin")):
        if contract.build_info_path(repo, version).exists():
            typer.echo(f"reusing version {version} in {repo}")
            continue
        _seminar(
            "build",
            "--run",
            str(runs / f"demo-{model}"),
            "--target",
            "cpu",
            "--repo",
            str(repo),
            "--version",
            str(version),
        )

    _banner("4. serving: the real tritonserver ranks MovieLens candidates")
    from seminar.serving.demo import rank_movielens_users

    rank_movielens_users(repo=repo, data=data)

    _banner("5. gateway: A/B rollout over both versions, load test, arm split from /metrics")
    from seminar.clients.demo import run_gateway_demo

    run_gateway_demo(repo=repo, data=data)


if __name__ == "__main__":
    typer.run(main)
