"""Reading prepared datasets: the torch Dataset and the Lightning DataModule."""

from __future__ import annotations

import pickle

import pytest
import torch

from ddmr.data import PreparedDataModule, PreparedDataset
from ddmr.errors import InputError
from ddmr.prepare.dataset import prepare_dataset
from ddmr.prepare.recipe import PrepareOptions
from test_prepare import write_folder_dataset


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    source = write_folder_dataset(root / "in", count=7)
    prepare_dataset(source, root / "out", PrepareOptions(size=(16, 16, 16), spacing=3.0),
                    progress=False)
    return root / "out"


def test_dataset_items(prepared):
    dataset = PreparedDataset(prepared, "train")
    assert len(dataset) == 5  # 7 subjects at .7/.15/.15 -> 5/1/1
    item = dataset[0]
    assert item["image"].shape == (1, 16, 16, 16) and item["image"].dtype == torch.float32
    assert item["labels"].shape == (1, 16, 16, 16) and item["labels"].dtype == torch.uint8
    assert item["spacing"].shape == (3,) and torch.all(item["spacing"] > 0)
    assert item["id"] in dataset.ids
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    every = PreparedDataset(prepared, None)
    assert len(every) == 7
    ids = set()
    for split in ("train", "val", "test"):
        ids |= set(PreparedDataset(prepared, split).ids)
    assert ids == set(every.ids)
    # picklable (spawned workers) without carrying an open file
    dataset[1]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._h5 is None and torch.equal(clone[1]["image"], dataset[1]["image"])
    dataset.close()


def test_dataset_errors(prepared, tmp_path):
    with pytest.raises(InputError, match="not a prepared dataset"):
        PreparedDataset(tmp_path, "train")
    with pytest.raises(InputError, match="unknown split"):
        PreparedDataset(prepared, "holdout")


def test_unlabelled_subjects_have_no_labels_key(tmp_path):
    source = write_folder_dataset(tmp_path / "in", count=3, labels=False)
    prepare_dataset(source, tmp_path / "out", PrepareOptions(size=(8, 8, 8), spacing=4.0),
                    progress=False)
    assert "labels" not in PreparedDataset(tmp_path / "out", None)[0]
    with pytest.raises(InputError, match="without labels"):
        PreparedDataset(tmp_path / "out", None, require_labels=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_datamodule_batches(prepared, workers):
    module = PreparedDataModule(prepared, batch_size=2, num_workers=workers)
    module.setup("fit")
    batches = list(module.train_dataloader())
    assert [b["image"].shape[0] for b in batches] == [2, 2, 1]
    batch = batches[0]
    assert batch["image"].shape == (2, 1, 16, 16, 16)
    assert batch["labels"].dtype == torch.uint8 and batch["spacing"].shape == (2, 3)
    assert len(batch["id"]) == 2
    seen = sorted(i for b in batches for i in b["id"])
    assert seen == sorted(module.datasets["train"].ids)
    assert len(list(module.val_dataloader())) == 1 and len(list(module.test_dataloader())) == 1
    # the training order is reproducible from the seed
    again = PreparedDataModule(prepared, batch_size=2, num_workers=0)
    assert [b["id"] for b in again.train_dataloader()] == [b["id"] for b in batches]
