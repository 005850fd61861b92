"""`seminar simulate`: SYNTHETIC users who see rankings from the real gateway and click them.

Every visitor is an existing user of the prepared dataset (so the served model has a history
for them), drawn with a seed. What is synthetic, and labelled so everywhere (event ids start
with `synthetic-`, the summary and the JSON report say SYNTHETIC), is their behaviour:

Planted relevance. A user's liked genres are the `liked_genres` genres most over-represented
among the user's positive events compared with the catalog (affinity = the genre's share of
the user's positives / its share of the catalog; a genre counts only with at least
`min_genre_positives` positives). An item the user never interacted with is relevant when it
has a liked genre and a coin seeded by (seed, user) comes up below `relevance_probability`;
the truth is fixed before any ranking is seen and never depends on a model.

A visit. The candidates are a seeded sample of the catalog without the user's own items:
`relevant_candidates` relevant items and the rest not relevant. The visitor ranks them
through the gateway (seminar.v1.Ranker/Rank), looks at the top `shown` positions and clicks
position r with

    P(click | r, relevant) = position_bias(r) * (p_relevant if relevant else p_other),
    position_bias(r) = 1 / log2(r + 1)                          (r = 1 is the top)

Then it records the outcome through the gateway (seminar.v1.Events/Record): one clicked REC
event per click and one IMPRESSION event per shown position it did not click, each with its
position and the Rank response's request_id. A batch that meets UNAVAILABLE is resent with
the same event ids (applied once). A user's visits run in order, so the online tail the served
model reads (the user's earlier clicks) is the same on every run; the clicks themselves come
from a generator seeded by (seed, user, visit). So the same seed over the same served versions
and a log without the users' earlier clicks repeats a run whatever `concurrency` is (up to
float ties in the scores).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seminar.contract import FIRST_ITEM_INDEX
from seminar.errors import DataError, ServiceError, UsageError

if TYPE_CHECKING:
    from seminar.data.dataset import PreparedDataset

SYNTHETIC_PREFIX = "synthetic"
GENRE_PREFIX = "genre="

# The Record answers worth resending the same batch for (the log locked or briefly away).
RETRIED_RECORD_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


def position_bias(rank: int) -> float:
    """The chance a visitor examines position `rank` (1 = top): 1 / log2(rank + 1)."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return 1.0 / math.log2(rank + 1)


@dataclass(frozen=True)
class ClickModel:
    """How a SYNTHETIC visitor clicks the top `shown` positions of a ranking."""

    shown: int = 10
    p_relevant: float = 0.6  # P(click) of a relevant item at the top position
    p_other: float = 0.05  # P(click) of any other item at the top position

    def __post_init__(self) -> None:
        if self.shown < 1:
            raise ValueError(f"shown must be at least 1, got {self.shown}")
        for name in ("p_relevant", "p_other"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def click_probability(self, rank: int, relevant: bool) -> float:
        """P(click | rank, relevant) = position_bias(rank) * (p_relevant or p_other)."""
        return position_bias(rank) * (self.p_relevant if relevant else self.p_other)

    def clicks(self, relevant_by_rank: Sequence[bool], rng: np.random.Generator) -> list[bool]:
        """Clicks on the shown positions (the first `shown` of `relevant_by_rank`, best first):
        one uniform draw per position, in rank order, from `rng`."""
        shown = list(relevant_by_rank)[: self.shown]
        draws = rng.random(len(shown))
        return [
            bool(draw < self.click_probability(rank, relevant))
            for rank, (draw, relevant) in enumerate(zip(draws, shown, strict=True), 1)
        ]


@dataclass(frozen=True)
class SimulationConfig:
    """Everything a simulation draws, with its defaults in one place."""

    users: int = 200
    visits: int = 1  # visits per user, in order
    candidates: int = 50  # items ranked per visit
    relevant_candidates: int = 10  # of them relevant to the visitor (fewer when it has fewer)
    liked_genres: int = 2
    min_genre_positives: int = 2
    relevance_probability: float = 0.8
    click: ClickModel = field(default_factory=ClickModel)
    concurrency: int = 4  # users simulated at once
    timeout_s: float = 10.0  # per Rank or Record call
    record_attempts: int = 5  # a Record met by UNAVAILABLE is resent this often
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("users", "visits", "candidates", "liked_genres", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.relevant_candidates <= self.candidates:
            raise ValueError(
                f"relevant_candidates must be in 0..candidates ({self.candidates}), "
                f"got {self.relevant_candidates}"
            )
        if not 0.0 <= self.relevance_probability <= 1.0:
            raise ValueError(
                f"relevance_probability must be in [0, 1], got {self.relevance_probability}"
            )
        if self.click.shown > self.candidates:
            raise ValueError(
                f"shown ({self.click.shown}) must not exceed candidates ({self.candidates})"
            )
        if self.timeout_s <= 0 or self.record_attempts < 1:
            raise ValueError("timeout_s must be > 0 and record_attempts at least 1")


class PlantedRelevance:
    """The SYNTHETIC truth: which catalog items each user finds relevant (module docstring)."""

    def __init__(self, dataset: PreparedDataset, config: SimulationConfig) -> None:
        self.config = config
        self.item_ids = np.asarray(dataset.item_ids, dtype=np.int64)  # (I,) external ids
        genres = [i for i, name in enumerate(dataset.attributes) if name.startswith(GENRE_PREFIX)]
        if not genres:
            raise DataError(
                f"{dataset.path}: no `{GENRE_PREFIX}...` item attributes; the planted relevance "
                "of `seminar simulate` needs genres (MovieLens has them)"
            )
        self.genre_names = [dataset.attributes[i].removeprefix(GENRE_PREFIX) for i in genres]
        attrs = np.asarray(dataset.item_attrs)[FIRST_ITEM_INDEX:]  # (I, A) of real items
        # has_genre[i, g]: catalog item i (index i + 2) carries genre g.
        self.has_genre = np.stack([(attrs == a).any(axis=1) for a in genres], axis=1)
        self.catalog_share = self.has_genre.mean(axis=0)  # (G,)
        self._dataset = dataset

    def users(self) -> np.ndarray:
        """External ids of the users that can visit: those with at least one liked genre."""
        return np.asarray(
            [u for u in self._dataset.user_ids.tolist() if len(self.liked_genres(int(u)))],
            dtype=np.int64,
        )

    def visitors(self) -> list[int]:
        """`config.users` distinct visitors, a seeded sample of `users()`, in visiting order."""
        eligible = self.users()
        if len(eligible) < self.config.users:
            raise UsageError(
                f"--users {self.config.users}: the dataset has only {len(eligible)} users with "
                "a liked genre"
            )
        rng = np.random.default_rng((self.config.seed, 0))
        return [int(u) for u in rng.choice(eligible, size=self.config.users, replace=False)]

    def _seen(self, user_id: int) -> np.ndarray:
        """(I,) bool: catalog items among the user's own events."""
        history = self._dataset.history(self._dataset.user_index(user_id))
        seen = np.zeros(len(self.item_ids), dtype=bool)
        index = np.asarray(history.item, dtype=np.int64) - FIRST_ITEM_INDEX
        seen[index[index >= 0]] = True
        return seen

    def liked_genres(self, user_id: int) -> list[str]:
        """The user's liked genres, most over-represented first (module docstring)."""
        history = self._dataset.history(self._dataset.user_index(user_id))
        positive = np.asarray(history.item)[np.asarray(history.label) == 1] - FIRST_ITEM_INDEX
        positive = positive[positive >= 0]
        if not len(positive):
            return []
        counts = self.has_genre[positive].sum(axis=0)  # (G,)
        affinity = (counts / len(positive)) / np.maximum(self.catalog_share, 1e-12)
        affinity[counts < self.config.min_genre_positives] = 0.0
        # Ties broken by genre order, so the choice is the same on every machine.
        order = np.lexsort((np.arange(len(affinity)), -affinity))
        chosen = [g for g in order[: self.config.liked_genres] if affinity[g] > 0]
        return [self.genre_names[g] for g in chosen]

    def relevant(self, user_id: int) -> np.ndarray:
        """(I,) bool over the catalog (dataset item order): the user's relevant items."""
        liked = [self.genre_names.index(name) for name in self.liked_genres(user_id)]
        has_liked = self.has_genre[:, liked].any(axis=1) if liked else np.zeros(len(self.item_ids))
        coin = np.random.default_rng((self.config.seed, 1, user_id)).random(len(self.item_ids))
        return has_liked & (coin < self.config.relevance_probability) & ~self._seen(user_id)

    def candidates(self, user_id: int, rng: np.random.Generator) -> tuple[list[int], set[int]]:
        """A visit's candidates (external ids, shuffled) and which of them are relevant."""
        relevant = self.relevant(user_id)
        unseen_other = ~relevant & ~self._seen(user_id)
        relevant_ids = self.item_ids[relevant]
        other_ids = self.item_ids[unseen_other]
        n_relevant = min(self.config.relevant_candidates, len(relevant_ids))
        n_other = self.config.candidates - n_relevant
        if n_other > len(other_ids):
            raise DataError(
                f"user {user_id}: only {len(other_ids)} unseen items that are not relevant, "
                f"{n_other} needed; use fewer --candidates"
            )
        chosen_relevant = rng.choice(relevant_ids, size=n_relevant, replace=False)
        chosen = np.concatenate([chosen_relevant, rng.choice(other_ids, n_other, replace=False)])
        rng.shuffle(chosen)
        return [int(i) for i in chosen], {int(i) for i in chosen_relevant}


@dataclass
class ArmOutcome:
    """What one arm served and what its SYNTHETIC users did."""

    model_version: str = ""
    users: set[int] = field(default_factory=set)
    visits: int = 0
    impressions: int = 0  # shown positions, clicked or not
    clicks: int = 0
    relevant_shown: int = 0  # shown positions that held a relevant item

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["users"] = len(self.users)
        out["ctr"] = self.ctr
        return out


@dataclass
class SimulationReport:
    """Per arm outcomes plus what was sent to Record and acknowledged."""

    config: SimulationConfig
    arms: dict[str, ArmOutcome] = field(default_factory=dict)
    events_sent: int = 0
    events_acknowledged: int = 0
    duplicates: int = 0
    resent_batches: int = 0
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "synthetic": True,
            "config": asdict(self.config),
            "arms": {name: arm.to_dict() for name, arm in sorted(self.arms.items())},
            "events_sent": self.events_sent,
            "events_acknowledged": self.events_acknowledged,
            "duplicates": self.duplicates,
            "resent_batches": self.resent_batches,
            "wall_s": self.wall_s,
        }

    def markdown(self) -> str:
        """The per-arm summary table (SYNTHETIC users)."""
        rows = [
            "SYNTHETIC users (seminar simulate): outcomes per arm",
            "",
            "| arm | model:version | users | visits | impressions | clicks | CTR "
            "| relevant shown |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, arm in sorted(self.arms.items()):
            rows.append(
                f"| {name} | {arm.model_version} | {len(arm.users)} | {arm.visits} | "
                f"{arm.impressions} | {arm.clicks} | {arm.ctr:.4f} | "
                f"{arm.relevant_shown / max(arm.impressions, 1):.3f} |"
            )
        rows.append("")
        rows.append(
            f"events sent {self.events_sent}, acknowledged {self.events_acknowledged} "
            f"(duplicates {self.duplicates}, resent batches {self.resent_batches}); "
            f"{self.wall_s:.1f} s"
        )
        return "\n".join(rows)


Progress = Callable[[int, int], None]  # (users done, users in all)


def load_planted(data: str | Path, config: SimulationConfig) -> PlantedRelevance:
    """The planted relevance over the prepared dataset at `data`."""
    from seminar.data.dataset import PreparedDataset

    return PlantedRelevance(PreparedDataset.load(data), config)


def run_simulation(
    address: str,
    planted: PlantedRelevance,
    progress: Progress | None = None,
) -> SimulationReport:
    """Simulate `planted.config.users` SYNTHETIC users against the gateway at `address`."""
    import grpc

    from seminar.clients.record_load import CHANNEL_OPTIONS

    config = planted.config
    visitors = planted.visitors()
    report = SimulationReport(config=config)
    lock = threading.Lock()
    done = 0
    started = time.monotonic()
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        check_gateway(channel, address, config.timeout_s)
        calls = GatewayCalls(channel, config)

        def simulate_user(user_id: int) -> None:
            nonlocal done
            for visit in range(config.visits):
                outcome = simulate_visit(calls, planted, user_id, visit)
                with lock:
                    outcome.add_to(report)
            with lock:
                done += 1
                if progress is not None:
                    progress(done, len(visitors))

        with ThreadPoolExecutor(config.concurrency, thread_name_prefix="visitor") as pool:
            futures = [pool.submit(simulate_user, user) for user in visitors]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                # The first failure ends the run with its error: no user starts after it.
                for pending in futures:
                    pending.cancel()
                raise
    report.wall_s = time.monotonic() - started
    return report


def check_gateway(channel, address: str, timeout_s: float) -> None:
    """ServiceError unless the gateway at `address` answers and serves Record.

    An empty Record batch probes the service without writing anything: a gateway that serves
    Record refuses it as INVALID_ARGUMENT, one started without --event-log answers
    UNIMPLEMENTED."""
    import grpc

    from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc

    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise ServiceError(f"gateway {address}: not reachable within {timeout_s:g} s") from None
    try:
        ranker_pb2_grpc.EventsStub(channel).Record(ranker_pb2.RecordRequest(), timeout=timeout_s)
    except grpc.RpcError as err:
        if err.code() is grpc.StatusCode.INVALID_ARGUMENT:
            return
        if err.code() is grpc.StatusCode.UNIMPLEMENTED:
            raise ServiceError(
                f"gateway {address} serves no Record (seminar.v1.Events): start it with "
                "--event-log URL so the clicks can be recorded"
            ) from None
        raise ServiceError(
            f"gateway {address}: Record probe failed: {err.code().name} {err.details()}"
        ) from None


class GatewayCalls:
    """Rank and Record over one shared channel (gRPC channels are thread-safe)."""

    def __init__(self, channel, config: SimulationConfig) -> None:
        from seminar.clients.proto import ranker_pb2_grpc

        self.ranker = ranker_pb2_grpc.RankerStub(channel)
        self.events = ranker_pb2_grpc.EventsStub(channel)
        self.config = config

    def rank(self, user_id: int, candidates: list[int]):
        """The RankResponse; ServiceError (or DataError for refused candidates) otherwise."""
        import grpc

        from seminar.clients.proto import ranker_pb2

        request = ranker_pb2.RankRequest(user_id=str(user_id), query="", candidate_ids=candidates)
        try:
            return self.ranker.Rank(request, timeout=self.config.timeout_s)
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise DataError(
                    f"the gateway refused a request of user {user_id}: {err.details()}; is "
                    "--data the dataset the served versions were built from?"
                ) from None
            raise ServiceError(f"Rank failed: {err.code().name} {err.details()}") from None

    def record(self, events: list) -> tuple[int, int]:
        """Record `events` (resent on UNAVAILABLE); returns (duplicates, resends)."""
        import grpc

        from seminar.clients.proto import ranker_pb2
        from seminar.clients.record_load import event_message

        request = ranker_pb2.RecordRequest(events=[event_message(event) for event in events])
        for attempt in range(self.config.record_attempts):
            try:
                answer = self.events.Record(request, timeout=self.config.timeout_s)
            except grpc.RpcError as err:
                if err.code().name in RETRIED_RECORD_CODES:
                    time.sleep(0.1 * (attempt + 1))
                    continue
                raise ServiceError(f"Record failed: {err.code().name} {err.details()}") from None
            return answer.duplicates, attempt
        raise ServiceError(
            f"Record failed {self.config.record_attempts} times with UNAVAILABLE or a deadline"
        )


@dataclass(frozen=True)
class VisitOutcome:
    """One visit: who, which arm served it, what was shown and clicked, what was recorded."""

    user_id: int
    arm: str
    model_version: str
    shown: int
    clicks: int
    relevant_shown: int
    events: int
    duplicates: int
    resends: int

    def add_to(self, report: SimulationReport) -> None:
        arm = report.arms.setdefault(self.arm, ArmOutcome(model_version=self.model_version))
        arm.users.add(self.user_id)
        arm.visits += 1
        arm.impressions += self.shown
        arm.clicks += self.clicks
        arm.relevant_shown += self.relevant_shown
        report.events_sent += self.events
        report.events_acknowledged += self.events  # record() returns only once acknowledged
        report.duplicates += self.duplicates
        report.resent_batches += self.resends > 0


def simulate_visit(
    calls: GatewayCalls, planted: PlantedRelevance, user_id: int, visit: int
) -> VisitOutcome:
    """Rank, click, Record: one visit of one SYNTHETIC user (module docstring)."""
    config = planted.config
    rng = np.random.default_rng((config.seed, 2, user_id, visit))
    candidates, relevant = planted.candidates(user_id, rng)
    response = calls.rank(user_id, candidates)
    ranking = [int(item) for item in response.item_ids]
    shown = ranking[: config.click.shown]
    flags = [item in relevant for item in shown]
    clicks = config.click.clicks(flags, rng)
    arm, model_version = served_arm(response)
    events = visit_events(user_id, response.request_id, shown, clicks)
    duplicates, resends = calls.record(events)
    return VisitOutcome(
        user_id=user_id,
        arm=arm,
        model_version=model_version,
        shown=len(shown),
        clicks=sum(clicks),
        relevant_shown=sum(flags),
        events=len(events),
        duplicates=duplicates,
        resends=resends,
    )


def served_arm(response) -> tuple[str, str]:
    """(arm, "model:version") that served `response`, from its request_id."""
    from seminar.clients.attribution import parse_request_id

    served = parse_request_id(response.request_id)
    if served is None:
        raise ServiceError(
            f"the gateway answered a request_id {response.request_id!r} that names no arm; "
            "is it a gateway of this version?"
        )
    return served.arm, f"{served.model}:{served.version}"


def visit_events(user_id: int, request_id: str, shown: list[int], clicks: list[bool]) -> list:
    """The outcome of a visit as events: a clicked REC per click, an IMPRESSION per shown
    position not clicked; position = rank, every event carries the request_id. Event ids are
    `synthetic-<digest of request_id>-<position>`: unique per ranking, the same on a resend,
    and short whatever the arm names (the request_id itself may use most of an id's length)."""
    from seminar.events import Event, EventType

    ranking = hashlib.blake2b(request_id.encode(), digest_size=12).hexdigest()
    return [
        Event(
            event_id=f"{SYNTHETIC_PREFIX}-{ranking}-{position}",
            user_id=user_id,
            item_id=item,
            query="",
            type=EventType.REC if clicked else EventType.IMPRESSION,
            clicked=clicked,
            request_id=request_id,
            position=position,
        )
        for position, (item, clicked) in enumerate(zip(shown, clicks, strict=True), 1)
    ]
