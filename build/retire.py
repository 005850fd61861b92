"""`seminar retire --version N`: take one build out of a model repository, and out of a live
Triton, without ever leaving either unable to serve.

A build N is: version N of every composing model, the pinned ensemble `seminar_vN`, and
folder N of the contract ensemble `seminar`. Deleting those folders by hand breaks serving
when `seminar` is pinned to N (its config names composing version N), and in explicit model
control mode Triton keeps every model version it had until a model is reloaded.

Order, chosen so that a crash after any step leaves a repository that a fresh tritonserver
loads whole (and a live one keeps answering), and so that running the same command again
finishes the job:

  1. if `seminar` is pinned to N: make sure folder `seminar/M` exists (M = newest other
     complete version), write `seminar/config.pbtxt` pinned to M (temp file + rename), move
     folder `seminar/N` aside; with a server, reload `seminar` and wait until version M is
     READY. Nothing refers to N any more except `seminar_vN`.
  2. with a server, unload `seminar_vN`; move `seminar_vN` out of the repository (from here
     on N is no longer a complete version).
  3. move folder N of `seminar` (if still there) and of every composing model out; with a
     server, reload each composing model so Triton drops version N.
  4. delete what was moved out (a trash folder beside the repository, swept by the next
     build or retire if this process is killed before).

Everything runs under the repository lock (build/lock.py), so no build interleaves with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from seminar import contract
from seminar.build import builder, lock, repository
from seminar.errors import ArtifactError, ConflictError, ServiceError, UsageError

# The header tritonserver checks when started with
# --http-restricted-api=model-repository:seminar-admin-key=<key>.
ADMIN_KEY_HEADER = "seminar-admin-key"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RetireRequest:
    repo: Path
    version: int
    server: str | None = None  # Triton's HTTP endpoint, host:port, for a live retire
    admin_key: str | None = None  # sent as ADMIN_KEY_HEADER on repository API calls
    ready_timeout_s: float = 120.0  # per model: wait for a reload to become READY
    http_timeout_s: float = 300.0  # a load call returns once the model is loaded

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"RetireRequest.version must be a positive int, got {self.version!r}")
        if self.ready_timeout_s <= 0 or self.http_timeout_s <= 0:
            raise ValueError("RetireRequest timeouts must be > 0")


@dataclass(frozen=True)
class RetireSummary:
    version: int
    repinned_to: int | None  # the version `seminar` was re-pinned to, if it was pinned to N
    removed: tuple[str, ...]  # repository-relative folders taken out
    seconds: float


class LiveTriton:
    """The few repository-API calls a retire makes on a running tritonserver (HTTP/REST).

    Every call sends the admin key header when a key is given, as a server started with
    `--http-restricted-api=model-repository:seminar-admin-key=<key>` requires.
    """

    def __init__(self, url: str, admin_key: str | None = None, timeout_s: float = 300.0) -> None:
        self.url = url if "://" in url else f"http://{url}"
        self.admin_key = admin_key
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if self.admin_key is not None:
            request.add_header(ADMIN_KEY_HEADER, self.admin_key)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise ServiceError(f"Triton at {self.url} is unreachable ({exc})") from exc

    def _repository_call(self, what: str, path: str, body: dict | None = None) -> str:
        code, text = self._call("POST", path, body)
        if code != 200:
            with contextlib.suppress(ValueError, AttributeError):  # Triton's {"error": ...}
                text = json.loads(text).get("error", text)
            hint = (
                f" (is --admin-key-file right? the key goes in header {ADMIN_KEY_HEADER})"
                if code in (401, 403)
                else ""
            )
            raise ServiceError(
                f"Triton at {self.url} refused to {what} (HTTP {code}: {text.strip()}){hint}",
            )
        return text

    def index(self) -> list[dict]:
        """Every model version Triton knows of, with its state."""
        text = self._repository_call("list its model repository", "/v2/repository/index", {})
        return json.loads(text)

    def loaded_versions(self) -> dict[str, set[int]]:
        """Model name -> the versions Triton has READY (one index call)."""
        loaded: dict[str, set[int]] = {}
        for entry in self.index():
            version = str(entry.get("version", ""))
            if entry.get("state") == "READY" and version.isdigit():
                loaded.setdefault(entry["name"], set()).add(int(version))
        return loaded

    def load(self, name: str) -> None:
        self._repository_call(f"load {name}", f"/v2/repository/models/{name}/load")

    def unload(self, name: str) -> None:
        self._repository_call(f"unload {name}", f"/v2/repository/models/{name}/unload")

    def is_ready(self, name: str, version: int) -> bool:
        code, _ = self._call("GET", f"/v2/models/{name}/versions/{version}/ready")
        return code == 200

    def wait_ready(self, name: str, version: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_ready(name, version):
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{name} version {version} is not READY on Triton at {self.url} after "
                    f"{timeout_s:.0f} s",
                )
            time.sleep(0.1)


def read_admin_key(path: Path) -> str:
    """The admin key in a file (surrounding whitespace dropped)."""
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the admin key file ({exc.strerror})") from exc
    if not key:
        raise UsageError(f"{path}: the admin key file is empty")
    return key


def contract_pin(repo: Path) -> int | None:
    """The composing version the `seminar` ensemble routes to (None without its config)."""
    path = repo / contract.ENSEMBLE_MODEL / contract.CONFIG_FILE
    if not path.is_file():
        return None
    return repository.pinned_version(repository.parse_config(path))


def _version_folders(repo: Path, version: int) -> list[Path]:
    """Folder N of every model of a build, in the order a retire takes them out."""
    folders = [
        repo / contract.pinned_ensemble_name(version),
        repo / contract.ENSEMBLE_MODEL / str(version),
    ]
    folders += [repo / name / str(version) for name in contract.VERSION_MODELS]
    return folders


def retire_version(request: RetireRequest, progress: Progress = print) -> RetireSummary:
    """Take version N out of the repository (and a live Triton); see the module docstring."""
    started = time.perf_counter()
    repo, n = request.repo, request.version
    if not (repo / contract.ENSEMBLE_MODEL / contract.CONFIG_FILE).is_file():
        raise ArtifactError(
            f"{repo}: not a model repository written by `seminar build` "
            f"(no {contract.ENSEMBLE_MODEL}/{contract.CONFIG_FILE})",
        )
    live = (
        LiveTriton(request.server, request.admin_key, request.http_timeout_s)
        if request.server
        else None
    )
    with lock.RepositoryLock(repo, "retire", n, on_wait=progress):
        complete = builder.existing_versions(repo)
        present = [f for f in _version_folders(repo, n) if f.exists()]
        pin = contract_pin(repo)
        # A live server may still hold version N after an interrupted retire removed the
        # folders: it is known there, and this run finishes the job.
        loaded = live.loaded_versions() if live else {}
        still_loaded = [name for name in contract.VERSION_MODELS if n in loaded.get(name, set())]
        if not present and not still_loaded:
            known = ", ".join(map(str, complete)) or "none"
            raise ArtifactError(
                f"version {n} is not in {repo} (complete versions: {known})",
            )
        others = [v for v in complete if v != n]
        if not others and (n in complete or pin == n):
            raise ConflictError(
                f"version {n} is the only complete version in {repo}, so nothing would be left "
                "to serve; build another version first",
            )

        parent = repo.resolve().parent
        builder.remove_stale_staging(parent, repo.name)
        trash = Path(tempfile.mkdtemp(prefix=f".{repo.name}.v{n}.retired.", dir=parent))
        (trash / builder.STAGING_PID_FILE).write_text(str(os.getpid()))
        removed: list[str] = []

        def take_out(folder: Path) -> None:
            relative = folder.relative_to(repo).as_posix()
            os.rename(folder, trash / relative.replace("/", "-"))
            removed.append(relative)
            progress(f"moved {relative} out of the repository")

        try:
            repinned_to = None
            if pin == n:
                repinned_to = newest_other = max(others)
                ensemble_dir = repo / contract.ENSEMBLE_MODEL
                (ensemble_dir / str(newest_other)).mkdir(exist_ok=True)
                config_path = ensemble_dir / contract.CONFIG_FILE
                pinned_path = repo / contract.pinned_ensemble_name(newest_other)
                config = repository.renamed_ensemble(
                    repository.parse_config(pinned_path / contract.CONFIG_FILE),
                    contract.ENSEMBLE_MODEL,
                )
                repository.write_config(config_path, config)
                progress(f"re-pinned {contract.ENSEMBLE_MODEL} from version {n} to {newest_other}")
                if (ensemble_dir / str(n)).exists():
                    take_out(ensemble_dir / str(n))
            elif pin is not None:
                progress(f"{contract.ENSEMBLE_MODEL} is pinned to version {pin}: nothing to re-pin")
            if live:
                ensemble = contract.ENSEMBLE_MODEL
                target = repinned_to or pin
                if repinned_to is not None or (target and not live.is_ready(ensemble, target)):
                    progress(f"reloading {ensemble} on {live.url}")
                    live.load(ensemble)
                if target:
                    live.wait_ready(ensemble, target, request.ready_timeout_s)
                    progress(f"{ensemble} version {target} is READY on {live.url}")

            pinned_ensemble = contract.pinned_ensemble_name(n)
            if live and n in live.loaded_versions().get(pinned_ensemble, set()):
                live.unload(pinned_ensemble)
                progress(f"unloaded {pinned_ensemble} on {live.url}")
            for folder in _version_folders(repo, n):
                if folder.exists():
                    take_out(folder)
            # Only an optional model can lose its last version (the other versions may be
            # steps builds, or built without images): a model folder without versions would
            # fail to load, so it goes too.
            for name in contract.OPTIONAL_MODELS:
                folder = repo / name
                if folder.is_dir() and not any(d.name.isdigit() for d in folder.iterdir()):
                    take_out(folder)
            if live:
                loaded = live.loaded_versions()
                for name in contract.VERSION_MODELS:
                    if not loaded.get(name):  # a model the server does not run stays unloaded
                        continue
                    if (repo / name).is_dir():
                        live.load(name)  # re-reads the model's folder: version N is unloaded
                        progress(f"reloaded {name} on {live.url} (version {n} dropped)")
                    else:  # its last version went with N
                        live.unload(name)
                        progress(f"unloaded {name} on {live.url} (no version left)")
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        if removed:
            progress(f"deleted version {n}: {', '.join(removed)}")
    return RetireSummary(n, repinned_to, tuple(removed), time.perf_counter() - started)
