"""SYNTHETIC lifelong logs with planted structure, for scale tests and tests with a known truth.

Generative story (every draw from one seeded generator):
- T latent topics. Topic t owns a vocabulary of made-up words (no word belongs to two topics),
  a catalog of queries of 1 to `max_query_words` distinct words of that vocabulary, a few
  brands, and a unit "image" centre vector.
- Item i has topic z_i (every topic gets items), text = words of its topic (plus one shared
  filler word), attributes `category=` (topic-correlated), `brand=` (topic-specific), `color=`
  (pure noise), and a SYNTHETIC image embedding = centre[z_i] + Gaussian noise. Popularity within a
  topic is Zipf-like. An `untitled` share of items get filler text and the category and brand of
  a random topic instead: only their image shows their topic.
- Images (`images`): a rendered JPEG per item instead of the vector (seminar.data.images), of
  its image topic: its topic, or with `image_topics` N one of N planted image topics drawn
  independently of it, of which each user prefers one (`image_preference` of the user's
  events are on items of that image topic).
- User u has an interest mixture theta_u ~ Dirichlet(concentration) over topics and a log-normal
  number of events around `events_per_user`, clipped to [min_events, max_events].
- Each event picks a topic from theta_u (or, with probability `explore`, uniformly), is a search
  event with probability `search_fraction`, picks an item of that topic and, for a search,
  a query from that topic's catalog: a query names its item's topic and no other, and is positive with probability 0.05 + 0.85 * theta_u[z] / max(theta_u): labels
  follow interest. Gaps between events are exponential.

Events are generated in blocks of 16 users (each from its own seeded stream) and written a chunk at a time through the shared pipeline
(seminar.data.prepare), so memory stays bounded by the chunk size. The planted truth goes to
`planted/` (user_mixture (U, T), item_topic (I+2,), query_topic (Q,), topic_words.json) and is
described in meta.json["planted"]; `PlantedTopics.load(dataset)` reads which items, queries and
words belong to each topic.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa

from seminar.contract import FIRST_ITEM_INDEX
from seminar.data.images import (
    DISTINCT_TOPICS,
    SYNTHETIC_IMAGES,
    RenderConfig,
    write_synthetic_images,
)
from seminar.data.prepare import (
    Catalog,
    DatasetWriter,
    PrepareConfig,
    Stats,
    atomic_output,
    write_meta,
)
from seminar.data.schema import EVENTS_SCHEMA, IMAGE_REF, EventType, validate_items

SYNTHETIC_LABEL: Final = "SYNTHETIC"
POSITIVE_RULE: Final = "label 1 with probability 0.05 + 0.85 * interest(topic) / max interest"
IMAGE_NOTE: Final = "synthetic: noisy topic centre vector, not a rendered image"
IMAGE_RENDER_NOTE: Final = (
    "synthetic: rendered JPEG per item (shape, colour, texture of its image topic, with noise), "
    "embedded by the CNN image tower"
)
_START: Final = 1_420_070_400  # 2015-01-01, first possible event
_SPAN: Final = 5 * 365 * 86_400  # users start within five years
_MEAN_GAP: Final = 6 * 3600  # seconds between a user's events, on average
# Users are generated in blocks with their own seeded stream, so the output depends on the seed
# and the config only, never on how many events the writer takes per chunk.
BLOCK_USERS: Final = 16
_CONSONANTS: Final = "bdfgklmnprstvz"
_VOWELS: Final = "aeiou"
_COLORS: Final = ("red", "green", "blue", "black", "white", "gold", "grey", "pink")


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 1000
    events_per_user: int = 200  # mean; see length_spread
    items: int = 2000
    topics: int = 20
    seed: int = 0
    length_spread: float = 0.5  # sigma of the log-normal user length; 0 = every user exactly
    min_events: int = 5
    max_events: int = 0  # 0 = no upper bound on a user's events
    image_dim: int = 32  # 0 = no image modality
    image_noise: float = 0.5  # noise norm relative to the unit topic centre
    # Render one JPEG per item (images/<item_id>.jpg) from its image topic; prepare embeds them
    # with DALI and the CNN image tower instead of the noisy vector (image_dim is then unused).
    images: bool = False
    # 0: an item's image topic is its topic. N: items get one of N planted image topics, drawn
    # independently of their topic (so text and attributes say nothing of it), and each user
    # prefers one: `image_preference` of the user's events go to items of that image topic.
    image_topics: int = 0
    image_preference: float = 0.8
    # Share of items whose text and attributes do not reveal their topic (only the image does).
    untitled: float = 0.0
    words_per_topic: int = 12
    queries_per_topic: int = 20
    max_query_words: int = 3  # a query is 1 to this many distinct words of its topic
    item_words: int = 5  # topic words per item text
    brands_per_topic: int = 4
    search_fraction: float = 0.25
    explore: float = 0.1
    concentration: float = 0.3  # Dirichlet alpha: small = few interests per user

    def __post_init__(self) -> None:
        positive = ("users", "events_per_user", "items", "topics", "words_per_topic")
        positive += ("queries_per_topic", "item_words", "brands_per_topic", "min_events")
        positive += ("max_query_words",)
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.items < self.topics:
            raise ValueError(f"items ({self.items}) must be >= topics ({self.topics})")
        if self.item_words > self.words_per_topic:
            raise ValueError(f"item_words must be <= words_per_topic ({self.words_per_topic})")
        if self.max_query_words > self.words_per_topic:
            raise ValueError(f"max_query_words must be <= words_per_topic ({self.words_per_topic})")
        # Half of the distinct queries a topic's words allow: the catalog is drawn by rejection.
        possible = query_count(self.words_per_topic, self.max_query_words)
        if self.queries_per_topic > possible // 2:
            raise ValueError(
                f"queries_per_topic must be <= {possible // 2} (half of the {possible} queries of "
                f"1 to {self.max_query_words} distinct words)"
            )
        if 0 < self.max_events < self.min_events:
            raise ValueError(
                f"max_events must be 0 (no bound) or >= min_events ({self.min_events}), "
                f"got {self.max_events}"
            )
        for name in ("search_fraction", "explore", "untitled"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("length_spread", "image_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.image_dim < 0:
            raise ValueError(f"image_dim must be >= 0, got {self.image_dim}")
        if self.image_topics < 0:
            raise ValueError(f"image_topics must be >= 0, got {self.image_topics}")
        if self.image_topics and self.items // self.topics < self.image_topics:
            raise ValueError(
                f"image_topics ({self.image_topics}) must be <= items per topic "
                f"({self.items} // {self.topics}): every topic needs an item of each image topic"
            )
        shown = self.image_topics or self.topics
        if self.images and shown > DISTINCT_TOPICS:
            raise ValueError(
                f"rendered images tell at most {DISTINCT_TOPICS} image topics apart, got {shown}"
            )
        if not 0.0 <= self.image_preference <= 1.0:
            raise ValueError(f"image_preference must be in [0, 1], got {self.image_preference}")
        if self.concentration <= 0:
            raise ValueError(f"concentration must be > 0, got {self.concentration}")


@dataclass(frozen=True)
class World:
    """The planted structure shared by all users (items, queries, topics)."""

    topic_words: list[list[str]]  # (T, V)
    item_topic: np.ndarray  # (I,) int32, catalog order (item index - 2)
    image_topic: np.ndarray  # (I,) int32 what each item's image shows (= item_topic without N)
    items: pa.Table  # canonical catalog
    queries: list[str]  # (Q,) sorted, queries[0] == ""
    query_topic: np.ndarray  # (Q,) int32, -1 for the empty query
    topic_queries: np.ndarray  # (T, Qt) int32 query indices of each topic
    # Item sampling within a segment (a topic, or a topic and image topic pair): items sorted
    # by segment, keys = segment + cumulative weight.
    items_by_topic: np.ndarray  # (I,) int64 catalog positions
    item_keys: np.ndarray  # (I,) float64 ascending
    topic_end: np.ndarray  # (T * N,) int64 end of each segment in items_by_topic


def _made_up_words(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct pronounceable nonsense words (2-3 consonant-vowel syllables)."""
    words: dict[str, None] = {}
    while len(words) < count:
        n_syllables = rng.integers(2, 4)
        word = "".join(
            rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(n_syllables)
        )
        words[word] = None
    return list(words)


def query_count(words: int, max_words: int) -> int:
    """Distinct queries of 1 to `max_words` distinct words out of `words` (order matters)."""
    return sum(math.perm(words, n) for n in range(1, max_words + 1))


def _topic_queries(
    rng: np.random.Generator, words: list[str], count: int, max_words: int
) -> list[str]:
    """`count` distinct queries of 1 to `max_words` distinct words of one topic."""
    queries: dict[str, None] = {}
    while len(queries) < count:
        n_words = int(rng.integers(1, max_words + 1))
        queries[" ".join(rng.choice(words, size=n_words, replace=False).tolist())] = None
    return list(queries)


def make_world(config: SyntheticConfig, rng: np.random.Generator) -> World:
    t, v = config.topics, config.words_per_topic
    vocab = _made_up_words(rng, t * v + 16)
    topic_words = [vocab[k * v : (k + 1) * v] for k in range(t)]
    fillers = vocab[t * v :]  # shared by every topic: lexical noise

    # Items: every topic non-empty, Zipf-like popularity within a topic.
    item_topic = rng.permutation(np.arange(config.items) % t).astype(np.int32)
    texts, attributes = [], []
    # Untitled items (their own stream, so the rest of the world is the same without them):
    # filler text and a category and brand of a random topic say nothing of their topic.
    hidden = np.random.default_rng((config.seed, 5))
    untitled = hidden.random(config.items) < config.untitled
    for z, plain in zip(item_topic, untitled, strict=True):
        words = rng.choice(topic_words[z], size=config.item_words, replace=False).tolist()
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(fillers)))
        category = z if rng.random() < 0.85 else rng.integers(t)
        brand_topic = z if rng.random() < 0.7 else rng.integers(t)
        if plain:
            words = hidden.choice(fillers, size=config.item_words + 1, replace=False).tolist()
            category, brand_topic = hidden.integers(t), hidden.integers(t)
        texts.append(" ".join(words))
        brand = f"b{brand_topic:03d}{rng.integers(config.brands_per_topic)}"
        attributes.append(
            [f"category=c{category:03d}", f"brand={brand}", f"color={rng.choice(_COLORS)}"]
        )
    columns: dict[str, Any] = {
        "item_id": pa.array(np.arange(1, config.items + 1), pa.int64()),
        "text": pa.array(texts, pa.string()),
        "attributes": pa.array(attributes, pa.list_(pa.string())),
    }
    image_topic = _image_topics(config, item_topic)
    if config.images:
        columns[IMAGE_REF] = pa.array(
            [f"{SYNTHETIC_IMAGES}/{i}.jpg" for i in range(1, config.items + 1)], pa.string()
        )
    elif config.image_dim:
        shown = config.image_topics or t
        centres = rng.standard_normal((shown, config.image_dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        noise = rng.standard_normal((config.items, config.image_dim)) / np.sqrt(config.image_dim)
        image = (centres[image_topic] + config.image_noise * noise).astype(np.float32)  # (I, E)
        columns["image_embedding"] = pa.array(list(image), pa.list_(pa.float32()))
    items = validate_items(pa.table(columns), Path("<synthetic items>"))

    # Popularity sampling within a segment: items sorted by segment get the key segment +
    # cumulative popularity share in (0, 1], so searchsorted(item_keys, segment + u) draws an
    # item of `segment`. A segment is a topic, or with N image topics topic * N + image topic.
    per_topic = max(config.image_topics, 1)
    segment = item_topic * per_topic + (image_topic if config.image_topics else 0)
    n_segments = t * per_topic
    popularity = 1.0 / (rng.permutation(config.items) % 64 + 1.0) ** 0.7  # Zipf-like
    order = np.lexsort((np.arange(config.items), segment))  # by segment, stable
    sorted_topics = segment[order]
    w = popularity[order]
    sizes = np.bincount(sorted_topics, minlength=n_segments)  # items per segment
    totals = np.bincount(sorted_topics, weights=w, minlength=n_segments)  # popularity per segment
    within = np.cumsum(w) - np.repeat(np.cumsum(totals) - totals, sizes)  # (I,) running share
    item_keys = sorted_topics + within / totals[sorted_topics]
    topic_end = np.cumsum(sizes).astype(np.int64)

    # Queries: distinct sequences of 1 to max_query_words distinct words of one topic (topics
    # never share a word, so a query names exactly one topic).
    per_topic = [
        _topic_queries(rng, words, config.queries_per_topic, config.max_query_words)
        for words in topic_words
    ]
    queries = ["", *sorted(q for qs in per_topic for q in qs)]
    index = {q: k for k, q in enumerate(queries)}
    topic_queries = np.array([[index[q] for q in qs] for qs in per_topic], np.int32)  # (T, Qt)
    query_topic = np.full(len(queries), -1, np.int32)
    for z, qs in enumerate(topic_queries):
        query_topic[qs] = z

    return World(
        topic_words=topic_words,
        item_topic=item_topic,
        image_topic=image_topic,
        items=items,
        queries=queries,
        query_topic=query_topic,
        topic_queries=topic_queries,
        items_by_topic=order.astype(np.int64),
        item_keys=item_keys,
        topic_end=topic_end,
    )


def _image_topics(config: SyntheticConfig, item_topic: np.ndarray) -> np.ndarray:
    """(I,) int32 image topic per item: its topic, or with N image topics a balanced draw
    within each topic (every topic has items of every image topic) from its own stream."""
    if not config.image_topics:
        return item_topic
    rng = np.random.default_rng((config.seed, 2))
    order = np.lexsort((rng.random(config.items), item_topic))  # by topic, shuffled within
    sizes = np.bincount(item_topic, minlength=config.topics)
    rank = np.arange(config.items) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    image_topic = np.empty(config.items, np.int32)
    image_topic[order] = rank % config.image_topics
    return image_topic


def _sample_items(world: World, segment: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Catalog positions of popularity-weighted items of `segment` (n,), r uniform in [0, 1)."""
    pos = np.searchsorted(world.item_keys, segment + r, side="left")
    pos = np.minimum(pos, world.topic_end[segment] - 1)  # guard rounding at a segment's end
    return world.items_by_topic[pos]


def _generate_events(
    world: World,
    config: SyntheticConfig,
    rng: np.random.Generator,
    mixtures: np.ndarray,
    counts: np.ndarray,
    first_user: int,
    liked_images: np.ndarray,
) -> pa.Table:
    """Canonical events of users first_user.. (mixtures (Uc, T), counts (Uc,), preferred image
    topics (Uc,)), time-ordered."""
    n_users, t = mixtures.shape
    n = int(counts.sum())
    local = np.repeat(np.arange(n_users), counts)  # (n,) user of each event
    # Topic per event: searchsorted over per-user cumulative mixtures laid end to end.
    cum = np.cumsum(mixtures, axis=1)
    cum /= cum[:, -1:]
    keys = (np.arange(n_users)[:, None] + cum).ravel()  # (Uc * T,) ascending
    topic = np.searchsorted(keys, local + rng.random(n), side="left") - local * t
    topic = np.clip(topic, 0, t - 1)
    explore = rng.random(n) < config.explore
    topic[explore] = rng.integers(0, t, size=int(explore.sum()))

    segment = topic
    if config.image_topics:
        liked = rng.random(n) < config.image_preference
        image_topic = np.where(
            liked, liked_images[local], rng.integers(0, config.image_topics, size=n)
        )
        segment = topic * config.image_topics + image_topic
    item = _sample_items(world, segment, rng.random(n))  # (n,) catalog positions
    search = rng.random(n) < config.search_fraction
    query = np.where(
        search, world.topic_queries[topic, rng.integers(0, config.queries_per_topic, size=n)], 0
    ).astype(np.int32)
    interest = mixtures[local, topic] / mixtures.max(axis=1)[local]
    label = (rng.random(n) < 0.05 + 0.85 * interest).astype(np.int8)

    start = _START + rng.integers(0, _SPAN, size=n_users)
    gaps = rng.exponential(_MEAN_GAP, size=n).astype(np.int64)
    # One running clock over the block, restarted at each user's own start time.
    time = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (Uc,) first event of each user
    time = time - np.repeat(time[first] - gaps[first], counts) + np.repeat(start, counts)

    kinds = pa.array([EventType.REC.value, EventType.SEARCH.value], pa.string())
    return pa.Table.from_arrays(
        [
            pa.array(first_user + local + 1, pa.int64()),  # external user ids start at 1
            pa.array(item + 1, pa.int64()),  # external item ids start at 1
            pa.array(time, pa.int64()),
            pa.DictionaryArray.from_arrays(search.astype(np.int8), kinds).cast(pa.string()),
            pa.DictionaryArray.from_arrays(query, pa.array(world.queries)).cast(pa.string()),
            pa.array(label, pa.int8()),
        ],
        schema=EVENTS_SCHEMA,
    )


def user_lengths(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """(U,) events per user: log-normal around the mean (exact when length_spread = 0)."""
    if config.length_spread == 0:
        return np.full(config.users, config.events_per_user, np.int64)
    sigma = config.length_spread
    raw = rng.lognormal(np.log(config.events_per_user) - sigma**2 / 2, sigma, size=config.users)
    lengths = np.maximum(np.rint(raw), config.min_events).astype(np.int64)
    return np.minimum(lengths, config.max_events) if config.max_events else lengths


def prepare_synthetic(config: SyntheticConfig, out: Path, prepare: PrepareConfig) -> Stats:
    """Generate a SYNTHETIC dataset into `out` through the shared pipeline."""
    rng = np.random.default_rng((config.seed, 0))
    world = make_world(config, rng)
    mixtures = rng.dirichlet(np.full(config.topics, config.concentration), size=config.users)
    counts = user_lengths(config, rng)
    # Each user's preferred image topic, from its own stream (unused without image topics).
    liked_images = np.random.default_rng((config.seed, 3)).integers(
        0, max(config.image_topics, 1), size=config.users
    )
    user_ids = np.arange(1, config.users + 1, dtype=np.int64)
    catalog = Catalog.from_table(world.items)

    with atomic_output(out) as tmp:
        if config.images:
            write_synthetic_images(
                tmp / SYNTHETIC_IMAGES,
                np.arange(1, config.items + 1),
                world.image_topic,
                config.seed,
                RenderConfig(),
            )
        writer = DatasetWriter(
            tmp, catalog, world.queries, user_ids, counts, prepare, image_base=tmp
        )
        pending: list[pa.Table] = []
        for u0 in range(0, config.users, BLOCK_USERS):
            u1 = min(u0 + BLOCK_USERS, config.users)
            block_rng = np.random.default_rng((config.seed, 1, u0 // BLOCK_USERS))
            pending.append(
                _generate_events(
                    world,
                    config,
                    block_rng,
                    mixtures[u0:u1],
                    counts[u0:u1],
                    u0,
                    liked_images[u0:u1],
                )
            )
            if sum(t.num_rows for t in pending) >= prepare.chunk_rows or u1 == config.users:
                writer.write(pa.concat_tables(pending))
                pending = []
        stats = writer.finish()
        planted = _write_planted(tmp, world, mixtures, liked_images, config)
        write_meta(
            tmp,
            name=f"synthetic-u{config.users}-e{config.events_per_user}-s{config.seed}",
            synthetic=True,
            positive_rule=POSITIVE_RULE,
            config=prepare,
            stats=stats,
            sources={"generator": "seminar.data.synthetic", "label": SYNTHETIC_LABEL},
            extra={"planted": planted, "image": _image_note(config)},
        )
    return stats


def _image_note(config: SyntheticConfig) -> str | None:
    """What meta.json["image"] says the image modality is."""
    if config.images:
        return IMAGE_RENDER_NOTE
    return IMAGE_NOTE if config.image_dim else None


def _write_planted(
    root: Path,
    world: World,
    mixtures: np.ndarray,
    liked_images: np.ndarray,
    config: SyntheticConfig,
) -> dict[str, Any]:
    planted = root / "planted"
    planted.mkdir()
    images: dict[str, str] = {}
    if config.images or config.image_topics:
        image_topic = np.full(len(world.image_topic) + FIRST_ITEM_INDEX, -1, np.int32)
        image_topic[FIRST_ITEM_INDEX:] = world.image_topic  # (I+2,) -1 for PAD/OOV
        np.save(planted / "image_topic.npy", image_topic)
        np.save(planted / "user_image_topic.npy", liked_images.astype(np.int32))  # (U,)
        images = {
            "image_topic": "planted/image_topic.npy",
            "user_image_topic": "planted/user_image_topic.npy",
        }
    np.save(planted / "user_mixture.npy", mixtures.astype(np.float32))  # (U, T)
    item_topic = np.full(len(world.item_topic) + FIRST_ITEM_INDEX, -1, np.int32)
    item_topic[FIRST_ITEM_INDEX:] = world.item_topic  # (I+2,) by item index, -1 for PAD/OOV
    np.save(planted / "item_topic.npy", item_topic)
    np.save(planted / "query_topic.npy", world.query_topic)  # (Q,) by query index
    (planted / "topic_words.json").write_text(json.dumps(world.topic_words))
    return {
        "label": SYNTHETIC_LABEL,
        "topics": config.topics,
        "user_mixture": "planted/user_mixture.npy",
        "item_topic": "planted/item_topic.npy",
        "query_topic": "planted/query_topic.npy",
        "topic_words": "planted/topic_words.json",
        **images,
        "config": asdict(config),
    }


def load_planted(path: str | Path) -> dict[str, np.ndarray]:
    """The planted truth of a prepared synthetic dataset: user_mixture, item_topic, query_topic."""
    planted = Path(path) / "planted"
    return {
        name: np.load(planted / f"{name}.npy")
        for name in ("user_mixture", "item_topic", "query_topic")
    }


@dataclass(frozen=True)
class PlantedTopics:
    """Which items, queries and words belong to each planted topic of a synthetic dataset.

    Item and query indices are the prepared dataset's (item index i is external id
    `dataset.item_id(i)`; query index q is `dataset.queries[q]`).
    """

    item_topic: np.ndarray  # (I+2,) int32 topic of each item index, -1 for PAD and OOV
    query_topic: np.ndarray  # (Q,) int32 topic of each query index, -1 for the empty query
    words: list[list[str]]  # (T, V) the words each topic owns

    @classmethod
    def load(cls, path: str | Path) -> PlantedTopics:
        """The planted topics of the synthetic dataset prepared in `path`."""
        planted = load_planted(path)
        words = json.loads((Path(path) / "planted" / "topic_words.json").read_text())
        return cls(planted["item_topic"], planted["query_topic"], words)

    @property
    def topics(self) -> int:
        return len(self.words)

    def items_of(self, topic: int) -> np.ndarray:
        """(n,) item indices of `topic`."""
        return np.flatnonzero(self.item_topic == topic)

    def queries_of(self, topic: int) -> np.ndarray:
        """(n,) query indices of `topic`'s search events."""
        return np.flatnonzero(self.query_topic == topic)

    def topic_share(self, topic: int, items: np.ndarray) -> float:
        """Share of `items` (item indices, e.g. a served top 10) that belong to `topic`."""
        items = np.asarray(items, np.int64)
        return float((self.item_topic[items] == topic).mean()) if len(items) else 0.0


@dataclass(frozen=True)
class LifelongUser:
    """One SYNTHETIC long user over an existing catalog (item / query indices of that dataset)."""

    item: np.ndarray  # (L,) int32 item index (>= 2)
    query: np.ndarray  # (L,) int32 query index (0 = rec event)
    label: np.ndarray  # (L,) int8
    time: np.ndarray  # (L,) int64 unix seconds, non-decreasing
    topic: np.ndarray  # (L,) int32 topic each event was drawn from
    mixture: np.ndarray  # (T,) float64 planted interests
    synthetic: bool = True

    def __len__(self) -> int:
        return len(self.item)


def lifelong_user(
    n_events: int,
    item_topic: np.ndarray,
    query_topic: np.ndarray | None = None,
    *,
    n_queries: int = 0,
    seed: int = 0,
    search_fraction: float = 0.25,
    concentration: float = 0.3,
) -> LifelongUser:
    """A SYNTHETIC lifelong user (10k-100k+ events) for PQ and serving benchmarks.

    item_topic: (I+2,) topic per item index, -1 for rows never to draw (PAD, OOV).
    query_topic: (Q,) topic per query index (-1 for query 0); when None, search events draw any
    of the `n_queries` query indices uniformly (n_queries < 2: rec events only).
    The user draws topics from a Dirichlet mixture, items uniformly within the topic, queries of
    the same topic on search events; labels follow interest as in the dataset generator.
    """
    if n_events < 1:
        raise ValueError(f"n_events must be >= 1, got {n_events}")
    rng = np.random.default_rng(seed)
    valid = np.flatnonzero(item_topic >= 0)
    topics = np.unique(item_topic[valid])
    mixture = rng.dirichlet(np.full(len(topics), concentration))
    topic = topics[rng.choice(len(topics), size=n_events, p=mixture)].astype(np.int32)
    by_topic = valid[np.argsort(item_topic[valid], kind="stable")]
    ends = np.searchsorted(item_topic[by_topic], topics, side="right")
    starts = np.searchsorted(item_topic[by_topic], topics, side="left")
    k = np.searchsorted(topics, topic)
    item = by_topic[starts[k] + (rng.random(n_events) * (ends[k] - starts[k])).astype(np.int64)]

    query = np.zeros(n_events, np.int32)
    search = rng.random(n_events) < search_fraction
    if query_topic is None and n_queries > 1:
        query[search] = rng.integers(1, n_queries, size=int(search.sum()))
    elif query_topic is not None:
        for z in np.unique(topic[search]):
            candidates = np.flatnonzero(query_topic == z)
            rows = np.flatnonzero(search & (topic == z))
            if len(candidates):
                query[rows] = rng.choice(candidates, size=len(rows))
    interest = mixture[k] / mixture.max()
    label = (rng.random(n_events) < 0.05 + 0.85 * interest).astype(np.int8)
    time = _START + np.cumsum(rng.exponential(_MEAN_GAP / 4, size=n_events).astype(np.int64))
    full = np.zeros(int(item_topic.max()) + 1 if len(valid) else 0)
    full[topics] = mixture
    return LifelongUser(item.astype(np.int32), query, label, time, topic, full)


def lifelong_user_for(dataset: Any, n_events: int, *, seed: int = 0) -> LifelongUser:
    """A SYNTHETIC lifelong user over a PreparedDataset's catalog.

    Synthetic datasets use their planted topics (queries of the event's topic); others use each
    item's first attribute (MovieLens: its first genre) as its topic and any query at random.
    """
    if dataset.synthetic:
        planted = load_planted(dataset.path)
        return lifelong_user(n_events, planted["item_topic"], planted["query_topic"], seed=seed)
    item_topic = dataset.item_attrs[:, 0].astype(np.int64) - 1  # attribute id 0 = <pad> -> -1
    item_topic[:FIRST_ITEM_INDEX] = -1
    return lifelong_user(n_events, item_topic, None, n_queries=dataset.n_queries, seed=seed)


def nearest_centroid_accuracy(vectors: np.ndarray, labels: np.ndarray) -> float:
    """How well `vectors` (N, D) tell their planted `labels` (N,) apart: class centroids fitted
    on the even rows, the odd (held-out) rows classified by cosine similarity; chance is one
    over the number of classes."""
    train = np.arange(len(labels)) % 2 == 0
    classes = np.unique(labels)
    centroids = np.stack([vectors[train & (labels == c)].mean(axis=0) for c in classes])  # (C, D)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    predicted = classes[(vectors[~train] @ centroids.T).argmax(axis=1)]
    return float((predicted == labels[~train]).mean())
