"""What every Python-backend model.py of the pipeline shares, without Triton.

The model.py files in serving/backends/ only adapt tensors: each is a `PipelineModel` with a
`load` (its artifacts), a `read` (one request's input tensors) and a `run` (every accepted row
of the batch at once). The prologue of `initialize` (numpy < 2, the config, the version's
manifest, the stall guard), the request loop of `execute` (malformed requests answered with
INVALID_ARG, valid rows concatenated, outputs split back, one response per request in order)
and the stall guard that keeps a stub from answering a request tritonserver gave up live here,
where they run in plain unit tests. Nothing here imports `triton_python_backend_utils`: each
model.py hands its module to the class (`PipelineModel.pb_utils`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seminar import contract, manifest
from seminar.build.artifacts import read_index_ranges
from seminar.errors import ArtifactError, UsageError

__all__ = [
    "ArtifactError",
    "BackendContext",
    "PipelineModel",
    "RequestError",
    "RowBatch",
    "StallGuard",
    "check_numpy",
    "read_index_ranges",
    "read_requests",
    "require_index_range",
    "require_rows",
]


class RequestError(UsageError):
    """One request is malformed; the model answers it with INVALID_ARG and serves the rest.

    Its own class because `execute` must tell a bad request (answered alone) from a failure
    of the model (which fails the batch); an ArtifactError at `initialize` keeps the model
    from reporting READY."""

    # The pb_utils.TritonError code name the model.py answers with.
    triton_code = "INVALID_ARG"


def match_stdlib_extensions() -> Path | None:
    """Let the stub import the stdlib's C extensions its interpreter can load; returns the
    folder put first on sys.path, or None when nothing needed it.

    The stub embeds the system's libpython (Debian's 3.11.2) but takes its standard library
    from the venv's base Python, which may be a later 3.11 build (pyenv's 3.11.7 on our CI
    machines). Pure-Python modules work across patch releases; C extensions compiled for the
    later one can need symbols the embedded interpreter lacks (`_ssl`: `_PyModule_Add`), so
    `ssl`, which redis-py imports, fails inside the stub only. The interpreter's own
    lib-dynload, installed with the libpython it embeds, has matching builds of them.
    """
    try:
        import _ssl
    except ImportError as err:
        if "undefined symbol" not in str(err):
            return None
    else:
        return None
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for prefix in (Path("/usr/lib"), Path("/usr/local/lib")):
        folder = prefix / version / "lib-dynload"
        if any(folder.glob("_ssl.*.so")) and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
            import _ssl  # noqa: F401

            return folder
    return None


def check_numpy() -> None:
    """Refuse numpy >= 2: the Python backend stub then reads all-zero inputs without an error
    (docs/environment.md), so a model that loaded would silently serve garbage."""
    major = int(np.__version__.split(".")[0])
    if major >= 2:
        raise ArtifactError(
            f"numpy {np.__version__} in the Triton stub's environment ({np.__file__}); "
            "the Python backend needs numpy < 2 (install numpy<2 in the execution environment)"
        )


@dataclass(frozen=True)
class BackendContext:
    """What `initialize(args)` tells a model: its name, version folder and config."""

    model_name: str
    version_dir: Path
    config: Mapping
    parameters: Mapping[str, str]
    # On a GPU instance the stub passes the device; "cpu" on KIND_CPU instances.
    instance_kind: str
    device_id: int

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> BackendContext:
        config = json.loads(args["model_config"])
        parameters = {
            key: value.get("string_value", "")
            for key, value in config.get("parameters", {}).items()
        }
        return cls(
            model_name=args["model_name"],
            version_dir=Path(args["model_repository"]) / str(args["model_version"]),
            config=config,
            parameters=parameters,
            instance_kind=str(args.get("model_instance_kind", "CPU")).upper(),
            device_id=int(args.get("model_instance_device_id", 0) or 0),
        )

    def parameter(self, key: str) -> str:
        """A required config `parameters` entry; a missing one fails the load."""
        value = self.parameters.get(key, "")
        if not value:
            raise ArtifactError(
                f"model {self.model_name}: config.pbtxt has no parameter {key!r} "
                f"(have: {sorted(self.parameters)})"
            )
        return value

    def int_parameter(self, key: str) -> int:
        value = self.parameter(key)
        try:
            return int(value)
        except ValueError:
            raise ArtifactError(
                f"model {self.model_name}: parameter {key!r} must be an integer, got {value!r}"
            ) from None

    def artifact(self, key: str) -> Path:
        """The version-dir file or folder named by parameter `key`; must exist."""
        path = self.version_dir / self.parameter(key)
        if not path.exists():
            raise ArtifactError(f"model {self.model_name}: artifact {path} is missing")
        return path

    def tensor_dtypes(self, section: str) -> dict[str, np.dtype]:
        """numpy dtype of every `input` / `output` tensor, as config.pbtxt declares it."""
        return {
            t["name"]: contract.DataType(t["data_type"]).numpy for t in self.config.get(section, [])
        }

    def tensor_dims(self, section: str) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every `input` / `output` tensor, as config.pbtxt declares it."""
        return {t["name"]: tuple(int(d) for d in t["dims"]) for t in self.config.get(section, [])}

    @property
    def on_gpu(self) -> bool:
        return self.instance_kind == "GPU"

    @property
    def version(self) -> str:
        return self.version_dir.name


def _cat(parts: list):
    """Concatenate numpy arrays or torch tensors (GPU inputs arrive as torch via DLPack)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


@dataclass(frozen=True)
class RowBatch:
    """The rows of several requests concatenated, so one library call serves them all.

    `valid[r]` is the index of request r in the batch or -1 if it was rejected; rows of
    accepted request r are `[offsets[i], offsets[i + 1])` with i = valid[r].
    """

    arrays: dict[str, np.ndarray]  # or torch tensors, for GPU inputs
    offsets: np.ndarray  # (R_valid + 1,)
    valid: tuple[int, ...]

    @classmethod
    def concat(cls, per_request: Sequence[dict[str, np.ndarray] | None]) -> RowBatch:
        kept = [r for r in per_request if r is not None]
        valid, i = [], 0
        for r in per_request:
            valid.append(i if r is not None else -1)
            i += r is not None
        sizes = [len(next(iter(r.values()))) for r in kept]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        arrays = {name: _cat([r[name] for r in kept]) for name in kept[0]} if kept else {}
        return cls(arrays=arrays, offsets=offsets, valid=tuple(valid))

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def split(self, outputs: Mapping[str, np.ndarray], request: int) -> dict[str, np.ndarray]:
        """Request `request`'s rows of each output (views, no copy)."""
        i = self.valid[request]
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return {name: array[lo:hi] for name, array in outputs.items()}


def read_requests(
    requests: Sequence[Any], read: Callable[[Any], dict[str, Any]]
) -> tuple[list[dict[str, Any] | None], dict[int, RequestError]]:
    """`read` every request of a Triton batch; a bad one is set aside, not raised.

    Returns the per-request tensors (None where the request was set aside) and the errors by
    request position, so that `execute` answers those requests with their error code
    (`RequestError.triton_code`) and still serves the rest.

    `request.is_cancelled()` is not asked: no cancellation reaches Triton behind
    `seminar serve` (its gRPC proxy never cancels), the check costs an IPC round trip per
    request (~70 us, ~0.4 ms over the five steps), and a step that answers CANCELLED while a
    sibling step of the same ensemble request is still running ends that request early,
    which is what crashes tritonserver 2.51.
    """
    per_request: list[dict[str, Any] | None] = []
    errors: dict[int, RequestError] = {}
    for position, request in enumerate(requests):
        try:
            per_request.append(read(request))
        except RequestError as error:
            per_request.append(None)
            errors[position] = error
    return per_request, errors


def require_rows(name: str, array, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
    """Check a numpy array or torch tensor is (B, *row_shape) of `dtype` with B > 0.

    Triton checks inputs against config.pbtxt before a model sees them; this guards the model
    when it is called in-process or through a config that drifted from the code.
    """
    got = np.dtype(str(array.dtype).removeprefix("torch."))
    if got != dtype:
        raise RequestError(f"input {name} must be {dtype}, got {got}")
    if array.ndim != 1 + len(row_shape) or tuple(array.shape[1:]) != row_shape:
        raise RequestError(
            f"input {name} must have shape (B, {', '.join(map(str, row_shape))}), "
            f"got {tuple(array.shape)}"
        )
    if array.shape[0] == 0:
        raise RequestError(f"input {name} has no rows (empty batch)")


def require_index_range(name: str, array, low: int, high: int) -> None:
    """Check every value of an index input lies in [low, high), the rows of the table it
    indexes. An exported graph would not: a negative index wraps around to a real row, and one
    past the end fails the whole batch inside ONNX Runtime."""
    values = np.asarray(array)
    bad = (values < low) | (values >= high)
    if bad.any():
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RequestError(
            f"input {name} has {int(values[position])} at row {position[0]}, outside its "
            f"table's range [{low}, {high})"
        )


# ---- stall guard -------------------------------------------------------------------------------
# tritonserver waits for a stub's answer in rounds: it marks the stub unhealthy, waits up to
# 1 s for the answer, then gives the request up ("Stub process ... is not healthy") unless the
# stub's heartbeat thread marked it healthy again meanwhile. That heartbeat (C++, independent
# of the GIL) beats every 0.3 s, so tritonserver can only give up on a stub that did not run
# for more than 1.0 - 0.3 = 0.7 s (stopped, frozen by a cgroup, swapped out, starved of CPU).
# After giving up it frees the request's shared memory but leaves its message in the stub's
# queue; whatever the stub then answers, or reads from that freed message, reaches
# tritonserver as the answer to its next request, and tritonserver crashes. A stub that may
# have been given up must therefore exit instead of answering: a dead stub only fails its
# requests ("not healthy") until the model is reloaded.
STALL_LIMIT_S = 0.6  # 0.1 s below the 0.7 s that can matter: margin for timer slack
STALL_TICK_S = 0.05  # how often the ticker looks; a stall is measured to within a tick
# An execute starting this soon after an idle stall over the limit may be serving a request
# that arrived during it (the stub's C++ loop starts it right after waking).
STALL_RECENT_S = 0.25
# The stub's exit status when it gives up (EX_TEMPFAIL: a restart of the model fixes it).
STALL_EXIT_CODE = 75
# A stub that dies while one of its threads holds a mutex it shares with tritonserver makes
# tritonserver's next lock of it throw (boost::interprocess::lock_exception, an abort; seen
# when killing a stub at a random moment under load). The stub's C++ threads hold those
# mutexes only while they run (popping a message, a heartbeat), so before exiting the guard
# waits until no other thread of the stub is running or queued for a CPU, twice in a row, for
# at most this long. A fixed pause was not enough: on a crowded machine a holder preempted
# right after SIGCONT waited longer than 20 ms for its turn, and tritonserver aborted.
STALL_EXIT_SETTLE_MAX_S = 1.0
_EXIT_SETTLE_LOOK_S = 0.002


def other_threads_running() -> bool:
    """Whether a thread of this process other than the caller is running, queued for a CPU
    (state R) or in an uninterruptible wait (D): the states in which it may hold a mutex."""
    own = threading.get_native_id()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False
    for task in tasks:
        if int(task) == own:
            continue
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue  # the thread has ended
        # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ")"
        if stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"R", b"D"):
            return True
    return False


def _wall_clock() -> float:
    """Seconds on a clock that keeps counting while the machine is suspended (tritonserver's
    waits run on wall-clock deadlines, so a suspend counts as a stall)."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


class ThreadTurns:
    """Seconds one thread has run or stood ready to run (waiting for a CPU), from the kernel's
    scheduler statistics (/proc/self/task/TID/schedstat: time on a CPU, time queued for one).
    A thread that is stopped, frozen or asleep adds to neither. Where the kernel keeps no such
    statistics, the thread's CPU time stands in for both (a crowded CPU then reads as a stall).
    """

    def __init__(self, native_id: int, thread_ident: int) -> None:
        self._fd: int | None = None
        try:
            self._fd = os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY)
            self._parse(os.pread(self._fd, 128, 0))
        except (OSError, ValueError, IndexError):
            self.close()
            self._cpu_clock = time.pthread_getcpuclockid(thread_ident)

    @classmethod
    def of_current_thread(cls) -> ThreadTurns:
        return cls(threading.get_native_id(), threading.get_ident())

    @staticmethod
    def _parse(line: bytes) -> float:
        on_cpu_ns, queued_ns = line.split()[:2]
        return (int(on_cpu_ns) + int(queued_ns)) / 1e9

    def seconds(self, default: float = 0.0) -> float:
        """The running total; `default` once the thread is gone (it gets no more turns)."""
        try:
            if self._fd is not None:
                return self._parse(os.pread(self._fd, 128, 0))
            return time.clock_gettime(self._cpu_clock)
        except (OSError, ValueError, IndexError):
            return default

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StallGuard:
    """Exit the stub, rather than answer, once tritonserver may have given its request up.

    A daemon ticker observes the time every `tick_s`, and `execute` runs inside
    `executing()`, which also observes at entry and right before its responses (or error) go
    back. An observation counts as a stall the wall time since the previous one minus the time
    the executing thread ran or stood ready to run in between (ThreadTurns): a frozen process
    does neither, so the stall is at least as long as the freeze, while a thread that keeps the
    GIL busy computing (the ticker cannot run, but the C++ heartbeat does) shows none, and
    neither does one that waited its turn for a crowded CPU (the heartbeat, a thread that
    mostly sleeps, gets its turns first). A stall over `limit_s` logs one line to stderr and
    exits the process with STALL_EXIT_CODE, from whichever thread saw it first, holding the
    guard's lock throughout: an execute's responses go back only after its last observation,
    which takes that lock, so the stale answer never leaves. Before exiting it lets the stub's
    other threads settle (see STALL_EXIT_SETTLE_MAX_S).

    Between requests the ticker only remembers a stall: an idle stub that did not run for a
    while harmed nobody unless a request arrived meanwhile, and exiting there turned CPU
    starvation on an overloaded machine (stubs of other models loading, test runs) into dead
    models and reload storms. A request that arrived during the stall is what `execute` meets
    right after the stub wakes, so an execute that starts within `recent_s` of the end of a
    stall over the limit exits instead of answering (and its entry observation catches the
    stall itself when the ticker has not looked yet). What no guard in the model can catch is
    a freeze while the stub's C++ copies the responses out after `execute` returned (it holds
    the GIL then; microseconds to a millisecond per batch), or the C++ loop acting on a freed
    request before any Python runs.
    """

    def __init__(
        self,
        model: str,
        version: str,
        *,
        limit_s: float = STALL_LIMIT_S,
        tick_s: float = STALL_TICK_S,
        recent_s: float = STALL_RECENT_S,
        settle_max_s: float = STALL_EXIT_SETTLE_MAX_S,
        exit_process: Callable[[int], Any] = os._exit,
        report: Callable[[str], Any] | None = None,
    ) -> None:
        if not 0 < tick_s < limit_s:
            raise ValueError(f"StallGuard: need 0 < tick_s < limit_s, got {tick_s}, {limit_s}")
        self.model, self.version = model, version
        self.limit_s, self.tick_s, self.recent_s = limit_s, tick_s, recent_s
        self.settle_max_s = settle_max_s
        # The last stall over the limit seen between requests: (when it ended, its length).
        self._idle_stall: tuple[float, float] | None = None
        self._executing = False
        self._exit_process = exit_process
        self._report = report or _write_stderr
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ticker: threading.Thread | None = None
        self._watched = threading.get_ident()
        self._turns = ThreadTurns.of_current_thread()
        self._last_turns = self._turns.seconds()
        self._last_wall = _wall_clock()

    def _watched_turns(self) -> float:
        return self._turns.seconds(default=self._last_turns)

    def start(self) -> StallGuard:
        """Start the ticker. Call it last in `initialize`: a stall while loading fails the
        load instead (tritonserver then stops the stub itself)."""
        if self._ticker is None:
            self._stopped.clear()
            self._ticker = threading.Thread(
                target=self._tick, name=f"stall-guard-{self.model}", daemon=True
            )
            self._ticker.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        self._turns.close()

    def _tick(self) -> None:
        while not self._stopped.wait(self.tick_s):
            if self._executing:
                self.observe("while executing")
            else:
                self.observe("between requests", fatal=False)

    def observe(self, when: str, fatal: bool = True) -> float:
        """Close the interval since the previous observation and return its stall in
        seconds; one over `limit_s` exits the process (`when` goes into the log line), or,
        when not `fatal` (between requests), is remembered for the next execute."""
        with self._lock:
            wall, turns = _wall_clock(), self._watched_turns()
            stall = max(0.0, (wall - self._last_wall) - (turns - self._last_turns))
            self._last_wall, self._last_turns = wall, turns
            if stall > self.limit_s:
                if not fatal:
                    self._idle_stall = (wall, stall)
                else:
                    self._give_up(stall, when)
            return stall

    def _check_recent_idle_stall(self) -> None:
        """Exit when this execute follows a stall over the limit too closely: its request
        may have arrived, and been given up by tritonserver, while the stub did not run."""
        with self._lock:
            if self._idle_stall is None:
                return
            ended, stall = self._idle_stall
            self._idle_stall = None
            if _wall_clock() - ended <= self.recent_s:
                self._give_up(stall, "between requests, just before this one")

    def _watch_current_thread(self) -> None:
        ident = threading.get_ident()
        if ident != self._watched:
            self.observe("before executing")  # close the old thread's interval first
            with self._lock:
                self._watched = ident
                self._turns.close()
                self._turns = ThreadTurns.of_current_thread()
                self._last_turns = self._turns.seconds()

    @contextlib.contextmanager
    def executing(self) -> Iterator[None]:
        """Wrap one `execute`: observes at entry and before its responses (or error) go back."""
        self._watch_current_thread()
        self.observe("before executing")
        self._check_recent_idle_stall()
        self._executing = True
        try:
            yield
        finally:
            self.observe("while executing")
            self._executing = False

    def _give_up(self, stall: float, when: str) -> None:
        self._report(
            f"seminar stall guard: model {self.model} version {self.version} did not run for "
            f"{stall:.2f} s {when} (limit {self.limit_s:.2f} s); tritonserver may have given "
            f"its request up, so the stub exits with code {STALL_EXIT_CODE} instead of "
            "answering\n"
        )
        self._settle()
        self._exit_process(STALL_EXIT_CODE)

    def _settle(self) -> None:
        """Wait, up to `settle_max_s`, until no other thread runs twice in a row."""
        deadline = time.monotonic() + self.settle_max_s
        quiet_looks = 0
        while quiet_looks < 2 and time.monotonic() < deadline:
            time.sleep(_EXIT_SETTLE_LOOK_S)
            quiet_looks = 0 if other_threads_running() else quiet_looks + 1


def _write_stderr(line: str) -> None:
    os.write(2, line.encode(errors="replace"))


# ---- the model every model.py subclasses ---------------------------------------------------------
class PipelineModel:
    """A Python-backend model of the pipeline: the prologue and the request loop, once.

    `initialize` checks numpy, reads the config, verifies this version's files against its
    manifest, calls `load` and starts the stall guard last. `execute` runs under the guard:
    `read` each request (a RequestError sets that request aside, answered INVALID_ARG), `run`
    the accepted rows in one call, then answer every request in order with its rows of each
    output (`output_tensor`). A subclass sets `pb_utils` to the stub's
    `triton_python_backend_utils` module and adapts tensors; nothing else.
    """

    pb_utils: Any  # triton_python_backend_utils, set by the model.py

    context: BackendContext
    input_dtypes: dict[str, np.dtype]
    input_dims: dict[str, tuple[int, ...]]
    output_dtypes: dict[str, np.dtype]
    stall_guard: StallGuard

    def initialize(self, args: Mapping[str, str]) -> None:
        check_numpy()
        match_stdlib_extensions()
        self.context = BackendContext.from_args(args)
        manifest.verify_manifest(self.context.version_dir)
        self.input_dtypes = self.context.tensor_dtypes("input")
        self.input_dims = self.context.tensor_dims("input")
        self.output_dtypes = self.context.tensor_dtypes("output")
        self.load(self.context)
        self.stall_guard = StallGuard(self.context.model_name, self.context.version).start()

    # ---- what a model adapts -------------------------------------------------------------------
    def load(self, context: BackendContext) -> None:
        """Open this version's artifacts (raise ArtifactError: the model does not load)."""

    def read(self, request: Any) -> dict[str, Any]:
        """One request's tensors by name, rows first; RequestError rejects the request.
        By default every input as numpy, checked against its config dtype and shape."""
        return {name: self.checked_input(request, name) for name in self.input_dtypes}

    def run(self, batch: RowBatch) -> Mapping[str, Any]:
        """Outputs by name for every row of `batch` (by default the rows `read` returned)."""
        return batch.arrays

    def output_tensor(self, name: str, value: Any) -> Any:
        """One response tensor from one request's rows of output `name`."""
        return self.pb_utils.Tensor(name, np.ascontiguousarray(value, self.output_dtypes[name]))

    # ---- helpers for `read` --------------------------------------------------------------------
    def input_array(self, request: Any, name: str) -> np.ndarray:
        return self.pb_utils.get_input_tensor_by_name(request, name).as_numpy()

    def checked_input(self, request: Any, name: str) -> np.ndarray:
        array = self.input_array(request, name)
        require_rows(name, array, self.input_dtypes[name], self.input_dims[name])
        return array

    # ---- the request loop ----------------------------------------------------------------------
    def execute(self, requests: Sequence[Any]) -> list[Any]:
        with self.stall_guard.executing():
            per_request, errors = read_requests(requests, self.read)
            batch = RowBatch.concat(per_request)
            outputs = self.run(batch) if batch.rows else {}
            return [
                self._error_response(errors[r])
                if r in errors
                else self.pb_utils.InferenceResponse(
                    output_tensors=[
                        self.output_tensor(name, value)
                        for name, value in batch.split(outputs, r).items()
                    ]
                )
                for r in range(len(requests))
            ]

    def _error_response(self, error: RequestError) -> Any:
        code = getattr(self.pb_utils.TritonError, error.triton_code)
        return self.pb_utils.InferenceResponse(error=self.pb_utils.TritonError(str(error), code))


# ---- the retrieval step's own metrics -------------------------------------------------------
_SEQ_BUCKETS = [0, 10, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000]
_TIME_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
# key, name, description, kind, histogram buckets (the native backend reads the same, from
# its bundle's spec.txt: metric families of one name must agree in one tritonserver)
RETRIEVAL_METRICS = (
    ("rows", "seminar_pq_rows_total", "Candidate rows scored by the retrieval step", "COUNTER", None),
    (
        "sequence", "seminar_pq_sequence_length",
        "Stored lifelong sequence length of each user served (0 = cold start)",
        "HISTOGRAM", _SEQ_BUCKETS,
    ),
    (
        "time", "seminar_pq_topk_seconds",
        "Time of one batch's PQ top-K + exact gather, in seconds", "HISTOGRAM", _TIME_BUCKETS,
    ),
    (
        "tail", "seminar_tail_length",
        "Online tail events scored beside the stored sequence, per user served",
        "HISTOGRAM", _SEQ_BUCKETS,
    ),
    (
        "tail_errors", "seminar_tail_read_errors_total",
        "Tail reads from the event log that failed (served from the store alone)",
        "COUNTER", None,
    ),
)  # fmt: skip
_METRIC_KINDS = {key: kind for key, _, _, kind, _ in RETRIEVAL_METRICS}
# The sender wakes at most this often. Woken for every batch, it took the GIL from the thread
# computing the next batch hundreds of times a second, which cost the fused step throughput at
# saturation; /metrics is scraped every few seconds, so 0.1 s later shows the same.
METRICS_SEND_INTERVAL_S = 0.1


class RetrievalMetrics:
    """The retrieval step's metrics on Triton's /metrics, labelled with the model and version
    that ran it (pq_retrieval, or the fused graph's pipeline): rows scored, stored sequence
    length per (request, user), online tail length per (batch, user), tail reads that failed
    (served from the store alone), and the time of the top-K call. The families stay
    referenced here: the backend drops a family that is collected.

    Each update of a Python-backend metric is a round trip to tritonserver (a message and a
    wait for its answer). `observe` only queues a batch's updates; a daemon thread sends what
    was queued every `send_interval_s`, so the requests' answers never wait for them, and
    /metrics shows a batch's updates within about that interval. Counter increments queued
    together go as one."""

    def __init__(
        self,
        pb_utils: Any,
        context: BackendContext,
        tails: Any | None,
        send_interval_s: float = METRICS_SEND_INTERVAL_S,
    ) -> None:
        self.tails = tails  # seminar.serving.tail.OnlineTails, or None
        self.send_interval_s = send_interval_s
        self.read_errors_seen = 0
        labels = {"model": context.model_name, "version": context.version}
        self.families = {}
        self.metrics = {}
        for key, name, description, kind, buckets in RETRIEVAL_METRICS:
            family = pb_utils.MetricFamily(
                name=name, description=description, kind=getattr(pb_utils.MetricFamily, kind)
            )
            self.families[key] = family
            extra = {} if buckets is None else {"buckets": buckets}
            self.metrics[key] = family.Metric(labels=labels, **extra)
        self._queued: list[tuple[str, float]] = []  # (metric key, observed value or increment)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(
            target=self._send_forever, name=f"metrics-{context.model_name}", daemon=True
        ).start()

    def observe(self, retrieval: Any, batch: RowBatch, seconds: float) -> None:
        """One batch through `retrieval` (seminar.serving.retrieval.BatchRetrieval) that took
        `seconds`; the batch's user_index rows say which users each request served."""
        updates = [("time", seconds), ("rows", float(batch.rows))]
        updates += [("tail", float(length)) for length in retrieval.last_tail_lengths]
        if self.tails is not None and self.tails.read_errors > self.read_errors_seen:
            updates.append(("tail_errors", float(self.tails.read_errors - self.read_errors_seen)))
            self.read_errors_seen = self.tails.read_errors
        users = batch.arrays[contract.USER_INDEX]
        users = np.asarray(users.cpu().numpy() if hasattr(users, "cpu") else users).reshape(-1)
        for low, high in zip(batch.offsets[:-1], batch.offsets[1:], strict=True):
            for length in retrieval.sequence_lengths(np.unique(users[low:high])):
                updates.append(("sequence", float(length)))
        with self._lock:
            self._queued += updates
        self._wake.set()

    def _send_forever(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.send_interval_s)  # the batches of the next interval queue up
            self._wake.clear()
            with self._lock:
                updates, self._queued = self._queued, []
            increments: dict[str, float] = {}
            try:
                for key, value in updates:
                    if _METRIC_KINDS[key] == "COUNTER":
                        increments[key] = increments.get(key, 0.0) + value
                    else:
                        self.metrics[key].observe(value)
                for key, value in increments.items():
                    self.metrics[key].increment(value)
            except Exception as err:  # a lost update must not stop the next ones
                print(f"seminar metrics: {len(updates)} updates not sent: {err}", file=sys.stderr)
