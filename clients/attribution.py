"""Request ids that say who served a ranking, so that events are attributed without state.

The gateway gives every RankResponse a `request_id` made by `new_request_id(arm, model,
version)`; a client sends it back in the Record events that answer that ranking (with the
position the item was served at). `parse_request_id` reads the arm and (model, version) back
out of the id alone, so attribution needs no table shared between gateway replicas and
survives their restarts, and an A/B report can attribute events read straight from the log.

An id is `ARM~MODEL~VERSION~NONCE~CHECK`: the names as the experiment config spells them
(letters, digits, `_ . -`), the version in decimal, 8 random URL-safe characters (so that two
rankings of one user are told apart) and 8 characters of a blake2b checksum of the rest. Every
character is URL-safe (RFC 3986 unreserved), and it is compact: 29 characters plus the names,
within EventLimits.max_id_chars for any config the gateway accepts (ExperimentConfig refuses
arms whose ids would not fit). Clients treat it as opaque.

The checksum makes a garbled or hand-made id parse to None, which is then simply not
attributed. It is not a signature: whoever may call Record can write any event, and an id
forged with a valid checksum attributes only that client's own events.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass

from seminar.events import Event, EventLimits, EventType

SEPARATOR = "~"  # unreserved in URLs and absent from arm and model names
NONCE_BYTES = 6  # 8 base64url characters
CHECK_BYTES = 6  # 8 base64url characters
_NAME = r"[A-Za-z0-9_.-]{1,64}"
_B64 = r"[A-Za-z0-9_-]{8}"
_ID_RE = re.compile(
    rf"^(?P<arm>{_NAME})~(?P<model>{_NAME})~(?P<version>[1-9][0-9]{{0,18}})~"
    rf"(?P<nonce>{_B64})~(?P<check>{_B64})$"
)
# Characters an id adds to its arm, model and version: four separators, nonce, checksum.
OVERHEAD_CHARS = 4 + 8 + 8


@dataclass(frozen=True)
class Served:
    """Who served a ranking: the arm and the (model, version) it called in Triton."""

    arm: str
    model: str
    version: int

    @property
    def model_version(self) -> str:
        """The label the gateway meters, e.g. "seminar_v1:1" (Arm.model_version)."""
        return f"{self.model}:{self.version}"


def request_id_chars(arm: str, model: str, version: int) -> int:
    """The length of every id `new_request_id(arm, model, version)` makes."""
    return len(arm) + len(model) + len(str(version)) + OVERHEAD_CHARS


def _check(body: str) -> str:
    digest = hashlib.blake2b(body.encode(), digest_size=CHECK_BYTES).digest()
    return base64.urlsafe_b64encode(digest).decode()


def new_request_id(arm: str, model: str, version: int) -> str:
    """A fresh id naming (arm, model, version); ValueError for names the grammar refuses or an
    id over EventLimits.max_id_chars (the config's validation keeps the gateway from both)."""
    nonce = base64.urlsafe_b64encode(secrets.token_bytes(NONCE_BYTES)).decode()
    body = SEPARATOR.join((arm, model, str(version), nonce))
    text = f"{body}{SEPARATOR}{_check(body)}"
    if parse_request_id(text) is None:
        raise ValueError(
            f"cannot make a request id of arm {arm!r}, model {model!r}, version {version!r}: "
            f"names of 1-64 characters [A-Za-z0-9_.-], a version >= 1, and at most "
            f"{EventLimits().max_id_chars} characters in all"
        )
    return text


def parse_request_id(text: str) -> Served | None:
    """Who served the ranking `text` names; None for "" or an id that is not one of
    new_request_id's (garbled, truncated, hand-made): such events are not attributed."""
    if not text or len(text) > EventLimits().max_id_chars:
        return None
    match = _ID_RE.match(text)
    if match is None:
        return None
    body = text[: match.start("check") - 1]
    if not secrets.compare_digest(_check(body), match["check"]):
        return None
    return Served(match["arm"], match["model"], int(match["version"]))


def outcome(event: Event) -> tuple[int, int] | None:
    """The (impressions, clicks) an event adds to the ranking it answers: an IMPRESSION is
    (1, 0), a clicked event (1, 1) (a click was shown too), any other event None. The one rule
    of the gateway's counters and of `seminar ab report`."""
    if event.clicked:
        return 1, 1
    if event.type is EventType.IMPRESSION:
        return 1, 0
    return None
