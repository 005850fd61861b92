"""`seminar serve`: tritonserver under a supervisor that keeps the service up.

What tritonserver 2.51 does on its own, and what the supervisor does about it:

| on its own | under the supervisor |
|---|---|
| a gRPC client that cancels a call can crash the server | clients reach Triton through a proxy that never cancels inside it (seminar.serving.shield) |
| a Python model process stopped for ~1 s aborts the server when it resumes | stopped model processes are resumed within a tick (100 ms) |
| a dead model process fails every request of its model, and readiness still says READY | the model is reloaded at once; readiness says no until it is back |
| when the server dies, its model processes and shared memory stay behind and nothing restarts it | the process group is killed, the shared memory unlinked, the server restarted with backoff |
| one version that fails to load unloads every version of that model (or stops the server) | versions are loaded model by model and a failing version is left out, named with its file; `seminar` falls back to the newest version that loads |
| the model-repository API lets anyone load code | it is locked with an admin key only the supervisor (or the holder of --admin-key-file) has |

Layout of one supervisor process: the main thread runs the asyncio loop (the proxy, the
monitor) and starts tritonserver itself, so that tritonserver's parent-death signal stays
tied to a thread that lives as long as the process; blocking calls to Triton's repository
API run in worker threads; /live, /ready, /status and /metrics are served by a small HTTP
server thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum, unique
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from seminar.contract import (
    CONFIG_FILE,
    DEFAULT_GRPC_PORT,
    DEFAULT_HEALTH_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    ENSEMBLE_MODEL,
)
from seminar.errors import ServiceError, UsageError
from seminar.processes import LOOPBACK, free_port
from seminar.serving.process_group import Stub, StubWatch
from seminar.serving.shield import InferenceShield, ShieldConfig
from seminar.serving.triton import (
    ADMIN_KEY_RE,
    ModelControl,
    TritonConfig,
    TritonError,
    TritonServer,
)

log = logging.getLogger("seminar.serve")

# Added to a model's config to make Triton reload it in place (new model processes) even though
# nothing on disk changed; the backends ignore parameters they do not read.
RESTART_PARAMETER = "seminar_restart"


@unique
class ServeState(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    SERVING = "serving"
    RESTARTING = "restarting"
    STOPPING = "stopping"


@dataclass(frozen=True)
class ServeConfig:
    """Everything `seminar serve` needs; defaults here only."""

    repo: Path
    host: str = LOOPBACK  # bind address of the public ports (0.0.0.0 in a container)
    grpc_port: int = DEFAULT_GRPC_PORT  # the proxy; 0 = a free port
    http_port: int = DEFAULT_HTTP_PORT  # Triton's HTTP
    metrics_port: int = DEFAULT_METRICS_PORT  # Triton's /metrics
    health_port: int = DEFAULT_HEALTH_PORT  # the supervisor's /live /ready /status /metrics
    admin_key_file: Path | None = None
    tritonserver: Path | None = None
    backend_directory: Path | None = None
    shm_default_bytes: int = 4 * 1024 * 1024
    log_verbose: int = 0
    log_path: Path | None = None
    startup_timeout_s: float = 180.0  # tritonserver live + every model loaded
    wait_models: tuple[str, ...] = ()  # must be served, else the start fails
    monitor_interval_s: float = 0.1
    resume_stopped: bool = True
    restart_backoff_s: float = 1.0  # doubles per crash in a row ...
    restart_backoff_max_s: float = 30.0  # ... up to this
    healthy_reset_s: float = 60.0  # serving this long resets the backoff
    shield: ShieldConfig = field(default_factory=ShieldConfig)
    event_log: str | None = None  # users' online tails for pq_retrieval (TritonConfig.event_log)

    def __post_init__(self) -> None:
        if not Path(self.repo).is_dir():
            raise ValueError(f"repo: model repository {self.repo} is not a directory")
        for name in ("grpc_port", "http_port", "metrics_port", "health_port"):
            port = getattr(self, name)
            if not 0 <= port < 65536:
                raise ValueError(f"{name}: {port} is not a TCP port (0 = pick a free one)")
        fixed = [
            p for p in (self.grpc_port, self.http_port, self.metrics_port, self.health_port) if p
        ]
        if len(fixed) != len(set(fixed)):
            raise ValueError("grpc_port, http_port, metrics_port and health_port must differ")
        for name in ("startup_timeout_s", "monitor_interval_s", "restart_backoff_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.restart_backoff_max_s < self.restart_backoff_s:
            raise ValueError("restart_backoff_max_s: must be >= restart_backoff_s")
        if (self.tritonserver is None) != (self.backend_directory is None):
            raise ValueError("tritonserver and backend_directory: give both or neither")
        object.__setattr__(self, "repo", Path(self.repo).resolve())


def read_admin_key(path: Path | None) -> str:
    """The key that unlocks Triton's model-repository API.

    Without a file: a random key that only this process knows. With a file that does not exist
    yet: a random key written there (mode 0600). Raises ValueError naming the file.
    """
    if path is None:
        return secrets.token_urlsafe(32)
    path = Path(path)
    if not path.exists():
        key = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        return key
    try:
        key = path.read_text().strip()
    except OSError as err:
        raise UsageError(f"admin key file {path}: cannot read it ({err.strerror})") from err
    if not ADMIN_KEY_RE.match(key):
        raise UsageError(
            f"admin key file {path}: the key must be 16-256 characters of A-Z, a-z, 0-9, "
            "'.', '_' or '-' on one line"
        )
    return key


# ---- what the repository holds and what Triton made of it ------------------------------------


def _parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _config_json(config) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def disk_versions(model_dir: Path, config) -> list[str]:
    """The versions Triton would load from disk under the model's version policy."""
    numbers = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "specific":
        numbers = [n for n in numbers if n in set(config.version_policy.specific.versions)]
    elif policy == "latest" or policy is None:
        keep = config.version_policy.latest.num_versions or 1
        numbers = numbers[-keep:]
    return [str(n) for n in numbers]


def _short_reason(reason: str, repo: Path) -> str:
    """Triton's load error without its stack trace, with repository paths made relative."""
    text = reason.split("\n\nAt:", 1)[0].strip()
    for prefix in ("Internal: ", "ArtifactError: ", "RuntimeError: "):
        text = text.removeprefix(prefix)
    return text.replace(f"{repo}/", "")


@dataclass
class RepositoryState:
    """What the supervisor asked Triton to serve, and what it could not."""

    served: dict[str, list[str]] = field(default_factory=dict)  # model -> versions READY
    failed: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> version -> reason
    configs: dict[str, str | None] = field(default_factory=dict)  # model -> config override
    skipped: dict[str, str] = field(default_factory=dict)  # ensemble -> why it is not served
    fallback: str = ""  # set when `seminar` serves an older version than it is pinned to

    def to_json(self) -> dict:
        return {
            "served": self.served,
            "failed": self.failed,
            "skipped": self.skipped,
            "fallback": self.fallback,
        }


class RepositoryLoader:
    """Loads a repository into an explicit-mode Triton one model at a time.

    Triton loads all versions of a model together and unloads them all when one fails; here a
    failing version is left out (the model is loaded again with a config listing only the
    versions that load), the others serve, and every failure keeps the reason Triton gave,
    which names the file. Ensembles are loaded only when every step they pin is served; the
    contract ensemble `seminar` instead falls back to the newest version that is complete.
    """

    def __init__(self, server: TritonServer, repo: Path) -> None:
        self.server = server
        self.repo = repo

    def models(self) -> dict[str, object]:
        out = {}
        for config_path in sorted(self.repo.glob(f"*/{CONFIG_FILE}")):
            try:
                out[config_path.parent.name] = _parse_config(config_path)
            except Exception as err:  # a broken config is one failed model, not a dead server
                out[config_path.parent.name] = err
        return out

    def load(self) -> RepositoryState:
        state = RepositoryState()
        models = self.models()
        plain = {
            n: c for n, c in models.items() if isinstance(c, Exception) or c.platform != "ensemble"
        }
        ensembles = {n: c for n, c in models.items() if n not in plain}
        # Triton loads models in parallel threads; a few requests in flight let it.
        with ThreadPoolExecutor(max_workers=4) as pool:
            for name, outcome in zip(
                plain, pool.map(self._load_isolating, plain.items()), strict=True
            ):
                served, failed, config_json = outcome
                if served:
                    state.served[name] = served
                    state.configs[name] = config_json
                if failed:
                    state.failed[name] = failed
        for name, config in sorted(ensembles.items()):
            self._load_ensemble(name, config, state)
        return state

    def _load_isolating(
        self, item: tuple[str, object]
    ) -> tuple[list[str], dict[str, str], str | None]:
        """(versions served, {version: reason} failed, the config override used)."""
        name, config = item
        if isinstance(config, Exception):
            return [], {"*": f"{name}/{CONFIG_FILE}: {config}"}, None
        wanted = disk_versions(self.repo / name, config)
        if not wanted:
            return [], {"*": f"{name}: no version folder to load"}, None
        failed: dict[str, str] = {}
        while True:
            keep = [v for v in wanted if v not in failed]
            if not keep:
                return [], failed, None
            config_json = None if not failed else _config_json(_with_versions(config, keep))
            try:
                self.server.load_model(name, config_json=config_json)
                return keep, failed, config_json
            except TritonError as err:
                new = self._failed_versions(name, keep)
                if not new:  # not a version's fault (the config itself): every version fails
                    reason = _short_reason(str(err).split(": ", 1)[-1], self.repo)
                    return [], {**failed, **dict.fromkeys(keep, reason)}, None
                failed.update(new)

    def _failed_versions(self, name: str, tried: list[str]) -> dict[str, str]:
        out = {}
        for entry in self.server.repository_index():
            reason = entry.get("reason", "")
            if (
                entry.get("name") == name
                and entry.get("version") in tried
                and entry.get("state") == "UNAVAILABLE"
                and reason not in ("", "unloaded")
            ):
                out[entry["version"]] = _short_reason(reason, self.repo)
        return out

    def _load_ensemble(self, name: str, config, state: RepositoryState) -> None:
        steps = [(s.model_name, str(s.model_version)) for s in config.ensemble_scheduling.step]
        missing = [
            (model, version)
            for model, version in steps
            if model not in state.served or (version != "-1" and version not in state.served[model])
        ]
        config_json = None
        if missing:
            model, version = missing[0]
            why = state.failed.get(model, {}).get(version) or state.failed.get(model, {}).get("*")
            reason = f"needs {model} version {version}" + (f", which failed: {why}" if why else "")
            fallback = (
                self._fallback_version(name, config, state) if name == ENSEMBLE_MODEL else None
            )
            if fallback is None:
                state.skipped[name] = reason
                log.error("not serving %s: %s", name, reason)
                return
            config_json = _config_json(_pinned(config, fallback))
            state.fallback = (
                f"{name} is pinned to version {steps[0][1]}, which is not served ({reason}); "
                f"serving version {fallback} instead"
            )
            log.error("%s", state.fallback)
        try:
            self.server.load_model(name, config_json=config_json)
        except TritonError as err:
            state.skipped[name] = _short_reason(str(err).split(": ", 1)[-1], self.repo)
            log.error("not serving %s: %s", name, state.skipped[name])
            return
        state.served[name] = (
            disk_versions(self.repo / name, config) if config_json is None else [str(fallback)]
        )
        state.configs[name] = config_json

    def _fallback_version(self, name: str, config, state: RepositoryState) -> int | None:
        """The newest version N that every step of `name` serves and `name` has a folder for."""
        own = {int(p.name) for p in (self.repo / name).iterdir() if p.is_dir() and p.name.isdigit()}
        steps = {s.model_name for s in config.ensemble_scheduling.step}
        candidates = [
            n for n in own if all(str(n) in state.served.get(model, []) for model in steps)
        ]
        return max(candidates) if candidates else None


def _with_versions(config, versions: list[str]):
    out = type(config)()
    out.CopyFrom(config)
    out.version_policy.Clear()
    out.version_policy.specific.versions.extend(int(v) for v in versions)
    return out


def _pinned(config, version: int):
    out = _with_versions(config, [str(version)])
    for step in out.ensemble_scheduling.step:
        step.model_version = version
    return out


def _with_restart_marker(config_json: str | None, config, count: int) -> str:
    """The config to load again so Triton starts new model processes in place."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    base = (
        json_format.Parse(config_json, model_config_pb2.ModelConfig())
        if config_json is not None
        else config
    )
    out = model_config_pb2.ModelConfig()
    out.CopyFrom(base)
    out.parameters[RESTART_PARAMETER].string_value = str(count)
    return _config_json(out)


# ---- the supervisor ----------------------------------------------------------------------------


class SupervisorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.triton_up = Gauge(
            "seminar_serve_triton_up", "1 while tritonserver runs and serves.", registry=registry
        )
        self.restarts = Counter(
            "seminar_serve_triton_restarts",
            "tritonserver restarts after it died, by exit code.",
            ["exit_code"],
            registry=registry,
        )
        self.resumed = Counter(
            "seminar_serve_model_process_resumed",
            "Stopped Python-backend model processes resumed (SIGCONT).",
            ["model"],
            registry=registry,
        )
        self.died = Counter(
            "seminar_serve_model_process_died",
            "Python-backend model processes found dead.",
            ["model"],
            registry=registry,
        )
        self.reloads = Counter(
            "seminar_serve_model_reloads",
            "Models reloaded after a model process died, by result.",
            ["model", "result"],
            registry=registry,
        )
        self.version_failed = Gauge(
            "seminar_serve_version_failed",
            "1 for each (model, version) in the repository that failed to load.",
            ["model", "version"],
            registry=registry,
        )
        self.ready = Gauge("seminar_serve_ready", "1 when /ready answers 200.", registry=registry)


class Supervisor:
    """Runs tritonserver over a repository and keeps the service up (see the module doc)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.admin_key = read_admin_key(config.admin_key_file)
        self.registry = CollectorRegistry()
        self.metrics = SupervisorMetrics(self.registry)
        self.state = ServeState.STARTING
        self.repository = RepositoryState()
        self.unhealthy: dict[str, str] = {}  # model -> why (a dead process, being reloaded)
        self.restarts = 0
        self.server: TritonServer | None = None
        self.triton_grpc_port = 0
        self.grpc_port = config.grpc_port
        self.health_port = config.health_port
        self.ready_event = asyncio.Event()
        self._lock = threading.Lock()  # guards what the HTTP thread reads
        self._stop = asyncio.Event()
        self._health_http: ThreadingHTTPServer | None = None
        self._reload_count = 0

    # ---- readiness, as the proxy and /ready see it -------------------------------------------

    def model_health(self, name: str, version: str) -> bool | None:
        with self._lock:
            if self.state is not ServeState.SERVING:
                return False
            if name in self.unhealthy:
                return False
            if name in self.repository.served and self._depends_on_unhealthy(name):
                return False
        return None

    def unavailable(self, name: str, version: str) -> str | None:
        """Why an inference on `name` cannot be served now, or None."""
        with self._lock:
            if self.state is not ServeState.SERVING:
                return f"tritonserver is {self.state.value}; retry shortly"
            if name in self.unhealthy:
                return f"{name}: {self.unhealthy[name]}"
            if name in self.repository.served and self._depends_on_unhealthy(name):
                reasons = "; ".join(f"{m}: {why}" for m, why in self.unhealthy.items())
                return f"{name} is being repaired ({reasons})"
        return None

    def _depends_on_unhealthy(self, name: str) -> bool:
        # Ensembles are served only when their steps are; their names are not in `configs`
        # of plain models, so read the steps from disk once per question (cheap, tiny file).
        path = self.config.repo / name / CONFIG_FILE
        if not self.unhealthy or not path.is_file():
            return False
        try:
            config = _parse_config(path)
        except Exception:
            return False
        return any(step.model_name in self.unhealthy for step in config.ensemble_scheduling.step)

    def is_ready(self) -> bool:
        with self._lock:
            return (
                self.state is ServeState.SERVING
                and not self.unhealthy
                and bool(self.repository.served)
            )

    def status(self) -> dict:
        with self._lock:
            return {
                "state": self.state.value,
                "ready": self.state is ServeState.SERVING
                and not self.unhealthy
                and bool(self.repository.served),
                "tritonserver_pid": self.server.pid if self.server else None,
                "restarts": self.restarts,
                "unhealthy": dict(self.unhealthy),
                **self.repository.to_json(),
            }

    def _set_state(self, state: ServeState) -> None:
        with self._lock:
            self.state = state
        self.metrics.triton_up.set(1 if state is ServeState.SERVING else 0)
        self.metrics.ready.set(1 if self.is_ready() else 0)

    # ---- lifecycle ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[Supervisor], None] | None = None) -> None:
        """Serve until request_stop(); raises ServiceError when the first start fails."""
        self._start_health_http()
        self.triton_grpc_port = free_port()
        shield = InferenceShield(
            f"{LOOPBACK}:{self.triton_grpc_port}",
            self.config.shield,
            self.registry,
            server_ready=self.is_ready,
            model_health=self.model_health,
            unavailable=self.unavailable,
        )
        self.grpc_port = await shield.start(self.config.host, self.config.grpc_port)
        consecutive_crashes = 0
        first = True
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    await self._start_triton()
                except ServiceError as err:  # TritonError included
                    if first:
                        raise ServiceError(str(err)) from None
                    log.error("tritonserver could not start again: %s", err)
                else:
                    if first:
                        first = False
                        self.ready_event.set()
                        if on_ready is not None:
                            on_ready(self)
                    code = await self._monitor()
                    if code is None:  # stop requested
                        break
                    self._record_crash(code)
                if first:
                    raise ServiceError("tritonserver died while loading the repository")
                consecutive_crashes = (
                    1
                    if time.monotonic() - started > self.config.healthy_reset_s
                    else consecutive_crashes + 1
                )
                backoff = min(
                    self.config.restart_backoff_s * 2 ** (consecutive_crashes - 1),
                    self.config.restart_backoff_max_s,
                )
                self._set_state(ServeState.RESTARTING)
                log.error("restarting tritonserver in %.1f s (restart %d)", backoff, self.restarts)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=backoff)
        finally:
            self._set_state(ServeState.STOPPING)
            await shield.stop()
            if self.server is not None:
                await asyncio.to_thread(self.server.stop)
            self._stop_health_http()

    async def _start_triton(self) -> None:
        cfg = self.config
        self._set_state(ServeState.STARTING)
        self.server = TritonServer(
            TritonConfig(
                repo=cfg.repo,
                grpc_port=self.triton_grpc_port,
                http_port=cfg.http_port,
                metrics_port=cfg.metrics_port,
                model_control=ModelControl.EXPLICIT,
                wait_models=(),
                startup_timeout_s=cfg.startup_timeout_s,
                log_verbose=cfg.log_verbose,
                shm_default_bytes=cfg.shm_default_bytes,
                log_path=cfg.log_path,
                http_host=cfg.host,
                metrics_host=cfg.host,
                admin_key=self.admin_key,
                exit_on_error=False,
                binary=cfg.tritonserver,
                backend_dir=cfg.backend_directory,
                event_log=cfg.event_log,
            )
        )
        # Launched here, in the main thread: see _with_parent_death_signal in triton.py.
        self.server.launch()
        try:
            await asyncio.to_thread(self.server.wait_ready, (), cfg.startup_timeout_s)
        except TritonError:
            await asyncio.to_thread(self.server.stop)
            raise
        log.info(
            "tritonserver started (pid %d, log %s); loading %s",
            self.server.pid, self.server.log_path, cfg.repo,
        )  # fmt: skip
        self._set_state(ServeState.LOADING)
        loader = RepositoryLoader(self.server, cfg.repo)
        loading = asyncio.ensure_future(asyncio.to_thread(loader.load))
        # Stubs started while loading are as fragile as later ones: a stub stopped here would
        # corrupt the shared memory of the requests that follow.
        watch = StubWatch(self.server.pid or 0, rescan_every=1)
        while not loading.done():
            await asyncio.sleep(self.config.monitor_interval_s)
            for stub in watch.stubs():
                if stub.stopped:
                    self._resume(stub)
            if self.server.reap() is not None:
                raise ServiceError(
                    f"tritonserver died while loading the repository; log {self.server.log_path}:\n"
                    f"{self.server.log_tail()}"
                )
        state = loading.result()
        with self._lock:
            self.repository = state
            self.unhealthy = {}
        self.metrics.version_failed.clear()
        for model, versions in state.failed.items():
            for version, reason in versions.items():
                self.metrics.version_failed.labels(model, version).set(1)
                log.error("not serving %s version %s: %s", model, version, reason)
        if not state.served:
            raise ServiceError(
                f"no model of {cfg.repo} could be loaded: {json.dumps(state.failed)}"
            )
        missing = [m for m in cfg.wait_models if m not in state.served]
        if missing:
            why = {
                m: state.skipped.get(m) or state.failed.get(m) or "not in the repository"
                for m in missing
            }
            raise ServiceError(f"required model(s) not served: {json.dumps(why)}")
        self.server.remember_shm_regions()
        self._set_state(ServeState.SERVING)
        log.info("serving: %s", ", ".join(f"{m} {v}" for m, v in sorted(state.served.items())))

    def _record_crash(self, code: int) -> None:
        self.restarts += 1
        self.metrics.restarts.labels(str(code)).inc()
        assert self.server is not None
        how = f"signal {-code}" if code < 0 else f"code {code}"
        log.error(
            "tritonserver died (%s); its process group was killed and its shared memory "
            "removed; log %s:\n%s",
            how, self.server.log_path, self.server.log_tail(20),
        )  # fmt: skip

    async def _monitor(self) -> int | None:
        """Watch tritonserver and its model processes until it dies (its exit code) or a stop
        is requested (None)."""
        assert self.server is not None
        watch = StubWatch(self.server.pid or 0, rescan_every=10)
        handled_dead: set[int] = set()
        reloads: asyncio.Queue[str] = asyncio.Queue()
        reloader = asyncio.ensure_future(self._reload_worker(reloads))
        tick = 0
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(
                        self._stop.wait(), timeout=self.config.monitor_interval_s
                    )
                    return None
                except TimeoutError:
                    pass
                code = self.server.reap()
                if code is not None:
                    return code
                for stub in watch.stubs():
                    if stub.stopped:
                        self._resume(stub)
                    elif stub.dead and stub.pid not in handled_dead:
                        handled_dead.add(stub.pid)
                        self.metrics.died.labels(stub.model).inc()
                        with self._lock:
                            self.unhealthy[stub.model] = (
                                f"model process {stub.pid} of version {stub.version} died; reloading"
                            )
                        self.metrics.ready.set(0)
                        log.error(
                            "model process %d (%s version %s) died; reloading %s",
                            stub.pid, stub.model, stub.version, stub.model,
                        )  # fmt: skip
                        reloads.put_nowait(stub.model)
                tick += 1
                if tick % 10 == 0:
                    self.server.remember_shm_regions()
            return None
        finally:
            reloader.cancel()

    def _resume(self, stub: Stub) -> None:
        if not self.config.resume_stopped:
            return
        os.kill(stub.pid, signal.SIGCONT)
        self.metrics.resumed.labels(stub.model).inc()
        log.warning(
            "resumed stopped model process %d (%s version %s)", stub.pid, stub.model, stub.version
        )

    async def _reload_worker(self, queue: asyncio.Queue[str]) -> None:
        while True:
            model = await queue.get()
            if model not in self.unhealthy:
                continue  # already reloaded for an earlier death
            ok = await asyncio.to_thread(self._reload_model, model)
            self.metrics.reloads.labels(model, "ok" if ok else "failed").inc()
            with self._lock:
                if ok:
                    self.unhealthy.pop(model, None)
                else:
                    self.unhealthy[model] = f"reload of {model} failed; see the log"
            self.metrics.ready.set(1 if self.is_ready() else 0)

    def _reload_model(self, model: str) -> bool:
        """Load `model` again in place (new model processes), then every ensemble that Triton
        unloaded with it; True when all of them are READY again."""
        assert self.server is not None
        self._reload_count += 1
        started = time.monotonic()
        config = _parse_config(self.config.repo / model / CONFIG_FILE)
        config_json = _with_restart_marker(
            self.repository.configs.get(model), config, self._reload_count
        )
        try:
            self.server.load_model(model, config_json=config_json)
            for name, versions in self.repository.served.items():
                if name != model and not all(self.server.model_ready(name, v) for v in versions):
                    self.server.load_model(name, config_json=self.repository.configs.get(name))
        except TritonError as err:
            log.error("reloading %s failed: %s", model, err)
            return False
        log.warning("reloaded %s in %.1f s", model, time.monotonic() - started)
        return True

    # ---- the health endpoint -----------------------------------------------------------------

    def _start_health_http(self) -> None:
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/live":
                    self._send(200, b"live\n", "text/plain")
                elif path == "/ready":
                    ready = supervisor.is_ready()
                    body = json.dumps(supervisor.status(), indent=1).encode()
                    self._send(200 if ready else 503, body, "application/json")
                elif path == "/status":
                    self._send(
                        200, json.dumps(supervisor.status(), indent=1).encode(), "application/json"
                    )
                elif path == "/metrics":
                    self._send(
                        200, generate_latest(supervisor.registry), "text/plain; version=0.0.4"
                    )
                else:
                    self._send(404, b"not found: /live /ready /status /metrics\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would flood the console

        try:
            self._health_http = ThreadingHTTPServer(
                (self.config.host, self.config.health_port), Handler
            )
        except OSError as err:
            raise ServiceError(
                f"cannot bind the health port {self.config.host}:{self.config.health_port} ({err.strerror})"
            ) from err
        self._health_http.daemon_threads = True
        self.health_port = self._health_http.server_address[1]
        threading.Thread(
            target=self._health_http.serve_forever, name="health-http", daemon=True
        ).start()

    def _stop_health_http(self) -> None:
        if self._health_http is not None:
            self._health_http.shutdown()
            self._health_http.server_close()
            self._health_http = None


def serve_forever(
    config: ServeConfig, on_ready: Callable[[Supervisor], None] | None = None
) -> None:
    """Run a Supervisor in this (main) thread until SIGINT or SIGTERM; raises ServiceError."""

    async def main() -> None:
        supervisor = Supervisor(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, supervisor.request_stop)
        await supervisor.run(on_ready)

    asyncio.run(main())


def with_ports(config: ServeConfig, **ports: int) -> ServeConfig:
    """A copy of `config` with other ports (tests pick free ones)."""
    return replace(config, **ports)
