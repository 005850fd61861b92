"""PreparedDataset.load: the accessors others build on, and clear errors on broken directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from seminar.data.dataset import PreparedDataset
from seminar.errors import DataError


def test_arrays_are_memory_mapped_and_id_maps_round_trip(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    assert isinstance(ds.seq_item, np.memmap) and not ds.seq_item.flags.writeable
    for u in (0, 17, ds.n_users - 1):
        assert ds.user_index(int(ds.user_ids[u])) == u
    for i in (2, 100, ds.n_item_rows - 1):
        assert ds.item_index(ds.item_id(i)) == i
    with pytest.raises(KeyError):
        ds.item_id(1)  # OOV has no external id
    assert (np.diff(ds.user_ids) > 0).all() and (np.diff(ds.item_ids) > 0).all()
    assert np.allclose(np.linalg.norm(ds.item_text_emb[2:], axis=1), 1.0, atol=1e-4)
    assert not ds.item_text_emb[:2].any() and not ds.query_text_emb[0].any()
    assert PreparedDataset.load(movielens_data, mmap=False).seq_item.sum() == ds.seq_item.sum()


def test_not_a_dataset_and_old_schema(tmp_path: Path, movielens_data: Path) -> None:
    with pytest.raises(DataError, match="not a prepared dataset"):
        PreparedDataset.load(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(movielens_data, copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "schema_version": 0}))
    with pytest.raises(DataError, match="schema_version"):
        PreparedDataset.load(copy)


def test_missing_or_mismatched_arrays_are_named(tmp_path: Path, movielens_data: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(movielens_data, copy)
    (copy / "arrays" / "seq_label.npy").unlink()
    with pytest.raises(DataError, match=r"seq_label\.npy: missing"):
        PreparedDataset.load(copy)
    np.save(copy / "arrays" / "seq_label.npy", np.zeros(5, np.int8))
    with pytest.raises(DataError, match=r"seq_label\.npy: shape"):
        PreparedDataset.load(copy)


def test_cli_info_prints_the_stats_or_names_the_problem(
    movielens_data: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from seminar.data.cli import app

    result = CliRunner().invoke(app, ["info", str(movielens_data), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["users"] == 610
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 3 and "not a prepared dataset" in result.stderr
