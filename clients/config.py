"""The A/B experiment config of the gateway: typed, validated, and the bucketing rule.

A config file is YAML:

    salt: exp-2026-11            # changing the salt reshuffles every user
    arms:                        # (model, version) pairs in Triton, docs/design.md section 5
      - {name: control,   model: seminar_v1, version: 1, weight: 50}
      - {name: treatment, model: seminar_v2, version: 2, weight: 50}
    shadow: {name: shadow, model: seminar_v2, version: 2}   # optional, never returned
    limits: {max_candidates: 1000, max_query_bytes: 256, deadline_ms: 1000, max_inflight: 256}

A user's arm is drawn by weighted rendezvous hashing: every arm with weight > 0 gets the
score -ln(u) / weight, where u in (0, 1) is `blake2b(salt:user_id:arm_name)`, and the lowest
score wins. The scores are independent exponential draws with rates equal to the weights, so an
arm wins with probability weight / sum of weights; and since raising one arm's weight lowers
only that arm's scores, it moves users only into that arm (lowering it, only out of it), for
any number of arms. The same user stays in the same arm until the salt or the weights change.

`ExperimentConfig` is frozen: the gateway swaps the whole object on reload, so a request that
started under the old config finishes under it.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seminar.clients.attribution import new_request_id
from seminar.contract import AB_BUCKETS
from seminar.errors import UsageError

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
LIMIT_FIELDS = ("max_candidates", "max_query_bytes", "deadline_ms", "max_inflight")

# The top 53 bits of a hash (a double's precision), (h + 0.5) / 2**53, are a uniform draw
# strictly inside (0, 1): never 0 (an infinite score) nor 1 (a score of 0 for every weight).
_UNIFORM_BITS = 53


@dataclass(frozen=True)
class Arm:
    """One arm of the experiment: a (model, version) pair in Triton and its traffic weight."""

    name: str
    model: str
    version: int
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"arm name {self.name!r} must match {_NAME_RE.pattern}")
        if not isinstance(self.model, str) or not _NAME_RE.match(self.model):
            raise ValueError(
                f"arm {self.name!r}: model {self.model!r} must match {_NAME_RE.pattern}"
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(
                f"arm {self.name!r}: version must be an integer >= 1, got {self.version!r}"
            )
        if (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, int | float)
            or self.weight < 0
        ):
            raise ValueError(
                f"arm {self.name!r}: weight must be a number >= 0, got {self.weight!r}"
            )

    @property
    def model_version(self) -> str:
        """The label the gateway returns and meters, e.g. "seminar_v1:1"."""
        return f"{self.model}:{self.version}"


@dataclass(frozen=True)
class Limits:
    """Request limits the gateway enforces before calling Triton."""

    max_candidates: int = 1000
    max_query_bytes: int = 256
    deadline_ms: int = 1000  # a request's budget; a client deadline shorter than this wins
    # Triton calls outstanding at once, including those whose caller gave up (the gateway never
    # cancels a call inside Triton); beyond it requests are shed with RESOURCE_EXHAUSTED.
    max_inflight: int = 256

    def __post_init__(self) -> None:
        for name in LIMIT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limits.{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Salt, arms, optional shadow arm and limits; `assign` maps a user id to an arm."""

    salt: str
    arms: tuple[Arm, ...]
    shadow: Arm | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not isinstance(self.salt, str) or not self.salt:
            raise ValueError("salt must be a non-empty string")
        if not self.arms:
            raise ValueError("arms must list at least one arm")
        names = [arm.name for arm in self.arms]
        if self.shadow is not None:
            names.append(self.shadow.name)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"arms: duplicate arm name(s) {duplicates}")
        for arm in self.arms:
            # Every ranking an arm serves carries an id naming it (seminar.clients.attribution);
            # names too long for an event's request_id would leave its events unattributed.
            new_request_id(arm.name, arm.model, arm.version)
        if sum(arm.weight for arm in self.arms) <= 0:
            raise ValueError("arms: the weights must not all be zero")

    def shares(self) -> dict[str, float]:
        """The expected share of users of each arm: weight / sum of weights."""
        total = sum(arm.weight for arm in self.arms)
        return {arm.name: arm.weight / total for arm in self.arms}

    def assign(self, user_id: str) -> Arm:
        """The arm that serves `user_id`: a pure function of (salt, weights, user id); the arm
        with the lowest rendezvous score. An arm of weight 0 is never assigned."""
        return min(
            (arm for arm in self.arms if arm.weight > 0),
            key=lambda arm: rendezvous_score(self.salt, user_id, arm),
        )

    @classmethod
    def from_dict(cls, raw: Any) -> ExperimentConfig:
        """Build from parsed YAML; unknown keys are errors (a typo must not pass silently)."""
        if not isinstance(raw, dict):
            raise ValueError("the top level must be a mapping with salt, arms, ...")
        _reject_unknown(raw, {"salt", "arms", "shadow", "limits"}, "top level")
        arms_raw = raw.get("arms")
        if not isinstance(arms_raw, list):
            raise ValueError("arms must be a list of {name, model, version, weight}")
        arms = tuple(_arm(a, f"arms[{i}]") for i, a in enumerate(arms_raw))
        shadow = None if raw.get("shadow") is None else _arm(raw["shadow"], "shadow", shadow=True)
        limits_raw = raw.get("limits") or {}
        if not isinstance(limits_raw, dict):
            raise ValueError("limits must be a mapping")
        _reject_unknown(limits_raw, set(LIMIT_FIELDS), "limits")
        return cls(salt=raw.get("salt"), arms=arms, shadow=shadow, limits=Limits(**limits_raw))

    def to_dict(self) -> dict[str, Any]:
        """The inverse of from_dict (what a config file holds)."""

        def arm(a: Arm) -> dict[str, Any]:
            return {"name": a.name, "model": a.model, "version": a.version, "weight": a.weight}

        out: dict[str, Any] = {"salt": self.salt, "arms": [arm(a) for a in self.arms]}
        if self.shadow is not None:
            out["shadow"] = {k: v for k, v in arm(self.shadow).items() if k != "weight"}
        out["limits"] = {name: getattr(self.limits, name) for name in LIMIT_FIELDS}
        return out


def bucket(salt: str, user_id: str) -> int:
    """Bucket of a user in [0, AB_BUCKETS): blake2b of "salt:user_id", stable across processes.
    The A/B assignment no longer uses it (see `rendezvous_score`); Triton sharding keys on it."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % AB_BUCKETS


def rendezvous_score(salt: str, user_id: str, arm: Arm) -> float:
    """-ln(u) / weight with u = blake2b("salt:user_id:arm_name") in (0, 1): an exponential draw
    of rate `arm.weight`, stable across processes (the lowest score of a user's arms wins)."""
    digest = hashlib.blake2b(f"{salt}:{user_id}:{arm.name}".encode(), digest_size=8).digest()
    top_bits = int.from_bytes(digest, "big") >> (64 - _UNIFORM_BITS)
    uniform = (top_bits + 0.5) / 2**_UNIFORM_BITS
    return -math.log(uniform) / arm.weight


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML experiment config; raise UsageError naming file and field."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UsageError(f"{path}: cannot read the config: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML: {err}") from err
    try:
        return ExperimentConfig.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{path}: {err}") from err


def write_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write atomically (temp file + rename) so a watching gateway never reads half a file."""
    import yaml

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)


def _arm(raw: Any, where: str, shadow: bool = False) -> Arm:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping with name, model, version")
    allowed = {"name", "model", "version"} | (set() if shadow else {"weight"})
    _reject_unknown(raw, allowed, where)
    missing = sorted({"name", "model", "version"} - raw.keys())
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    try:
        return Arm(**raw)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def _reject_unknown(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
