"""MNIST / CIFAR-10 readers on tiny files in the real formats; `muonkit data fetch`."""

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_datasets import idx_bytes, write_cifar, write_mnist

from muonlab.cli import main
from muonlab.data import fetch as fetch_mod
from muonlab.data.cifar import load_cifar10
from muonlab.data.mnist import load_mnist, parse_idx, read_idx
from muonlab.data.paths import DataNotFoundError, resolve_data_dir
from muonlab.data.vision import load_flat


def test_idx_header_by_hand():
    # magic 0x00000803 (ubyte, 3 dims), sizes 2, 1, 3 big-endian, then 6 bytes
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255])
    arr = parse_idx(raw)
    assert arr.shape == (2, 1, 3) and arr.dtype == np.uint8
    assert arr.ravel().tolist() == [1, 2, 3, 4, 5, 255]
    # int32 big-endian: 258 = 0x00000102
    arr = parse_idx(bytes([0, 0, 0x0C, 1, 0, 0, 0, 1, 0, 0, 1, 2]))
    assert arr.tolist() == [258]
    with pytest.raises(ValueError, match="truncated"):
        parse_idx(raw[:-1])
    with pytest.raises(ValueError, match="not an IDX"):
        parse_idx(b"\x1f\x8b\x08\x00")


@pytest.mark.parametrize(
    "layout", [("mnist", True), ("mnist", False), ("MNIST/raw", True), (".", False)]
)
def test_mnist_reader_layouts(tmp_path, layout):
    folder, gz = layout
    written = write_mnist(tmp_path, n_train=20, n_test=7, folder=folder, gz=gz)
    for split in ("train", "test"):
        images, labels = load_mnist(tmp_path, split)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        np.testing.assert_array_equal(images.numpy(), written[split][0])
        np.testing.assert_array_equal(labels.numpy(), written[split][1])


def test_read_idx_float_roundtrip(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4) / 7
    (tmp_path / "f.idx").write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), a)


def test_cifar_reader(tmp_path):
    batches = write_cifar(tmp_path, n_per_batch=6, n_test=5)
    images, labels = load_cifar10(tmp_path, "train")
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8
    expected = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal(images.reshape(30, 3072).numpy(), expected)
    # channel-major layout: the first 1024 values of a row are the red plane
    np.testing.assert_array_equal(images[0, 0].numpy().ravel(), expected[0, :1024])
    assert labels.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    images, labels = load_cifar10(tmp_path / "cifar-10-batches-py", "test")  # folder itself
    assert images.shape == (5, 3, 32, 32) and labels.tolist() == batches["test_batch"][b"labels"]


def test_cifar_refuses_code_in_pickle(tmp_path):
    write_cifar(tmp_path, n_per_batch=2, n_test=2)
    evil = pickle.dumps(
        {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}, protocol=2
    )
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError, match="print; only numpy"):
        load_cifar10(tmp_path, "test")


def test_missing_files_name_file_and_fetch_command(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as e:
        load_mnist(tmp_path, "train")
    msg = str(e.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in msg
    assert f"muonkit data fetch mnist --data-dir {tmp_path}" in msg
    write_cifar(tmp_path, n_per_batch=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4.*muonkit data fetch cifar10"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "val")


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MUONKIT_DATA", raising=False)
    assert str(resolve_data_dir(None)) == "data"
    monkeypatch.setenv("MUONKIT_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert str(resolve_data_dir("elsewhere")) == "elsewhere"
    write_mnist(tmp_path, n_train=10, n_test=4)
    assert load_mnist(split="test")[0].shape == (4, 28, 28)  # found through the env var


def test_load_flat_standardizes_with_train_stats(tmp_path):
    write_mnist(tmp_path, n_train=40, n_test=10)
    data = load_flat("mnist", tmp_path)
    x, y = data["train"]
    assert x.shape == (40, 784) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-4
    raw = torch.from_numpy(load_mnist(tmp_path, "train")[0].numpy()).flatten(1).float() / 255
    raw_test = load_mnist(tmp_path, "test")[0].flatten(1).float() / 255
    expected = (raw_test - raw.mean()) / raw.std()
    torch.testing.assert_close(data["test"][0], expected)


def _cifar_archive(tmp_path):
    src = tmp_path / "src"
    write_cifar(src, n_per_batch=3, n_test=4)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(buf.getvalue())
    return archive, hashlib.md5(buf.getvalue()).hexdigest()


def _local_cifar(archive, md5, extra_urls=()):
    remote = fetch_mod.Remote(archive.name, md5, (*extra_urls, archive.as_uri()))
    return {"cifar10": fetch_mod.Dataset("cifar-10-batches-py", (remote,), archive=True)}


def test_fetch_verifies_md5_and_unpacks(tmp_path, monkeypatch):
    archive, md5 = _cifar_archive(tmp_path)
    monkeypatch.setattr(fetch_mod, "DATASETS", _local_cifar(archive, md5))
    dest = tmp_path / "dest"
    assert main(["data", "fetch", "cifar10", "--data-dir", str(dest)]) == 0
    images, labels = load_cifar10(dest, "train")
    assert images.shape == (15, 3, 32, 32)
    assert load_cifar10(dest, "test")[0].shape == (4, 3, 32, 32)
    assert not list(dest.glob(".part-*"))


def test_fetch_tries_next_mirror_and_rejects_bad_md5(tmp_path):
    archive, md5 = _cifar_archive(tmp_path)
    dead = (tmp_path / "nothing-here.tar.gz").as_uri()
    dest = tmp_path / "dest"
    fetch_mod.fetch("cifar10", dest, datasets=_local_cifar(archive, md5, (dead,)))
    assert (dest / "cifar-10-batches-py" / "test_batch").is_file()
    bad = tmp_path / "bad"
    with pytest.raises(fetch_mod.ChecksumError, match="md5 .* expected 0{32}"):
        fetch_mod.fetch("cifar10", bad, datasets=_local_cifar(archive, "0" * 32))
    assert not (bad / "cifar-10-batches-py").exists() and not list(bad.iterdir())


def test_fetch_mnist_keeps_gz_files_readable(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_mnist(src, n_train=12, n_test=5)
    files = tuple(
        fetch_mod.Remote(p.name, hashlib.md5(p.read_bytes()).hexdigest(), (p.as_uri(),))
        for p in sorted((src / "mnist").iterdir())
    )
    monkeypatch.setattr(
        fetch_mod, "DATASETS", {"mnist": fetch_mod.Dataset("mnist", files, archive=False)}
    )
    dest = tmp_path / "dest"
    main(["data", "fetch", "mnist", "--data-dir", str(dest)])
    assert load_mnist(dest, "train")[0].shape == (12, 28, 28)


def test_canonical_sources():
    md5s = {r.filename: r.md5 for d in fetch_mod.DATASETS.values() for r in d.files}
    assert md5s["cifar-10-python.tar.gz"] == "c58f30108f718f92721af3b95e74349a"
    assert md5s["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert all(
        u.startswith("https://") or u.startswith("http://")
        for d in fetch_mod.DATASETS.values()
        for r in d.files
        for u in r.urls
    )


def test_shuffled_batches_cover_each_epoch_and_resume():
    from muonlab.data.vision import ShuffledBatches

    x, y = torch.arange(10).float()[:, None], torch.arange(10)
    src = ShuffledBatches(x, y, batch_size=4, seed=3)
    assert src.batches_per_epoch == 3
    epochs = [[src.next_batch() for _ in range(3)] for _ in range(2)]
    for batches in epochs:
        seen = torch.cat([b[1] for b in batches])
        assert sorted(seen.tolist()) == list(range(10))  # every example once per epoch
        assert [len(b[1]) for b in batches] == [4, 4, 2]
        for bx, by in batches:
            assert torch.equal(bx[:, 0].long(), by)  # x and y stay paired
    assert not torch.equal(
        torch.cat([b[1] for b in epochs[0]]), torch.cat([b[1] for b in epochs[1]])
    )
    # resume from a state_dict gives the same stream as an uninterrupted source
    a, b = ShuffledBatches(x, y, 4, seed=5), ShuffledBatches(x, y, 4, seed=5)
    for _ in range(4):
        a.next_batch()
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        assert torch.equal(a.next_batch()[1], b.next_batch()[1])
    with pytest.raises(ValueError, match="batch_size"):
        ShuffledBatches(x, y, 0)


# ../shared/data relative to the checkout (CI), else $MUONKIT_DATA (e.g. from a worktree)
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
if not SHARED.is_dir() and os.environ.get("MUONKIT_DATA"):
    SHARED = Path(os.environ["MUONKIT_DATA"])
needs_shared_mnist = pytest.mark.skipif(
    not (SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file(), reason="no ../shared/data"
)


@needs_shared_mnist
def test_real_mnist_matches_published_counts():
    # class counts published with the dataset (shared/data/SOURCES.md)
    _, train_labels = load_mnist(SHARED, "train")
    images, test_labels = load_mnist(SHARED, "test")
    assert images.shape == (10000, 28, 28) and int(images.max()) == 255
    assert train_labels.bincount().tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert test_labels.bincount().tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]


@needs_shared_mnist
def test_fetch_accepts_the_canonical_mnist_files(tmp_path):
    # the real files, served from a local mirror, pass the canonical md5 check
    mirror = (SHARED / "mnist").resolve().as_uri() + "/"
    spec = fetch_mod.DATASETS["mnist"]
    local = fetch_mod.Dataset(
        spec.folder,
        tuple(fetch_mod.Remote(r.filename, r.md5, (mirror + r.filename,)) for r in spec.files),
        archive=False,
    )
    fetch_mod.fetch("mnist", tmp_path, datasets={"mnist": local})
    assert load_mnist(tmp_path, "test")[1].shape == (10000,)
