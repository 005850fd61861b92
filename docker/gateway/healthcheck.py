"""Container health check for the gateway: grpc.health.v1 `Check` on the local port.

Exit 0 when the service reports SERVING, 1 otherwise, which is what Docker's HEALTHCHECK
expects. The default service "" is SERVING only while the gateway can serve: Triton answers and
every arm with traffic (weight > 0) has its (model, version) READY in Triton. So an unhealthy
gateway container can mean Triton is down or an arm names a version Triton has not loaded; the
gateway's log names the arm. A second argument picks another service name, e.g. `liveness`
(SERVING while the gateway process runs, whatever Triton's state). Kubernetes does not need this
file: it probes gRPC health natively.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
        except grpc.RpcError as err:
            print(f"{address}: {err.code().name}", file=sys.stderr)
            return 1
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*(sys.argv[1:3] or ["127.0.0.1:50051"])))
