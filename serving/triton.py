"""Run the real `tritonserver` bundled in the `nvidia-pytriton` wheel over a model repository.

We use the wheel's binary directly (not PyTriton's Python API): our own `model_repository/`
with ensembles, versions and Python-backend models. What the binary needs
(docs/environment.md):

- a backend directory holding `python/` = `libtriton_python.so`,
  `triton_python_backend_utils.py` and the Python 3.11 stub;
- the wheel's shared libraries on `LD_LIBRARY_PATH`;
- this venv's `bin/` first on `PATH`: the stub runs an isolated interpreter that ignores
  `PYTHONPATH` and finds its site-packages (numpy < 2, torch, onnxruntime, `seminar`) through
  the `python3` it sees on `PATH`.

Usage::

    with TritonServer(TritonConfig(repo=Path("model_repository"))) as server:
        print(server.grpc_url)          # "127.0.0.1:PORT" for tritonclient.grpc
        server.load_model("seminar")    # explicit model control only
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from enum import StrEnum, unique
from pathlib import Path
from typing import ClassVar

from seminar.contract import ADMIN_KEY_HEADER, ENSEMBLE_MODEL, EVENT_LOG_ENV
from seminar.errors import ServiceError
from seminar.processes import LOOPBACK, ChildProcess, free_port, http_request
from seminar.serving import process_group

_STUB_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# Triton parses `--http-restricted-api=<apis>:<header>=<value>`: keep the value to a token.
ADMIN_KEY_RE = re.compile(r"^[A-Za-z0-9._-]{16,256}$")


class TritonError(ServiceError):
    """The server could not be started, became unhealthy, or refused a repository call.

    Its own class because the supervisor retries a start that failed this way and lets any
    other error (a bug) through."""


@unique
class ModelControl(StrEnum):
    """Triton's `--model-control-mode`: `none` loads everything at start and never changes;
    `explicit` loads only what is asked (start-up `--load-model` or the repository API)."""

    NONE = "none"
    EXPLICIT = "explicit"


@dataclass(frozen=True)
class TritonConfig:
    """How to run one tritonserver. Port 0 means "pick a free loopback port"."""

    repo: Path
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    model_control: ModelControl = ModelControl.NONE
    # Explicit mode: models loaded at start-up ("*" = all of them).
    load_models: tuple[str, ...] = ()
    # Models that must be READY before the server counts as started.
    wait_models: tuple[str, ...] = (ENSEMBLE_MODEL,)
    startup_timeout_s: float = 120.0
    log_verbose: int = 0
    # Python-backend shared memory per model instance; grows on demand for big tensors.
    shm_default_bytes: int = 4 * 1024 * 1024
    extra_args: tuple[str, ...] = ()
    log_path: Path | None = None
    # Where Triton's HTTP and metrics endpoints listen. gRPC always stays on loopback: Triton
    # 2.51 crashes when a gRPC client cancels a call, so only the supervisor's proxy
    # (seminar.serving.shield) may face clients.
    http_host: str = LOOPBACK
    metrics_host: str = LOOPBACK
    # With a key, Triton refuses model-repository calls (load, unload, index) that do not
    # carry it in the `seminar-admin-key` header, over HTTP and gRPC alike.
    admin_key: str | None = None
    # A failed model is reported, not fatal, when a supervisor decides what to serve.
    exit_on_error: bool = True
    # Another tritonserver build (NGC's, on the gpu image) and its backends; default: the
    # binary and the Python backend bundled in the nvidia-pytriton wheel.
    binary: Path | None = None
    backend_dir: Path | None = None
    # The online event log pq_retrieval reads users' tails from (sqlite://PATH or
    # redis://HOST:PORT); None = every version serves its stored sequences alone.
    event_log: str | None = None

    def __post_init__(self) -> None:
        if not Path(self.repo).is_dir():
            raise ValueError(f"repo: model repository {self.repo} is not a directory")
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port < 65536:
                raise ValueError(f"{name}: {port} is not a TCP port (0 = pick a free one)")
        if self.startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s: must be > 0, got {self.startup_timeout_s}")
        if self.log_verbose < 0:
            raise ValueError(f"log_verbose: must be >= 0, got {self.log_verbose}")
        if self.load_models and self.model_control is not ModelControl.EXPLICIT:
            raise ValueError("load_models: only meaningful with model_control=explicit")
        if self.admin_key is not None and not ADMIN_KEY_RE.match(self.admin_key):
            raise ValueError(
                "admin_key: must be 16-256 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
            )
        if (self.binary is None) != (self.backend_dir is None):
            raise ValueError("binary and backend_dir: give both or neither")
        object.__setattr__(self, "model_control", ModelControl(self.model_control))
        object.__setattr__(self, "repo", Path(self.repo).resolve())


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the binary, its libraries and the Python backend files."""

    binary: Path
    lib_dir: Path
    python_backend: Path
    stub: Path

    @classmethod
    def find(cls) -> TritonInstall:
        try:
            import pytriton
        except ImportError as e:
            raise TritonError(
                "nvidia-pytriton is not installed (pip install nvidia-pytriton==0.7.0)"
            ) from e
        root = Path(pytriton.__file__).parent / "tritonserver"
        install = cls(
            binary=root / "bin" / "tritonserver",
            lib_dir=root.parent.parent / "nvidia_pytriton.libs",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / _STUB_PYTHON / "triton_python_backend_stub",
        )
        for name in ("binary", "lib_dir", "python_backend", "stub"):
            if not getattr(install, name).exists():
                raise TritonError(
                    f"nvidia-pytriton is incomplete: {getattr(install, name)} is missing"
                )
        return install


def backend_directory(install: TritonInstall, cache_dir: Path | None = None) -> Path:
    """The `--backend-directory` for `install`: `<dir>/python/` with the backend and the stub.

    Built once per wheel location under the user cache (atomic rename, so concurrent test
    sessions on one machine never see a half-copied folder).
    """
    cache = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "seminar"
    key = hashlib.sha256(f"{install.binary.resolve()}:{_STUB_PYTHON}".encode()).hexdigest()[:16]
    target = cache / f"triton-backends-{key}"
    files = [
        install.python_backend / "libtriton_python.so",
        install.python_backend / "triton_python_backend_utils.py",
        install.stub,
    ]
    if all((target / "python" / f.name).exists() for f in files):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="backends-", dir=cache))
    (staging / "python").mkdir()
    for f in files:
        shutil.copy2(f, staging / "python" / f.name)
    try:
        staging.rename(target)
    except OSError:
        # Another process won the race; its copy is identical.
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _connect_host(bind_host: str) -> str:
    """Where a local client reaches a server bound to `bind_host` (0.0.0.0 = every address)."""
    return LOOPBACK if bind_host in ("0.0.0.0", "", "::") else bind_host


def _with_parent_death_signal(cmd: list[str]) -> list[str]:
    """`cmd` run so that it gets SIGTERM when the process that started it dies.

    A supervisor killed with SIGKILL must not leave a tritonserver (and its stubs) behind.
    setpriv (util-linux) sets the signal in the child without a Python preexec_fn, which is
    unsafe in a threaded parent. The kernel ties the signal to the starting *thread*: start
    the server from a thread that lives as long as the process (the main thread).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


def _check_port_free(port: int, what: str, host: str = LOOPBACK) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like tritonserver itself: a port left in TIME_WAIT by a stopped server is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise TritonError(f"{what} {host}:{port} is already in use ({e.strerror})") from e


class TritonServer(ChildProcess):
    """A tritonserver child process; a context manager that always stops it on exit.

    Stopping also removes what the server leaves behind: stubs still in its process group and
    the shared memory it had mapped (seminar.serving.process_group)."""

    name: ClassVar[str] = "tritonserver"
    start_error: ClassVar[type[Exception]] = TritonError
    poll_s: ClassVar[float] = 0.1
    # Own process group: Ctrl-C in a terminal reaches us, and we decide how to stop it; the
    # stubs inherit the group, so it can be killed as one after a crash.
    new_session: ClassVar[bool] = True

    def __init__(self, config: TritonConfig) -> None:
        super().__init__(
            config.log_path, startup_timeout_s=config.startup_timeout_s, stop_timeout_s=30.0
        )
        self.config = config
        self.grpc_port = self.http_port = self.metrics_port = 0
        self._install: TritonInstall | None = None
        self._shm_regions: set[str] = set()

    # ---- addresses -------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        """`host:port` for `tritonclient.grpc.InferenceServerClient(url=...)`."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """`host:port` for `tritonclient.http` (and `http://{http_url}/v2/...`)."""
        return f"{_connect_host(self.config.http_host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus text endpoint."""
        return f"http://{_connect_host(self.config.metrics_host)}:{self.metrics_port}/metrics"

    @property
    def repo(self) -> Path:
        return self.config.repo

    # ---- lifecycle -------------------------------------------------------------------------
    def launch(self) -> None:
        """Pick the ports, then start the process without waiting for it (see `start`)."""
        cfg = self.config
        ports = {}
        hosts = {
            "grpc_port": LOOPBACK,
            "http_port": cfg.http_host,
            "metrics_port": cfg.metrics_host,
        }
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(cfg, name)
            if port:
                _check_port_free(port, name.replace("_", " "), hosts[name])
            ports[name] = port or free_port()
        if len(set(ports.values())) != 3:
            raise TritonError(f"grpc, http and metrics ports must differ, got {ports}")
        self.grpc_port, self.http_port, self.metrics_port = (
            ports["grpc_port"],
            ports["http_port"],
            ports["metrics_port"],
        )
        self._install = self.install()
        super().launch()

    def install(self) -> TritonInstall:
        cfg = self.config
        if cfg.binary is None or cfg.backend_dir is None:
            return TritonInstall.find()
        for path in (cfg.binary, cfg.backend_dir):
            if not Path(path).exists():
                raise TritonError(f"{path} does not exist")
        return TritonInstall(
            binary=Path(cfg.binary),
            lib_dir=Path(cfg.binary).parent,
            python_backend=Path(cfg.backend_dir) / "python",
            stub=Path(cfg.backend_dir) / "python" / "triton_python_backend_stub",
        )

    def command(self) -> list[str]:
        cfg, install = self.config, self._install or self.install()
        backends = cfg.backend_dir if cfg.backend_dir is not None else backend_directory(install)
        cmd = [
            str(install.binary),
            f"--model-repository={cfg.repo}",
            f"--backend-directory={backends}",
            f"--model-control-mode={cfg.model_control.value}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={cfg.http_host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={cfg.metrics_host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-cpu-metrics=true",
            f"--log-verbose={cfg.log_verbose}",
            f"--backend-config=python,shm-default-byte-size={cfg.shm_default_bytes}",
            # Without a supervisor, a model that fails to load is a failed start, not a
            # half-working server; a supervisor loads version by version and reports failures.
            f"--exit-on-error={'true' if cfg.exit_on_error else 'false'}",
            "--strict-readiness=true",
        ]
        if cfg.admin_key is not None:
            restriction = f"model-repository:{ADMIN_KEY_HEADER}={cfg.admin_key}"
            cmd += [
                f"--http-restricted-api={restriction}",
                f"--grpc-restricted-protocol={restriction}",
            ]
        cmd += [f"--load-model={m}" for m in cfg.load_models]
        cmd += list(cfg.extra_args)
        return _with_parent_death_signal(cmd)

    def environment(self) -> dict[str, str]:
        install = self._install or self.install()
        env = dict(os.environ)
        venv_bin = str(Path(sys.prefix) / "bin")
        env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(install.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p
        )
        # The stub ignores PYTHONPATH anyway; drop it so the log is not misleading.
        env.pop("PYTHONPATH", None)
        # One model instance per core is our parallelism; keep each instance single-threaded
        # unless the config says otherwise (2-core machines, several instances).
        env.setdefault("OMP_NUM_THREADS", "1")
        # The model processes inherit it; only this setting decides, not the caller's env.
        env.pop(EVENT_LOG_ENV, None)
        if self.config.event_log:
            env[EVENT_LOG_ENV] = self.config.event_log
        return env

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL after `timeout_s`; then
        whatever the server left behind: stubs still in its process group, shared memory."""
        pid = self.pid
        if pid is not None:
            self.remember_shm_regions(pid)
        code = super().stop(timeout_s)
        if pid is not None:
            self.cleanup(pid)
        return code

    def remember_shm_regions(self, pid: int | None = None) -> None:
        """Note the shared-memory regions the server has mapped, to unlink them if it dies."""
        pid = pid if pid is not None else self.pid
        if pid is not None:
            self._shm_regions |= process_group.mapped_shm_regions(pid)

    def cleanup(self, pgid: int) -> tuple[list[int], list[str]]:
        """After the server exited: SIGKILL what is left of its process group (stubs that
        ignore SIGTERM), unlink the shared memory it had mapped; (pids killed, regions)."""
        killed = process_group.kill_group(pgid)
        removed = process_group.unlink_regions(self._shm_regions)
        self._shm_regions = set()
        return killed, removed

    def reap(self) -> int | None:
        """The exit code if the server has exited (and its leftovers cleaned), else None."""
        if self._proc is None:
            return None
        code = self._proc.poll()
        if code is None:
            return None
        proc, self._proc = self._proc, None
        self.cleanup(proc.pid)
        return code

    def wait(self) -> int:
        """Block until the process exits; its return code."""
        if self._proc is None:
            raise TritonError("server not started")
        return self._proc.wait()

    # ---- health ------------------------------------------------------------------------------
    def _http(
        self, method: str, path: str, body: dict | None = None, timeout: float = 5.0
    ) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {ADMIN_KEY_HEADER: self.config.admin_key} if self.config.admin_key else {}
        return http_request(f"http://{self.http_url}{path}", method, data, headers, timeout)

    def is_ready(self) -> bool:
        return self._http("GET", "/v2/health/ready")[0] == 200

    def model_ready(self, name: str, version: int | str | None = None) -> bool:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "")
        return self._http("GET", path + "/ready")[0] == 200

    def wait_ready(
        self, models: tuple[str, ...] | None = None, timeout_s: float | None = None
    ) -> float:
        """Wait for the HTTP endpoint and every model in `models` (default: the config's
        `wait_models`); fail fast if the process dies. The seconds waited."""
        pending = ["<server>", *(self.config.wait_models if models is None else models)]

        def ready(name: str) -> bool:
            if name == "<server>":
                return self._http("GET", "/v2/health/live")[0] == 200
            return self.model_ready(name)

        def all_ready() -> bool:
            while pending and ready(pending[0]):
                pending.pop(0)
            return not pending

        timeout_s = self.config.startup_timeout_s if timeout_s is None else timeout_s
        return self.wait_until(all_ready, timeout_s, lambda: f"ready (waiting for {pending[0]})")

    # ---- repository API (explicit model control) ----------------------------------------------
    def load_model(
        self, name: str, timeout_s: float = 120.0, config_json: str | None = None
    ) -> None:
        """Load (or reload, picking up new versions on disk) `name`; blocks until done.

        `config_json` replaces the model's config.pbtxt for this load (Triton's JSON form of
        ModelConfig); a changed config makes Triton reload every version of the model.
        """
        self.check_alive()
        body = {"parameters": {"config": config_json}} if config_json is not None else None
        code, text = self._http(
            "POST", f"/v2/repository/models/{name}/load", body=body, timeout=timeout_s
        )
        if code != 200:
            raise TritonError(f"loading model {name} failed (HTTP {code}): {text}")

    def unload_model(self, name: str, timeout_s: float = 60.0) -> None:
        self.check_alive()
        code, text = self._http("POST", f"/v2/repository/models/{name}/unload", timeout=timeout_s)
        if code != 200:
            raise TritonError(f"unloading model {name} failed (HTTP {code}): {text}")

    def repository_index(self) -> list[dict]:
        """Every model in the repository with its versions and state."""
        code, text = self._http("POST", "/v2/repository/index", body={})
        if code != 200:
            raise TritonError(f"repository index failed (HTTP {code}): {text}")
        return json.loads(text)

    def statistics(self, name: str = "") -> dict:
        """Triton's per-model statistics (queue / compute times, counts)."""
        path = f"/v2/models/{name}/stats" if name else "/v2/models/stats"
        code, text = self._http("GET", path)
        if code != 200:
            raise TritonError(f"statistics for {name or 'all models'} failed (HTTP {code}): {text}")
        return json.loads(text)

    def metrics(self) -> str:
        """The raw Prometheus text of `/metrics`."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return resp.read().decode()
