"""The tritonserver launcher and `seminar serve`, against the real binary.

These use a tiny repository holding only the `floor` model (a trivial Python-backend model with
the ensemble's inputs and output), so they do not need a trained model.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from seminar.contract import OUTPUT_SCORE
from seminar.errors import ArtifactError
from seminar.processes import LOOPBACK, free_port
from seminar.serving.client import request_inputs
from seminar.serving.floor import FLOOR_MODEL, write_floor_model
from seminar.serving.triton import ModelControl, TritonConfig, TritonError, TritonServer
from tests.support.serving import require_tritonserver, start_triton

pytestmark = [pytest.mark.slow, pytest.mark.serving]


@pytest.fixture(scope="module")
def floor_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("floor_repo")
    write_floor_model(repo, max_batch_size=64)
    return repo


def floor_inputs(n: int):
    return request_inputs(7, "comedy", np.arange(n))


def test_server_serves_over_grpc_and_explicit_load_unload(floor_repo: Path) -> None:
    import tritonclient.grpc as grpcclient

    with start_triton(floor_repo, wait_models=(FLOOR_MODEL,)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        result = client.infer(FLOOR_MODEL, floor_inputs(5))
        score = result.as_numpy(OUTPUT_SCORE)
        assert score.shape == (5, 1) and score.dtype == np.float32
        assert not score.any()
        # Over max_batch_size: Triton rejects the request, the server stays up.
        with pytest.raises(grpcclient.InferenceServerException, match="batch"):
            client.infer(FLOOR_MODEL, floor_inputs(65))
        assert server.is_ready()

        with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
            metrics = resp.read().decode()
        assert f'nv_inference_request_success{{model="{FLOOR_MODEL}",version="1"}} 1' in metrics

        server.unload_model(FLOOR_MODEL)
        assert not server.model_ready(FLOOR_MODEL)
        with pytest.raises(grpcclient.InferenceServerException):
            client.infer(FLOOR_MODEL, floor_inputs(1))
        server.load_model(FLOOR_MODEL)
        assert server.model_ready(FLOOR_MODEL)
        assert client.infer(FLOOR_MODEL, floor_inputs(1)).as_numpy(OUTPUT_SCORE).shape == (1, 1)
    assert not server.is_alive()


def test_refuses_busy_port(floor_repo: Path) -> None:
    require_tritonserver()
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = TritonServer(TritonConfig(repo=floor_repo, grpc_port=port))
        with pytest.raises(TritonError, match=f"{port} is already in use"):
            server.start()
        assert not server.is_alive()


def test_fails_fast_with_log_tail_when_a_model_cannot_load(tmp_path: Path) -> None:
    require_tritonserver()
    model_dir = write_floor_model(tmp_path)
    (model_dir / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('planted failure: artifacts missing')\n"
    )
    config = TritonConfig(repo=tmp_path, wait_models=(FLOOR_MODEL,), startup_timeout_s=120)
    server = TritonServer(config)
    with pytest.raises(TritonError, match="planted failure"):
        server.start()
    assert not server.is_alive()


def test_config_rejects_bad_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repo"):
        TritonConfig(repo=tmp_path / "missing")
    with pytest.raises(ValueError, match="grpc_port"):
        TritonConfig(repo=tmp_path, grpc_port=70000)
    with pytest.raises(ValueError, match="load_models"):
        TritonConfig(repo=tmp_path, load_models=("*",), model_control=ModelControl.NONE)


def seminar_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "seminar.cli", *args]


def test_serve_cli_runs_until_sigterm(floor_repo: Path) -> None:
    require_tritonserver()
    ports = [free_port(), free_port(), free_port(), free_port()]
    proc = subprocess.Popen(
        seminar_cli(
            "serve",
            "--repo",
            str(floor_repo),
            "--grpc-port",
            str(ports[0]),
            "--http-port",
            str(ports[1]),
            "--metrics-port",
            str(ports[2]),
            "--health-port",
            str(ports[3]),
            "--wait-model",
            FLOOR_MODEL,
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not any("seminar serve ready" in line for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        url = f"http://{LOOPBACK}:{ports[1]}/v2/models/{FLOOR_MODEL}/ready"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://{LOOPBACK}:{ports[3]}/ready", timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The server is gone with it: a new server can bind the ports again (servers set
    # SO_REUSEADDR, so connections the old one closed, left in TIME_WAIT, do not count).
    time.sleep(0.2)
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((LOOPBACK, port))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--repo", "/nonexistent/repo"],
            "repo: model repository /nonexistent/repo is not a directory",
        ),
        (["--grpc-port", "99999"], "grpc_port"),
        (["--http-port", "8100", "--health-port", "8100"], "must differ"),
        (["--admin-key-file", "{bad_key}"], "the key must be 16-256 characters"),
        (["--tritonserver", "/bin/true"], "give both or neither"),
    ],
)
def test_serve_cli_bad_options_exit_nonzero_with_one_sentence(
    args: list[str], message: str, floor_repo: Path, tmp_path: Path
) -> None:
    bad_key = tmp_path / "admin.key"
    bad_key.write_text("REPLACE-ME\n")
    args = [a.replace("{bad_key}", str(bad_key)) for a in args]
    if "--repo" not in args:
        args = ["--repo", str(floor_repo), *args]
    proc = subprocess.run(seminar_cli("serve", *args), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_serving_cli_bad_inputs_exit_nonzero_with_one_sentence(tmp_path: Path) -> None:
    missing = tmp_path / "no-run"
    proc = subprocess.run(
        seminar_cli("bench", "serving", "--run", str(missing), "--data", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == ArtifactError.exit_code == 4
    assert f"--run: {missing / 'checkpoint.safetensors'} does not exist." in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_config_rejects_bad_fields() -> None:
    from seminar.bench.serving import ServingBenchConfig

    with pytest.raises(ValueError, match="requests: 10 must be a multiple of concurrency 4"):
        ServingBenchConfig(requests=10)
    with pytest.raises(ValueError, match="candidates"):
        ServingBenchConfig(candidates=0)
