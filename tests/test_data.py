"""Dataset loaders: real shared data, archives and IDX files the tests write, TFDS mock data."""

import gzip
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from jaxmia import data, pretrained
from jaxmia.errors import UserError
from tests.conftest import require_minilm, require_shared


def _write_tgz(path, members: dict):
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def test_digits_is_embedded():
    d = data.load("digits")
    assert d.x.shape == (1797, 8, 8, 1) and d.num_classes == 10
    assert d.x.dtype == np.float32 and d.y.dtype == np.int32
    np.testing.assert_allclose([d.x.min(), d.x.max()], [-1.0, 1.0])  # (x/16 - .5) / .5


def test_location_real_archive(shared_data_dir):
    require_shared("location/dataset_location.tgz")
    d = data.load("location", shared_data_dir)
    assert d.x.shape == (5010, 446) and d.num_classes == 30
    assert set(np.unique(d.x)) == {0.0, 1.0}
    assert d.y.min() == 0 and d.y.max() == 29  # 1-based quoted labels shifted to 0-based


def test_location_from_env_var(shared_data_dir, monkeypatch):
    require_shared("location/dataset_location.tgz")
    monkeypatch.setenv(data.DATA_DIR_ENV, shared_data_dir)
    assert len(data.load("location")) == 5010


def test_purchase_archive_written_by_test(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.integers(0, 2, (7, 600))
    labels = np.array([1, 100, 5, 7, 9, 50, 2])
    text = "\n".join(f"{l}," + ",".join(map(str, f)) for l, f in zip(labels, feats)) + "\n"
    _write_tgz(tmp_path / "dataset_purchase.tgz", {"dataset_purchase": text.encode()})
    d = data.load("purchase100", str(tmp_path))
    np.testing.assert_array_equal(d.x, feats)
    np.testing.assert_array_equal(d.y, labels - 1)
    assert d.num_classes == 100


def test_texas_archive_written_by_test(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.integers(0, 2, (4, 6169))
    labels = np.array([3, 100, 1, 42])
    _write_tgz(tmp_path / "dataset_texas.tgz", {
        "texas/100/feats": ("\n".join(",".join(map(str, f)) for f in feats) + "\n").encode(),
        "texas/100/labels": ("\n".join(map(str, labels)) + "\n").encode()})
    d = data.load("texas100", str(tmp_path))
    np.testing.assert_array_equal(d.x, feats)
    np.testing.assert_array_equal(d.y, labels - 1)


def test_missing_file_names_file_place_and_origin(tmp_path):
    with pytest.raises(UserError) as e:
        data.load("location", str(tmp_path))
    msg = str(e.value)
    assert "dataset_location.tgz" in msg and str(tmp_path) in msg and "privacytrustlab" in msg
    assert "\n" not in msg


def test_no_data_dir_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(UserError, match="--data_dir"):
        data.load("location", None)


def test_corrupt_archive(tmp_path):
    (tmp_path / "dataset_location.tgz").write_bytes(b"this is not gzip")
    with pytest.raises(UserError, match="not a readable .tgz"):
        data.load("location", str(tmp_path))


def test_wrong_column_count(tmp_path):
    _write_tgz(tmp_path / "dataset_location.tgz", {"bangkok": b'"1",0,1,0\n"2",1,1,0\n'})
    with pytest.raises(UserError, match="446"):
        data.load("location", str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        data.load("mnist")


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_written_by_test(tmp_path):
    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    rng = np.random.default_rng(2)
    tr, te = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    for name, arr in {"train-images-idx3-ubyte": tr, "t10k-images-idx3-ubyte": te,
                      "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 9]),
                      "t10k-labels-idx1-ubyte": np.array([4, 5, 6])}.items():
        (folder / (name + ".gz")).write_bytes(_idx(arr))
    d = data.load("fashion_mnist", str(tmp_path))
    assert d.x.shape == (8, 28, 28, 1)
    np.testing.assert_allclose(d.x[5, ..., 0], (te[0] / 255.0 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_array_equal(d.y, [0, 1, 2, 3, 9, 4, 5, 6])


def test_fashion_mnist_corrupt_idx(tmp_path):
    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / (name + ".gz")).write_bytes(gzip.compress(b"\x01\x02\x03\x04garbage"))
    with pytest.raises(UserError, match="IDX"):
        data.load("fashion_mnist", str(tmp_path))


def _cifar_pack(path, n_train=6, n_test=4):
    rng = np.random.default_rng(3)
    parts = {}
    originals = {}
    for split, n in (("train", n_train), ("test", n_test)):
        blobs, offsets = [], [0]
        imgs = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        for im in imgs:
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="PNG")  # Lossless, so decoding is exact.
            blobs.append(buf.getvalue())
            offsets.append(offsets[-1] + len(blobs[-1]))
        parts[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), np.uint8)
        parts[f"{split}_offsets"] = np.asarray(offsets, np.int64)
        parts[f"{split}_labels"] = rng.integers(0, 10, n).astype(np.uint8)
        originals[split] = imgs
    np.savez(path, **parts)
    return parts, originals


def test_cifar10_pack_written_by_test(tmp_path):
    (tmp_path / "cifar10").mkdir()
    parts, originals = _cifar_pack(tmp_path / "cifar10" / "cifar10_jpeg_q75.npz")
    d = data.load("cifar10", str(tmp_path))
    assert d.x.shape == (10, 32, 32, 3)
    mean, std = np.array(data.images.CIFAR_MEAN), np.array(data.images.CIFAR_STD)
    np.testing.assert_allclose(d.x[6], (originals["test"][0] / 255.0 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(d.y, np.r_[parts["train_labels"], parts["test_labels"]])


def test_cifar10_corrupt_pack(tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar10_jpeg_q75.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(UserError, match="not a readable CIFAR-10"):
        data.load("cifar10", str(tmp_path))


def test_cifar10_real_pack_header(shared_data_dir):
    path = require_shared("cifar10/cifar10_jpeg_q75.npz")
    with np.load(path) as z:
        assert z["train_offsets"].shape == (50001,) and z["test_labels"].shape == (10000,)
        jpeg, off = z["test_jpeg"], z["test_offsets"]
    img = np.asarray(Image.open(io.BytesIO(jpeg[off[0]:off[1]].tobytes())).convert("RGB"))
    assert img.shape == (32, 32, 3)


@pytest.mark.parametrize("name,classes,shape", [("cifar100", 100, (32, 32, 3)),
                                                ("svhn", 10, (32, 32, 3)),
                                                ("chmnist", 8, (32, 32, 3)),
                                                ("cifar10", 10, (32, 32, 3))])
def test_tfds_sources_with_mock_data(name, classes, shape):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        d = data.images.load_tfds(name, None)
    splits = len(data.images._TFDS[name][1])
    assert len(d) == 6 * splits and d.input_shape == shape and d.num_classes == classes
    assert np.isfinite(d.x).all()


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="tfds build cifar100"):
        data.load("cifar100", str(tmp_path))


# GLUE text tasks: the glue_data layout, tokenized with all-MiniLM-L6-v2's tokenizer.

def _glue(tmp_path, folder, train: str, dev: str):
    d = tmp_path / "glue" / folder
    d.mkdir(parents=True)
    (d / "train.tsv").write_text(train, encoding="utf-8")
    (d / "dev.tsv").write_text(dev, encoding="utf-8")
    return str(tmp_path)


def test_glue_files_written_by_test(tmp_path):
    require_minilm()
    root = _glue(tmp_path, "SST-2", "sentence\tlabel\na fine film \t1\ndull , dull\t0\n",
                 "sentence\tlabel\nit works \t1\n")
    ds = data.load("sst2", root)
    assert ds.x.shape == (3, 64) and ds.num_classes == 2 and ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.y, [1, 0, 1])  # train rows, then dev rows
    tok = pretrained.tokenizer()
    first = tok("a fine film ")["input_ids"]  # [CLS] a fine film [SEP]
    np.testing.assert_array_equal(ds.x[0, :len(first)], first)
    assert (ds.x[0, len(first):] == 0).all() and first[0] == 101 and first[-1] == 102
    # Pairs (RTE's named labels, MRPC's byte-order mark, CoLA's headerless columns).
    root = _glue(tmp_path / "r", "RTE", "index\tsentence1\tsentence2\tlabel\n"
                 "0\tA cat sat.\tA cat.\tentailment\n1\tNo.\tYes.\tnot_entailment\n",
                 "index\tsentence1\tsentence2\tlabel\n0\tX.\tY.\tnot_entailment\n")
    rte = data.load("rte", root)
    assert rte.x.shape == (3, 128)
    np.testing.assert_array_equal(rte.y, [0, 1, 1])
    assert ((rte.x == 102).sum(axis=1) == 2).all()  # [CLS] a [SEP] b [SEP]
    root = _glue(tmp_path / "m", "MRPC", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                 "1\t1\t2\tHe said so .\tHe told so .\n",
                 "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t3\t4\tA .\tB .\n")
    np.testing.assert_array_equal(data.load("mrpc", root).y, [1, 0])
    root = _glue(tmp_path / "c", "CoLA", "gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.\n",
                 "gj04\t1\t\tIt rained.\n")
    cola = data.load("cola", root)
    assert cola.x.shape == (3, 48)
    np.testing.assert_array_equal(cola.y, [1, 0, 1])


def test_glue_bad_files_are_one_clear_line(tmp_path):
    require_minilm()
    root = _glue(tmp_path, "SST-2", "text\tlabel\nfine\t1\n", "sentence\tlabel\nok\t1\n")
    with pytest.raises(UserError, match=r"lacks column\(s\) \['sentence'\]"):
        data.load("sst2", root)
    root = _glue(tmp_path / "b", "SST-2", "sentence\tlabel\nfine\t7\n", "sentence\tlabel\nok\t1\n")
    with pytest.raises(UserError, match=r"label\(s\) \['7'\] outside"):
        data.load("sst2", root)
    with pytest.raises(UserError, match="dev.tsv not found"):
        (tmp_path / "b" / "glue" / "SST-2" / "dev.tsv").unlink()
        data.load("sst2", str(tmp_path / "b"))


@pytest.mark.parametrize("task,folder,rows", [("rte", "RTE", 2490 + 277),
                                              ("mrpc", "MRPC", 3668 + 408),
                                              ("cola", "CoLA", 8551 + 1043),
                                              ("sst2", "SST-2", 67349 + 872)])
def test_glue_real_files(shared_data_dir, task, folder, rows):
    require_shared(f"glue/{folder}/train.tsv")
    require_minilm()
    ds = data.load(task, shared_data_dir)
    assert len(ds) == rows  # the README's train + dev row counts
    assert (ds.x[:, 0] == 101).all() and set(np.unique(ds.y)) == {0, 1}
    assert 0.3 < ds.y.mean() < 0.75


def test_subsample_draws_a_seeded_share():
    ds = data.load("digits")
    a, b = data.subsample(ds, 500, seed=3), data.subsample(ds, 500, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    assert len(a) == 500 and not np.array_equal(a.x, data.subsample(ds, 500, seed=4).x)
    # Its rows are rows of the pool.
    flat = {r.tobytes() for r in ds.x.reshape(len(ds), -1)}
    assert all(r.tobytes() in flat for r in a.x.reshape(500, -1))
    assert data.subsample(ds, None, seed=3) is ds
    with pytest.raises(UserError, match="--pool_size=5000 exceeds digits's 1797 rows"):
        data.subsample(ds, 5000, seed=0)
