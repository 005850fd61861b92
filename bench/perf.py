"""`seminar perf`: perf_analyzer against the `seminar` ensemble, and the gateway beside it.

1. `--input-data` JSON from real requests, not random tensors: one row per candidate,
   `-b C` rows per request, so perf_analyzer's requests are the users' real candidate sets
   (consecutive rows form one batch). An optional synthetic long user is added, labelled so.
2. perf_analyzer over gRPC for a concurrency range, natively where glibc >= 2.38, else inside
   the Debian 13 chroot built by clients/perf_analyzer_chroot.sh.
3. `seminar load` through the gateway at the same concurrencies, same requests.
4. reports/perf.md (machine, commands, one table with the gateway/Triton ratio), perf.png,
   perf_analyzer.csv, perf_gateway.json.
"""

from __future__ import annotations

import asyncio
import csv
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from seminar.clients.workload import RankCall, load_workload
from seminar.contract import ENSEMBLE_MODEL, INPUT_ITEM_ID, INPUT_QUERY, INPUT_USER_ID
from seminar.provenance import cpu_model

DEFAULT_CHROOT = Path("/opt/seminar/perf-chroot")
_CHROOT_BINARY = "opt/pa/lib/python3*/site-packages/perf_analyzer/bin/perf_analyzer"


class PerfError(RuntimeError):
    """perf_analyzer is missing or failed; the message says what to do."""


@dataclass(frozen=True)
class PerfConfig:
    triton: str
    data: Path
    gateway: str | None = None
    model: str = ENSEMBLE_MODEL
    concurrency: str = "1:8"
    candidates: int = 100
    requests: int = 32
    synthetic_long_user: int | None = None
    measurement_ms: int = 3000
    chroot: Path | None = None
    out_dir: Path = Path("reports")

    def __post_init__(self) -> None:
        if not 1 <= self.candidates <= 100:
            raise ValueError(f"candidates must be in 1..100, got {self.candidates}")
        if self.requests < 1:
            raise ValueError(f"requests must be >= 1, got {self.requests}")
        if self.measurement_ms < 100:
            raise ValueError(f"measurement_ms must be >= 100, got {self.measurement_ms}")
        self.concurrency_levels()  # validates the range

    def concurrency_levels(self) -> list[int]:
        parts = self.concurrency.split(":")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = []
        if (
            len(nums) not in (2, 3)
            or nums[0] < 1
            or nums[1] < nums[0]
            or (len(nums) == 3 and nums[2] < 1)
        ):
            raise ValueError(
                f"concurrency must be START:END[:STEP] with 1 <= START <= END, got {self.concurrency!r}"
            )
        step = nums[2] if len(nums) == 3 else 1
        return list(range(nums[0], nums[1] + 1, step))


@dataclass(frozen=True)
class PerfAnalyzer:
    """How to run perf_analyzer here: a native binary, or one inside a chroot."""

    binary: str  # path as perf_analyzer sees it
    chroot: Path | None = None

    def command(self, args: list[str]) -> list[str]:
        prefix = ["chroot", str(self.chroot)] if self.chroot else []
        return [*prefix, self.binary, *args]

    def host_path(self, inside: str) -> Path:
        """Where a path perf_analyzer sees lies on this machine."""
        return self.chroot / inside.lstrip("/") if self.chroot else Path(inside)

    @property
    def where(self) -> str:
        return f"chroot {self.chroot} (Debian 13)" if self.chroot else "native"


def find_perf_analyzer(chroot: Path | None = None) -> PerfAnalyzer:
    """A working perf_analyzer, or PerfError naming both ways to get one."""
    if chroot is None:
        native = shutil.which("perf_analyzer")
        if native and _runs([native, "--version"]):
            return PerfAnalyzer(native)
    root = chroot or DEFAULT_CHROOT
    matches = sorted(glob.glob(str(root / _CHROOT_BINARY)))
    if matches and os.geteuid() == 0:
        inside = "/" + str(Path(matches[-1]).relative_to(root))
        candidate = PerfAnalyzer(inside, root)
        if _runs(candidate.command(["--version"])):
            return candidate
    libc = " ".join(platform.libc_ver())
    raise PerfError(
        f"no runnable perf_analyzer: the PyPI wheel needs glibc >= 2.38 (this host has {libc}) "
        f"and no Debian 13 chroot with it at {root} usable by this user (uid {os.geteuid()}); "
        "build one as root with clients/perf_analyzer_chroot.sh"
    )


def _runs(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def input_data(calls: list[RankCall], synthetic_user: int | None = None) -> dict:
    """perf_analyzer --input-data: one entry per candidate row; request k = rows [kC, (k+1)C).

    A synthetic long user reuses the first real candidate set under its own user id.
    """
    rows = []
    requests = list(calls)
    if synthetic_user is not None:
        requests.append(RankCall(str(synthetic_user), "", calls[0].candidate_ids))
    for call in requests:
        for item in call.candidate_ids.tolist():
            rows.append(
                {
                    INPUT_USER_ID: [int(call.user_id)],
                    INPUT_QUERY: [call.query],
                    INPUT_ITEM_ID: [item],
                }
            )
    return {"data": rows}


def parse_csv(path: Path, batch: int) -> list[dict[str, float]]:
    """perf_analyzer's -f CSV (latencies in us, throughput in rows/s) -> requests/s and ms."""
    out = []
    with open(path) as f:
        for row in csv.DictReader(f):
            out.append(
                {
                    "concurrency": int(row["Concurrency"]),
                    "rps": float(row["Inferences/Second"]) / batch,
                    "p50": float(row["p50 latency"]) / 1000,
                    "p90": float(row["p90 latency"]) / 1000,
                    "p95": float(row["p95 latency"]) / 1000,
                    "p99": float(row["p99 latency"]) / 1000,
                    "queue": float(row.get("Server Queue", 0) or 0) / 1000,
                    "compute": float(row.get("Server Compute Infer", 0) or 0) / 1000,
                }
            )
    return sorted(out, key=lambda r: r["concurrency"])  # perf_analyzer sorts by throughput


def run_perf(cfg: PerfConfig) -> str:
    """Run both measurements; write the report files; return the markdown."""
    from rich.console import Console

    console = Console(stderr=True)
    pa = find_perf_analyzer(cfg.chroot)
    calls = load_workload(cfg.data, candidates=cfg.candidates, limit=cfg.requests)
    levels = cfg.concurrency_levels()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)

    scratch_root = pa.host_path("/tmp")
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seminar-perf-", dir=scratch_root) as scratch:
        inside = "/tmp/" + Path(scratch).name if pa.chroot else scratch
        (Path(scratch) / "input.json").write_text(
            json.dumps(input_data(calls, cfg.synthetic_long_user))
        )
        args = [
            "-m", cfg.model, "-i", "grpc", "-u", cfg.triton,
            "-b", str(cfg.candidates),
            "--input-data", f"{inside}/input.json",
            "--concurrency-range", cfg.concurrency,
            "--measurement-interval", str(cfg.measurement_ms),
            "--stability-percentage", "50",  # p99 on 2 shared cores is noisy (docs/environment.md)
            "--max-trials", "10",
            "-f", f"{inside}/perf.csv",
        ]  # fmt: skip
        command = pa.command(args)
        console.print(f"[bold]perf_analyzer[/] ({pa.where}): {shlex.join(command)}", soft_wrap=True)
        with console.status(f"perf_analyzer, concurrency {cfg.concurrency}"):
            proc = subprocess.run(command, capture_output=True, text=True, timeout=60 * 30)
        if proc.returncode != 0 or not (Path(scratch) / "perf.csv").exists():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise PerfError(f"perf_analyzer failed (exit {proc.returncode}):\n{tail}")
        shutil.copy(Path(scratch) / "perf.csv", cfg.out_dir / "perf_analyzer.csv")
        (cfg.out_dir / "perf_analyzer.log").write_text(proc.stdout)
    gateway_rows, gateway_note = _gateway_runs(cfg, calls, levels, console)
    run = {"perf_analyzer": {"where": pa.where, "command": command}, "gateway": gateway_note}
    (cfg.out_dir / "perf_gateway.json").write_text(
        json.dumps({**run, "rows": gateway_rows}, indent=2)
    )
    report = write_report(cfg)
    console.print(f"wrote {cfg.out_dir / 'perf.md'} and {cfg.out_dir / 'perf.png'}")
    return report


def write_report(cfg: PerfConfig) -> str:
    """perf.md and perf.png from the run's files in cfg.out_dir (perf_analyzer.csv, perf_gateway.json)."""
    triton_rows = parse_csv(cfg.out_dir / "perf_analyzer.csv", cfg.candidates)
    run = json.loads((cfg.out_dir / "perf_gateway.json").read_text())
    report = _markdown(
        cfg, run["perf_analyzer"]["where"], run["perf_analyzer"]["command"], triton_rows,
        run["rows"], run["gateway"],
    )  # fmt: skip
    (cfg.out_dir / "perf.md").write_text(report)
    _plot(triton_rows, run["rows"], cfg.out_dir / "perf.png")
    return report


def _gateway_runs(
    cfg: PerfConfig, calls: list[RankCall], levels: list[int], console
) -> tuple[list[dict], str]:
    """`seminar load` at each concurrency through cfg.gateway, or through a gateway we start."""
    from seminar.clients.load import LoadConfig, run_load

    def measure(address: str) -> list[dict]:
        rows = []
        for c in levels:
            with console.status(f"seminar load through the gateway, concurrency {c}"):
                load = LoadConfig(
                    duration_s=cfg.measurement_ms / 1000 * 2, concurrency=c, warmup_s=0.5
                )
                result = asyncio.run(run_load(address, calls, load))
            p = result.percentiles_ms()
            rows.append({"concurrency": c, "rps": result.throughput, **p, "codes": result.codes()})
        return rows

    if cfg.gateway is not None:
        return measure(cfg.gateway), f"the running gateway at {cfg.gateway}"
    from seminar.clients.config import Arm, ExperimentConfig, write_config
    from seminar.clients.process import GatewayProcess

    version = _newest_version(cfg.triton, cfg.model)
    config = ExperimentConfig(salt="perf", arms=(Arm("perf", cfg.model, version, 1),))
    with tempfile.TemporaryDirectory(prefix="seminar-perf-gw-") as tmp:
        path = Path(tmp) / "ab.yaml"
        write_config(config, path)
        with GatewayProcess(
            path, cfg.triton, catalog=cfg.data, log_path=Path(tmp) / "gw.log"
        ) as gw:
            rows = measure(gw.address)
    return rows, f"a gateway started for this run (one arm: {cfg.model}:{version})"


def _newest_version(triton: str, model: str) -> int:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        meta = grpcclient.InferenceServerClient(triton).get_model_metadata(model)
    except InferenceServerException as err:
        raise PerfError(f"Triton at {triton} has no model {model!r}: {err.message()}") from err
    return max(int(v) for v in meta.versions)


def _machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, no GPU (cpu target)"


def _markdown(
    cfg: PerfConfig,
    pa_where: str,
    command: list[str],
    triton_rows: list[dict],
    gateway_rows: list[dict],
    gateway_note: str,
) -> str:
    gw = {r["concurrency"]: r for r in gateway_rows}
    lines = [
        "# Serving latency: perf_analyzer on Triton vs `seminar load` through the gateway",
        "",
        f"- Machine: {_machine()}",
        f"- Model: `{cfg.model}` at {cfg.triton}; requests: {cfg.requests} real users of `{cfg.data}` "
        f"with their real test candidate sets, {cfg.candidates} candidates (rows) per request"
        + (
            f"; plus one synthetic long user (id {cfg.synthetic_long_user})"
            if cfg.synthetic_long_user
            else ""
        ),
        f"- Command: `{_invocation(cfg)}`",
        f"- perf_analyzer ({pa_where}):",
        "",
        f"      {shlex.join(command)}",
        "",
        f"- Gateway: {gateway_note}; closed loop, {cfg.measurement_ms * 2 / 1000:g} s per concurrency, "
        "same requests.",
        "- Latencies in ms per request (one user, all candidates); req/s = perf_analyzer "
        "inferences/s / candidates. Ratio = gateway / Triton (the anchor row is Triton).",
        "",
        "| concurrency | Triton req/s | Triton p50 | Triton p90 | Triton p99 | gateway req/s "
        "| gateway p50 | gateway p90 | gateway p99 | p50 ratio | p99 ratio | gateway errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in triton_rows:
        g = gw.get(t["concurrency"])
        if g is None:
            lines.append(
                f"| {t['concurrency']} | {t['rps']:.1f} | {t['p50']:.2f} | {t['p90']:.2f} | {t['p99']:.2f} | - | - | - | - | - | - | - |"
            )
            continue
        errors = ", ".join(f"{k}={v}" for k, v in g["codes"].items() if k != "OK") or "none"
        lines.append(
            f"| {t['concurrency']} | {t['rps']:.1f} | {t['p50']:.2f} | {t['p90']:.2f} | {t['p99']:.2f} "
            f"| {g['rps']:.1f} | {g['p50']:.2f} | {g['p90']:.2f} | {g['p99']:.2f} "
            f"| {g['p50'] / t['p50']:.2f}x | {g['p99'] / t['p99']:.2f}x | {errors} |"
        )
    return "\n".join(lines) + "\n"


def _invocation(cfg: PerfConfig) -> str:
    args = [
        "seminar",
        "perf",
        "--triton",
        cfg.triton,
        "--data",
        str(cfg.data),
        "--model",
        cfg.model,
    ]
    args += ["--concurrency", cfg.concurrency, "--candidates", str(cfg.candidates)]
    args += ["--requests", str(cfg.requests), "--measurement-ms", str(cfg.measurement_ms)]
    if cfg.gateway:
        args += ["--gateway", cfg.gateway]
    if cfg.synthetic_long_user is not None:
        args += ["--synthetic-long-user", str(cfg.synthetic_long_user)]
    return shlex.join(args)


def _plot(triton_rows: list[dict], gateway_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4))
    for rows, label, marker in (
        (triton_rows, "Triton (perf_analyzer)", "o"),
        (gateway_rows, "gateway (seminar load)", "s"),
    ):
        if not rows:
            continue
        c = [r["concurrency"] for r in rows]
        ax_lat.plot(c, [r["p50"] for r in rows], marker=marker, label=f"{label} p50")
        ax_lat.plot(
            c, [r["p99"] for r in rows], marker=marker, linestyle="--", label=f"{label} p99"
        )
        ax_tp.plot([r["rps"] for r in rows], [r["p50"] for r in rows], marker=marker, label=label)
    ax_lat.set(xlabel="concurrency", ylabel="latency (ms)", title="latency vs concurrency")
    ax_tp.set(
        xlabel="throughput (requests/s)", ylabel="p50 latency (ms)", title="latency vs throughput"
    )
    for ax in (ax_lat, ax_tp):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
