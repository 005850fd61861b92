"""Names that are contracts between build/, the Triton models, clients/ and tests/.

Change one here and every producer and consumer changes with it; nothing else in the
repository spells these strings.
"""

from typing import Final

# Triton ensemble (docs/serving.md: "Triton ensemble (contract)").
ENSEMBLE_MODEL: Final = "seminar"
INPUT_USER_ID: Final = "user_id"  # INT64 [1] per candidate row
INPUT_QUERY: Final = "query"  # BYTES [1] per row, UTF-8, empty = recommendation request
INPUT_ITEM_ID: Final = "item_id"  # INT64 [1] per row
OUTPUT_SCORE: Final = "score"  # FP32 [1] per row

# Composing models of the ensemble.
QUERY_ENCODER_MODEL: Final = "query_encoder"
ITEM_ENCODER_MODEL: Final = "item_encoder"
PQ_RETRIEVAL_MODEL: Final = "pq_retrieval"
RANKING_HEAD_MODEL: Final = "ranking_head"

# Gateway (docs/serving.md: "Gateway (contract)").
GATEWAY_SERVICE: Final = "seminar.v1.Ranker"
GATEWAY_METHOD: Final = "Rank"
AB_BUCKETS: Final = 10_000

# Build targets.
TARGET_CPU: Final = "cpu"
TARGET_GPU: Final = "gpu"

# Default loopback ports for local runs (tests pick free ports instead).
DEFAULT_GRPC_PORT: Final = 8001
DEFAULT_HTTP_PORT: Final = 8000
DEFAULT_METRICS_PORT: Final = 8002
DEFAULT_GATEWAY_PORT: Final = 50051
DEFAULT_GATEWAY_METRICS_PORT: Final = 9102
DEFAULT_HEALTH_PORT: Final = 8003  # `seminar serve`'s own /live, /ready, /status, /metrics

# Header that unlocks Triton's model-repository API (load, unload, index) under `seminar serve`.
ADMIN_KEY_HEADER: Final = "seminar-admin-key"
