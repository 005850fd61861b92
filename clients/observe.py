"""`seminar observe`: a real Prometheus on loopback with the stack's scrape config and rules.

docker/prometheus/prometheus.yml names the compose services (`triton:8002`, `gateway:9102`);
for a local run the targets are rewritten to the given addresses and the scrape interval is
shortened, and everything else (rules.yml included) is used as is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import ClassVar

from seminar.errors import ArtifactError, ServiceError
from seminar.processes import LOOPBACK, ChildProcess, http_request, interrupt_on_stop_signals

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "docker" / "prometheus"


def local_config(
    triton_metrics: str | list[str], gateway_metrics: str, scrape_interval_s: float = 1.0
) -> dict:
    """docker/prometheus/prometheus.yml with loopback targets and a faster scrape.

    `triton_metrics`: Triton's /metrics address, or a list of it and the supervisor's
    (`seminar serve --health-port`), which the compose stack scrapes in the same job.
    """
    import yaml

    source = PROMETHEUS_DIR / "prometheus.yml"
    if not source.is_file():
        raise ArtifactError(f"{source}: missing (run from a checkout of the repository)")
    config = yaml.safe_load(source.read_text())
    targets = {"triton": triton_metrics, "gateway": gateway_metrics}
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            raise ArtifactError(
                f"{PROMETHEUS_DIR / 'prometheus.yml'}: unexpected job {job['job_name']!r}"
            )
        addresses = targets[job["job_name"]]
        addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        job["static_configs"] = [{"targets": addresses}]
    interval = f"{int(scrape_interval_s * 1000)}ms"
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    return config


class PrometheusProcess(ChildProcess):
    """`prometheus` on 127.0.0.1:port over a temp copy of the config; stopped on exit."""

    name: ClassVar[str] = "prometheus"

    def __init__(
        self,
        triton_metrics: str | list[str],
        gateway_metrics: str,
        port: int = 9090,
        storage: Path | None = None,
        scrape_interval_s: float = 1.0,
    ) -> None:
        self.binary = shutil.which("prometheus")
        if self.binary is None:
            raise ServiceError(
                "the `prometheus` binary is not installed (Debian: apt-get install -y prometheus)"
            )
        self.port = port
        self._tmp = tempfile.TemporaryDirectory(prefix="seminar-prometheus-")
        root = Path(self._tmp.name)
        super().__init__(root / "prometheus.log", stop_timeout_s=10.0)
        self.storage = storage or root / "data"
        import yaml

        (root / "prometheus.yml").write_text(
            yaml.safe_dump(local_config(triton_metrics, gateway_metrics, scrape_interval_s))
        )
        shutil.copy(PROMETHEUS_DIR / "rules.yml", root / "rules.yml")
        self.config_path = root / "prometheus.yml"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
        ]

    def is_ready(self) -> bool:
        return http_request(f"{self.url}/-/ready", timeout_s=1)[0] == 200

    def awaited(self) -> str:
        return f"ready on {self.url}"

    def start(self, timeout_s: float = 30.0) -> PrometheusProcess:
        self.startup_timeout_s = timeout_s
        return super().start()

    def query(self, promql: str) -> list[dict]:
        """Instant query: the `result` list of /api/v1/query."""
        return prometheus_query(self.url, promql)

    def wait_scraped(
        self, jobs: tuple[str, ...] = ("triton", "gateway"), timeout_s: float = 30.0
    ) -> None:
        """Wait until every job has been scraped successfully (`up == 1`).

        Prometheus hands discovered targets to the scrapers after a ~5 s throttle, so the
        first samples arrive 5-6 s after start.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            up = {r["metric"].get("job"): r["value"][1] for r in self.query("up")}
            if all(up.get(job) == "1" for job in jobs):
                return
            time.sleep(0.5)
        raise ServiceError(f"targets {jobs} not all up after {timeout_s:.0f} s: {up}")

    def stop(self, timeout_s: float | None = None) -> int | None:
        code = super().stop(timeout_s)
        self._tmp.cleanup()
        return code


def prometheus_query(url: str, promql: str, timeout_s: float = 5.0) -> list[dict]:
    """Instant query of the Prometheus at `url` (http://HOST:PORT): the `result` list of
    /api/v1/query; a ServiceError naming the server when it cannot be reached or refuses."""
    address = f"{url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(address, timeout=timeout_s) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as err:  # a bad or failing query: say what Prometheus said
        raise ServiceError(
            f"Prometheus at {url}: query {promql!r} failed: {err.code} {err.read()[:500]!r}"
        ) from None
    except (OSError, ValueError) as err:
        raise ServiceError(f"Prometheus at {url} cannot be reached: {err}") from None
    if body.get("status") != "success":
        raise ServiceError(f"Prometheus at {url}: query {promql!r} failed: {body}")
    return body["data"]["result"]


def run_prometheus(
    triton_metrics: str, gateway_metrics: str, port: int, storage: Path | None
) -> None:
    """Run until Ctrl-C or SIGTERM, printing where to look; Prometheus is always stopped."""
    interrupt_on_stop_signals()
    with PrometheusProcess(
        triton_metrics, gateway_metrics, port, storage, scrape_interval_s=5.0
    ) as prom:
        print(
            f"Prometheus on {prom.url} scraping triton={triton_metrics} gateway={gateway_metrics}"
        )
        print(
            "try: seminar:gateway_latency_ms:p99_by_arm, seminar:gateway_traffic_share:rate1m_by_arm"
        )
        try:
            while prom.is_alive():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
