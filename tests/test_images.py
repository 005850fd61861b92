"""Images end to end: SYNTHETIC renders, the DALI pipeline against PIL, bad files named by item
and file with nothing written, and planted image topics read back from the tower's vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from seminar.cli import app
from seminar.data.dali import PIXEL_TOLERANCE, dali_preprocess
from seminar.data.dataset import PreparedDataset
from seminar.data.images import (
    PreprocessConfig,
    RenderConfig,
    check_images,
    pil_preprocess,
    write_synthetic_images,
)
from seminar.data.prepare import IMAGE_TOWER, PrepareConfig
from seminar.data.synthetic import SyntheticConfig, nearest_centroid_accuracy, prepare_synthetic
from seminar.errors import DataError
from seminar.model.config import ImageTowerConfig

# Small enough to train in seconds on one core: the tests check behaviour, not quality.
TINY_TOWER = ImageTowerConfig(epochs=8, batch_size=64)


def test_synthetic_renders_are_deterministic_and_show_their_topic(tmp_path: Path) -> None:
    ids, topics = np.arange(1, 9), np.array([0, 1, 2, 3, 0, 1, 2, 3])
    first = write_synthetic_images(tmp_path / "a", ids, topics, 7, RenderConfig())
    again = write_synthetic_images(tmp_path / "b", ids, topics, 7, RenderConfig())
    other_seed = write_synthetic_images(tmp_path / "c", ids, topics, 8, RenderConfig())
    assert first == again == other_seed == [f"{i}.jpg" for i in ids]
    for name in first:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    pixels = pil_preprocess([tmp_path / "a" / n for n in first], PreprocessConfig())
    # Two renders of one topic are closer than renders of different topics (colour and shape).
    flat = pixels.reshape(len(pixels), -1)
    same = np.linalg.norm(flat[0] - flat[4])
    assert all(same < np.linalg.norm(flat[0] - flat[k]) for k in (1, 2, 3))


def test_dali_preprocessing_equals_pil_within_the_stated_tolerance(tmp_path: Path) -> None:
    from PIL import Image

    ids = np.arange(1, 20)  # 19 files in batches of 8: the last batch is padded by DALI
    names = write_synthetic_images(tmp_path, ids, ids % 7, 0, RenderConfig())
    paths = [tmp_path / name for name in names]
    # A PNG that is not square: resize works on the shorter side, crop in the middle.
    wide = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    paths.append(tmp_path / "wide.png")
    config = PreprocessConfig()
    dali = dali_preprocess(paths, config, batch_size=8, gpu=False)
    pil = pil_preprocess(paths, config)
    assert dali.shape == pil.shape == (20, 3, config.crop, config.crop)
    levels = np.abs(dali - pil) * np.array(config.std, np.float32)[:, None, None]
    assert levels.max() <= PIXEL_TOLERANCE["max"]
    assert levels.mean() <= PIXEL_TOLERANCE["mean"]
    # In order: each row is its own file, not a neighbour's (renders differ by far more).
    assert np.abs(dali[1:] - pil[:-1]).max() * min(config.std) > 20 * PIXEL_TOLERANCE["max"]


def _user_catalog(folder: Path, refs: list[str]) -> tuple[Path, Path]:
    """events.parquet + items.parquet for len(refs) items, three users who saw all of them."""
    items = pa.table(
        {
            "item_id": pa.array(range(1, len(refs) + 1), pa.int64()),
            "text": [f"item {i}" for i in range(1, len(refs) + 1)],
            "attributes": [[f"shade={i % 3}"] for i in range(len(refs))],
            "image_ref": refs,
        }
    )
    n = len(refs)
    events = pa.table(
        {
            "user_id": np.repeat([1, 2, 3], n),
            "item_id": np.tile(np.arange(1, n + 1), 3),
            "timestamp": np.arange(3 * n),
            "event_type": ["rec"] * (3 * n),
            "query": [""] * (3 * n),
            "label": np.ones(3 * n, np.int8),
        }
    )
    pq.write_table(items, folder / "items.parquet")
    pq.write_table(events, folder / "events.parquet")
    return folder / "events.parquet", folder / "items.parquet"


def test_users_images_are_embedded_and_bad_ones_named_with_nothing_written(
    tmp_path: Path,
) -> None:
    from seminar.data.events import prepare_events

    source = tmp_path / "source"
    write_synthetic_images(source / "pics", np.arange(1, 9), np.arange(8) % 4, 0, RenderConfig())
    refs = [f"pics/{i}.jpg" for i in range(1, 9)] + [""]  # item 9 has no image
    events, items = _user_catalog(source, refs)
    config = PrepareConfig(text_features=False, progress=False, image_tower=TINY_TOWER)
    prepare_events(events, items, tmp_path / "good", "pics", config)
    ds = PreparedDataset.load(tmp_path / "good")
    vectors = np.asarray(ds.item_image_emb)
    assert vectors.shape == (2 + 9, TINY_TOWER.dim)
    assert np.abs(vectors[2:10]).sum(axis=1).min() > 0 and not vectors[10].any()
    assert (tmp_path / "good" / IMAGE_TOWER / "weights.safetensors").is_file()

    # An item that arrives after the build: its bytes through the serving step give the vector
    # the prepare gave (same DALI pipeline, same tower weights); bad bytes are named by position.
    from seminar.serving.image_embedding import ImageEmbedder

    embedder = ImageEmbedder(tmp_path / "good" / IMAGE_TOWER, batch_size=4)
    encoded = [(source / ref).read_bytes() for ref in refs[:6]]
    np.testing.assert_allclose(embedder.embed(encoded), vectors[2:8], rtol=1e-4, atol=1e-5)
    with pytest.raises(DataError, match="image 1 is corrupt and does not decode"):
        embedder.embed([encoded[0], encoded[1][:300]])
    with pytest.raises(DataError, match="image 0 is empty"):
        embedder.embed([b""])

    (source / "pics" / "broken.jpg").write_bytes((source / "pics" / "3.jpg").read_bytes()[:200])
    (source / "notes.txt").write_text("not an image")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(source / "pics" / "5.gif")
    cases = {
        "pics/missing.jpg": "does not exist",
        "pics/broken.jpg": "is corrupt and does not decode",
        "notes.txt": "is not an image",
        "pics/5.gif": "is GIF, not JPEG or PNG",
    }
    runner = CliRunner()
    for ref, what in cases.items():
        bad = [*refs[:6], ref, *refs[7:]]  # item 7 carries the bad file
        events, items = _user_catalog(source, bad)
        out = tmp_path / "bad"
        result = runner.invoke(
            app,
            ["data", "prepare", "events", "--events", str(events), "--items", str(items),
             "--out", str(out)],
        )  # fmt: skip
        assert result.exit_code == 3, result.output
        assert f"item 7: image file {source / ref} {what}" in " ".join(result.output.split())
        assert not out.exists() and not list(tmp_path.glob("bad.tmp-*"))  # nothing half-written
    with pytest.raises(DataError, match=r"item 2: image file .* does not exist"):
        check_images([1, 2], [None, tmp_path / "nowhere.jpg"])


def test_planted_image_topics_are_recoverable_from_the_image_embeddings(
    tmp_path: Path,
) -> None:
    config = SyntheticConfig(
        users=24, events_per_user=20, items=240, topics=6, images=True, image_topics=4, seed=3
    )
    prepare = PrepareConfig(text_features=False, progress=False, image_tower=TINY_TOWER)
    prepare_synthetic(config, tmp_path / "data", prepare)
    ds = PreparedDataset.load(tmp_path / "data")
    assert ds.synthetic and ds.meta["image"].startswith("synthetic: rendered JPEG")
    assert len(list((tmp_path / "data" / "images").glob("*.jpg"))) == 240
    image_topic = np.load(tmp_path / "data" / "planted" / "image_topic.npy")[2:]
    item_topic = np.load(tmp_path / "data" / "planted" / "item_topic.npy")[2:]
    # Every topic has items of every image topic: text and attributes cannot reveal it.
    assert len({(a, b) for a, b in zip(item_topic, image_topic, strict=True)}) == 6 * 4
    vectors = np.asarray(ds.item_image_emb)[2:]
    accuracy = nearest_centroid_accuracy(vectors, image_topic)  # held-out items; chance 0.25
    assert accuracy > 0.6, accuracy
    # Users prefer their planted image topic: most of each user's events are on it.
    liked = np.load(tmp_path / "data" / "planted" / "user_image_topic.npy")
    seq_item, offsets = np.asarray(ds.seq_item), np.asarray(ds.seq_offsets)
    shares = [
        np.mean(image_topic[seq_item[offsets[u] : offsets[u + 1]] - 2] == liked[u])
        for u in range(config.users)
    ]
    assert np.mean(shares) > 0.7


def test_untitled_items_hide_their_topic_from_text_and_attributes() -> None:
    from seminar.data.synthetic import make_world

    config = SyntheticConfig(users=4, items=300, topics=5, untitled=0.5, image_dim=0)
    world = make_world(config, np.random.default_rng((config.seed, 0)))
    plain = make_world(
        SyntheticConfig(users=4, items=300, topics=5, image_dim=0), np.random.default_rng((0, 0))
    )
    owner = {word: topic for topic, words in enumerate(world.topic_words) for word in words}
    named = [
        {owner[w] for w in text.split() if w in owner} for text in world.items["text"].to_pylist()
    ]
    untitled = np.array([not topics for topics in named])
    assert 0.4 < untitled.mean() < 0.6
    # A titled item names its own topic and no other; the rest of the world is unchanged.
    assert all(named[i] == {world.item_topic[i]} for i in np.flatnonzero(~untitled))
    np.testing.assert_array_equal(world.item_topic, plain.item_topic)
    assert world.queries == plain.queries
    categories = [attrs[0] for attrs in world.items["attributes"].to_pylist()]
    agree = [categories[i] == f"category=c{world.item_topic[i]:03d}" for i in range(300)]
    assert np.mean(np.array(agree)[untitled]) < 0.4 < 0.8 < np.mean(np.array(agree)[~untitled])


def test_triton_image_encoder_embeds_a_new_items_image(tmp_path: Path) -> None:
    """Real tritonserver, real gRPC: the image_encoder model answers a new item's JPEG with the
    vector the prepare gave it, and a corrupt image with INVALID_ARG naming it."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from seminar import contract
    from seminar.build.image_encoder import write_image_encoder
    from seminar.data.events import prepare_events
    from tests.support.serving import start_triton

    source = tmp_path / "source"
    write_synthetic_images(source / "pics", np.arange(1, 7), np.arange(6) % 3, 0, RenderConfig())
    refs = [f"pics/{i}.jpg" for i in range(1, 7)]
    events, items = _user_catalog(source, refs)
    config = PrepareConfig(text_features=False, progress=False, image_tower=TINY_TOWER)
    prepare_events(events, items, tmp_path / "data", "pics", config)
    expected = np.asarray(PreparedDataset.load(tmp_path / "data").item_image_emb)[2:]
    repo = tmp_path / "repo"
    write_image_encoder(repo, 1, tmp_path / "data" / IMAGE_TOWER)

    def request(images: list[bytes]) -> list:
        tensor = grpcclient.InferInput(contract.INPUT_IMAGE, [len(images), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=object).reshape(-1, 1))
        return [tensor]

    model = contract.IMAGE_ENCODER_MODEL
    with start_triton(repo, load_models=(model,), wait_models=(model,)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        encoded = [(source / ref).read_bytes() for ref in refs[:3]]
        result = client.infer(model, request(encoded))
        vectors = result.as_numpy(contract.IMAGE_EMB)
        np.testing.assert_allclose(vectors, expected[:3], rtol=1e-4, atol=1e-5)
        with pytest.raises(InferenceServerException, match="image 1 is corrupt"):
            client.infer(model, request([encoded[0], encoded[1][:300]]))
