"""Items that arrive after a build: their images through the served image_encoder step, folded
into the catalog by `seminar data append --items`, and a build that serves the run's model on
the grown catalog (rebased by item id, word and attribute, no retraining)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as parquet
import pytest
import torch
from typer.testing import CliRunner

from seminar import contract
from seminar.cli import app
from seminar.data.dataset import PreparedDataset
from seminar.errors import DataError
from tests.support.build import build_cli, copy_repo

ATTRIBUTE = "genre=Documentary"  # a MovieLens genre the new items share with the catalog


def _item_vectors(model, dataset: PreparedDataset, item_ids: list[int]) -> np.ndarray:
    """The model's item embedding of each external id (OOV for one it does not know)."""
    rows = [
        dataset.item_index(i) if i in set(dataset.item_ids.tolist()) else contract.OOV_ITEM_INDEX
        for i in item_ids
    ]
    with torch.no_grad():
        return model.item_encoder(torch.as_tensor(rows)).numpy()


def _write_items(path: Path, rows: list[dict]) -> Path:
    table = pa.table(
        {
            "item_id": pa.array([r["item_id"] for r in rows], pa.int64()),
            "text": [r["text"] for r in rows],
            "attributes": pa.array([r["attributes"] for r in rows], pa.list_(pa.string())),
            **({"image_ref": [r["image_ref"] for r in rows]} if "image_ref" in rows[0] else {}),
        }
    )
    parquet.write_table(table, path)
    return path


def test_a_build_on_an_appended_catalog_keeps_every_trained_item_on_its_own_row(
    quick_run: Path, movielens_data: Path, model_repo, tmp_path: Path
) -> None:
    """New items whose ids fall between the catalog's renumber the items after them: the build
    must rebase the run's model by id (before, it read item B's trained row for item A)."""
    from seminar.data.append import AppendConfig, append_events
    from seminar.events import open_event_log
    from seminar.training.checkpoint import load_run
    from seminar.training.rebase import model_for_dataset

    base = PreparedDataset.load(movielens_data)
    ids = np.asarray(base.item_ids)
    gaps = np.setdiff1d(np.arange(1, ids[-1]), ids)[[0, len(ids) // 3, -1]]  # interleaved
    new_items = _write_items(
        tmp_path / "new.parquet",
        [
            {"item_id": int(gap), "text": f"brand new documentary {n}", "attributes": [ATTRIBUTE]}
            for n, gap in enumerate(gaps)
        ],
    )
    log = open_event_log(f"sqlite://{tmp_path / 'events.db'}")
    grown = tmp_path / "grown"
    fold, _ = append_events(
        movielens_data, log, grown, items=new_items, config=AppendConfig(progress=False)
    )
    assert fold.catalog_items == 3 and fold.events == 0
    target = PreparedDataset.load(grown)
    assert target.n_items == base.n_items + 3

    run = load_run(quick_run)
    same, none = model_for_dataset(run, base)
    assert same is run.model and none is None
    rebased, summary = model_for_dataset(run, target)
    assert (summary.items_kept, summary.items_new, summary.items_gone) == (base.n_items, 3, 0)
    kept = [*ids[:: max(1, len(ids) // 200)].tolist(), int(ids[-1])]
    np.testing.assert_allclose(
        _item_vectors(rebased, target, kept), _item_vectors(run.model, base, kept), atol=1e-6
    )
    # The bug this guards against: the old model read beside the new catalog's numbering.
    inside = [i for i in kept if target.item_index(i) < base.n_item_rows]  # the rest: no row
    shifted = _item_vectors(run.model, target, inside)
    assert np.abs(shifted - _item_vectors(run.model, base, inside)).max() > 1e-3
    # A new item is its OOV id row plus its own content: not the bare OOV vector.
    new_vectors = _item_vectors(rebased, target, gaps.tolist())
    oov = _item_vectors(run.model, base, [-1])
    assert np.abs(new_vectors - oov).max(axis=1).min() > 1e-3

    repo = copy_repo(model_repo, tmp_path / "repo")
    result = build_cli(quick_run, repo, 2, "--data", str(grown))
    assert result.exit_code == 0, result.output
    assert "3 new items scored by their content" in " ".join(result.output.split())
    info = json.loads(contract.build_info_path(repo, 2).read_text())
    assert "3 new items" in info["rebase"]
    served_ids = np.load(repo / contract.FEATURES_MODEL / "2" / contract.ITEM_IDS_FILE)
    assert set(gaps.tolist()) <= set(served_ids.tolist())

    # Served == offline on the grown catalog: `seminar score --data` reads it through the same
    # rebase, so the reference of a known user's ranking over old and new items is exact.
    import tritonclient.grpc as grpcclient

    from seminar.serving.client import score
    from tests.support.serving import ATOL, offline_scores, pq_dir_of, start_triton

    user = int(base.user_ids[3])
    candidates = np.array([*gaps.tolist(), *kept[:20]], dtype=np.int64)
    pinned = contract.pinned_ensemble_name(2)
    with start_triton(repo, wait_models=(pinned,)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        served = score(client, user, "", candidates, model=pinned)
    offline = offline_scores(quick_run, grown, pq_dir_of(repo, 2), user, "", candidates)
    np.testing.assert_allclose(served, offline, atol=ATOL, rtol=0)
    assert len(set(np.round(served[:3], 5))) == 3  # three new items, three scores (not OOV's)

    # Hostile: an --items row the catalog has, and a dataset the run's model cannot read.
    again = _write_items(
        tmp_path / "again.parquet", [{"item_id": int(ids[5]), "text": "x", "attributes": []}]
    )
    with pytest.raises(DataError, match=rf"item {int(ids[5])} is already in the catalog"):
        append_events(movielens_data, log, tmp_path / "no", items=again)
    assert not (tmp_path / "no").exists()


def test_new_items_images_through_the_served_image_encoder_reach_the_ranking(
    tmp_path: Path,
) -> None:
    """Real tritonserver, real gRPC: `seminar build` writes image_encoder into the version; the
    served step embeds new items' JPEGs as the dataset's tower does in-process; the append
    carries them, refusing another tower's; the rebased model scores them by their image."""
    from seminar.data.images import RenderConfig, write_synthetic_images
    from seminar.data.new_items import TOWER_ID_KEY, embed_image_files
    from seminar.data.prepare import IMAGE_TOWER, PrepareConfig
    from seminar.data.synthetic import SyntheticConfig, prepare_synthetic
    from seminar.events import open_event_log
    from seminar.model.config import ImageTowerConfig
    from seminar.model.image_tower import tower_id
    from seminar.training.checkpoint import load_run
    from seminar.training.rebase import model_for_dataset
    from tests.support.serving import start_triton
    from tests.support.training import train_tiny

    data, run = tmp_path / "data", tmp_path / "run"
    world = SyntheticConfig(
        users=40, events_per_user=30, items=96, topics=4, images=True, image_topics=4, seed=5
    )
    tower = ImageTowerConfig(epochs=8, batch_size=64)
    prepare = PrepareConfig(text_features=False, progress=False, image_tower=tower)
    prepare_synthetic(world, data, prepare)
    train_tiny(data, run, epochs=1, pretrain_epochs=0)
    repo = tmp_path / "repo"
    result = build_cli(run, repo, 1, "--data", str(data))
    assert result.exit_code == 0, result.output
    assert (repo / contract.IMAGE_ENCODER_MODEL / "1" / contract.IMAGE_TOWER_DIR).is_dir()

    new_ids = np.arange(1001, 1005)
    pics = tmp_path / "new" / "pics"
    names = write_synthetic_images(pics, new_ids, np.arange(4), 9, RenderConfig())
    rows = [
        {"item_id": int(i), "text": "", "attributes": [], "image_ref": f"pics/{name}"}
        for i, name in zip(new_ids, names, strict=True)
    ]
    rows[-1]["image_ref"] = ""  # an item without an image
    new_items = _write_items(tmp_path / "new" / "items.parquet", rows)
    embedded = tmp_path / "new" / "embedded.parquet"
    runner = CliRunner()
    with start_triton(repo, wait_models=(contract.ENSEMBLE_MODEL,)) as server:
        args = ["client", "embed-images", "--triton", server.grpc_url, "--items", str(new_items)]
        result = runner.invoke(app, [*args, "--out", str(embedded)])
        assert result.exit_code == 0, result.output
        # A corrupt image is named with its item and file before any call: exit 3.
        (pics / "broken.jpg").write_bytes((pics / names[0]).read_bytes()[:200])
        rows[1]["image_ref"] = "pics/broken.jpg"
        broken = _write_items(tmp_path / "new" / "broken.parquet", rows)
        result = runner.invoke(app, [*args[:-1], str(broken), "--out", str(tmp_path / "b.pq")])
        assert result.exit_code == 3 and "item 1002: image file" in result.output
        assert not (tmp_path / "b.pq").exists()
    table = parquet.read_table(embedded)
    assert table.schema.metadata[TOWER_ID_KEY].decode() == tower_id(data / IMAGE_TOWER)
    served = np.stack(table.column("image_embedding").to_numpy(zero_copy_only=False))
    expected = embed_image_files(data / IMAGE_TOWER, [pics / name for name in names[:3]])
    np.testing.assert_allclose(served[:3], expected, rtol=1e-4, atol=1e-5)
    assert not served[3].any()

    log = open_event_log(f"sqlite://{tmp_path / 'events.db'}")
    from seminar.data.append import AppendConfig, append_events

    quiet = AppendConfig(progress=False)
    append_events(data, log, tmp_path / "grown", items=embedded, config=quiet)
    grown = PreparedDataset.load(tmp_path / "grown")
    rebased, summary = model_for_dataset(load_run(run), grown)
    assert summary.items_new == 4
    vectors = _item_vectors(rebased, grown, new_ids.tolist())
    # With an image, a new item is more than the OOV row; without one, it is exactly that.
    assert np.abs(vectors[:3] - vectors[3]).max(axis=1).min() > 1e-3
    oov = _item_vectors(load_run(run).model, PreparedDataset.load(data), [-1])[0]
    np.testing.assert_allclose(vectors[3], oov, atol=1e-6)

    # Vectors another tower made are refused, naming both towers.
    foreign = table.replace_schema_metadata({TOWER_ID_KEY: b"0123456789abcdef"})
    parquet.write_table(foreign, tmp_path / "foreign.parquet")
    with pytest.raises(DataError, match="image tower 0123456789abcdef"):
        append_events(data, log, tmp_path / "x", items=tmp_path / "foreign.parquet", config=quiet)


def test_a_rebase_refuses_a_dataset_its_model_cannot_read(
    quick_run: Path, movielens_data: Path, tmp_path: Path
) -> None:
    import dataclasses

    from seminar.training.checkpoint import load_run
    from seminar.training.rebase import rebase_model

    run = load_run(quick_run)
    base = PreparedDataset.load(movielens_data)
    longer = dataclasses.replace(base, query_tokens=np.zeros((base.n_queries, 99), np.int32))
    with pytest.raises(DataError, match="queries are 99 tokens long, the run's model reads"):
        rebase_model(run.model, base, longer)
    images = dataclasses.replace(base, item_image_emb=np.zeros((base.n_item_rows, 8), np.float32))
    with pytest.raises(DataError, match="image vectors have 8 values, the run's model reads 0"):
        rebase_model(run.model, base, images)
    # Onto its own dataset: the same model, tensor for tensor.
    same, summary = rebase_model(run.model, base, base)
    assert not summary.changed
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(same.state_dict()[name], tensor), name


def test_embed_images_names_an_unreachable_server(tmp_path: Path) -> None:
    from seminar.data.images import RenderConfig, write_synthetic_images

    names = write_synthetic_images(
        tmp_path / "pics", np.arange(1, 3), np.arange(2), 0, RenderConfig()
    )
    rows = [
        {"item_id": i + 1, "text": "", "attributes": [], "image_ref": f"pics/{name}"}
        for i, name in enumerate(names)
    ]
    items = _write_items(tmp_path / "items.parquet", rows)
    out = tmp_path / "out.parquet"
    args = ["client", "embed-images", "--triton", "127.0.0.1:9", "--items", str(items)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--timeout", "2"])
    assert result.exit_code == 6, result.output
    assert "127.0.0.1:9" in result.output and not out.exists()
    bare = _write_items(tmp_path / "bare.parquet", [{"item_id": 1, "text": "", "attributes": []}])
    result = CliRunner().invoke(app, [*args[:-1], str(bare), "--out", str(out)])
    assert result.exit_code == 3 and "has no 'image_ref' column" in result.output
