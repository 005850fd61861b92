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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from enum import StrEnum, unique
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from seminar.constants import ENSEMBLE_MODEL

LOOPBACK = "127.0.0.1"
_STUB_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonError(RuntimeError):
    """The server could not be started, became unhealthy, or refused a repository call."""


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


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM (graceful: in-flight work finishes), then SIGKILL after `timeout_s`.

    Kills the whole process group when the child leads one (start_new_session=True), so that
    tritonserver's Python-backend stubs go with it.
    """
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()


def _check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like tritonserver itself: a port left in TIME_WAIT by a stopped server is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError as e:
            raise TritonError(f"{what} {LOOPBACK}:{port} is already in use ({e.strerror})") from e


@dataclass
class TritonServer:
    """A tritonserver child process; a context manager that always stops it on exit."""

    config: TritonConfig
    grpc_port: int = field(init=False, default=0)
    http_port: int = field(init=False, default=0)
    metrics_port: int = field(init=False, default=0)
    log_path: Path = field(init=False)
    _proc: subprocess.Popen[bytes] | None = field(init=False, default=None, repr=False)
    _log_file: BinaryIO | None = field(init=False, default=None, repr=False)

    # ---- addresses -------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        """`host:port` for `tritonclient.grpc.InferenceServerClient(url=...)`."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """`host:port` for `tritonclient.http` (and `http://{http_url}/v2/...`)."""
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus text endpoint."""
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def repo(self) -> Path:
        return self.config.repo

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the process and wait until the server and `config.wait_models` are ready."""
        if self._proc is not None:
            raise TritonError("server already started")
        cfg = self.config
        ports = {}
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(cfg, name)
            if port:
                _check_port_free(port, name.replace("_", " "))
            ports[name] = port or free_port()
        if len(set(ports.values())) != 3:
            raise TritonError(f"grpc, http and metrics ports must differ, got {ports}")
        self.grpc_port, self.http_port, self.metrics_port = (
            ports["grpc_port"],
            ports["http_port"],
            ports["metrics_port"],
        )
        install = TritonInstall.find()
        cmd = self.command(install)
        if cfg.log_path is not None:
            self.log_path = cfg.log_path
        else:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop())
        self._proc = subprocess.Popen(
            cmd,
            env=self.environment(install),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: Ctrl-C in a terminal reaches us, and we decide how to stop it.
            start_new_session=True,
        )
        try:
            self.wait_ready(cfg.wait_models, cfg.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def command(self, install: TritonInstall) -> list[str]:
        cfg = self.config
        cmd = [
            str(install.binary),
            f"--model-repository={cfg.repo}",
            f"--backend-directory={backend_directory(install)}",
            f"--model-control-mode={cfg.model_control.value}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.http_port}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-cpu-metrics=true",
            f"--log-verbose={cfg.log_verbose}",
            f"--backend-config=python,shm-default-byte-size={cfg.shm_default_bytes}",
            # A model that fails to load is a failed start, not a half-working server.
            "--exit-on-error=true",
            "--strict-readiness=true",
        ]
        cmd += [f"--load-model={m}" for m in cfg.load_models]
        cmd += list(cfg.extra_args)
        return cmd

    @staticmethod
    def environment(install: TritonInstall) -> dict[str, str]:
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
        return env

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL after `timeout_s`."""
        proc, self._proc = self._proc, None
        try:
            terminate(proc, timeout_s)
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def wait(self) -> int:
        """Block until the process exits; its return code."""
        if self._proc is None:
            raise TritonError("server not started")
        return self._proc.wait()

    def send_signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    # ---- health ------------------------------------------------------------------------------
    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_alive(self) -> None:
        if not self.is_alive():
            code = self._proc.returncode if self._proc else None
            raise TritonError(
                f"tritonserver exited (code {code}); log {self.log_path}:\n{self.log_tail()}"
            )

    def _http(
        self, method: str, path: str, body: dict | None = None, timeout: float = 5.0
    ) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.http_url}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            return 0, str(e)

    def is_ready(self) -> bool:
        return self._http("GET", "/v2/health/ready")[0] == 200

    def model_ready(self, name: str, version: int | str | None = None) -> bool:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "")
        return self._http("GET", path + "/ready")[0] == 200

    def wait_ready(self, models: tuple[str, ...] = (), timeout_s: float = 120.0) -> None:
        """Wait for the HTTP endpoint and every model in `models`; fail fast if the process dies."""
        deadline = time.monotonic() + timeout_s
        pending = ["<server>", *models]
        while pending:
            self._check_alive()
            name = pending[0]
            ok = (
                self._http("GET", "/v2/health/live")[0] == 200
                if name == "<server>"
                else self.model_ready(name)
            )
            if ok:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TritonError(
                    f"tritonserver not ready after {timeout_s:.0f} s (waiting for {name}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    # ---- repository API (explicit model control) ----------------------------------------------
    def load_model(self, name: str, timeout_s: float = 120.0) -> None:
        """Load (or reload, picking up new versions on disk) `name`; blocks until done."""
        self._check_alive()
        code, text = self._http("POST", f"/v2/repository/models/{name}/load", timeout=timeout_s)
        if code != 200:
            raise TritonError(f"loading model {name} failed (HTTP {code}): {text}")

    def unload_model(self, name: str, timeout_s: float = 60.0) -> None:
        self._check_alive()
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
