"""Tests for sparsekit.io (datasets, dataset, idx, synthetic): IDX parsing, look-up order,
preprocessing, loaders, validation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

import sparsekit.io.datasets as ds
from sparsekit._compat import has_sklearn
from sparsekit.io.dataset import Dataset, check_xy, from_arrays
from sparsekit.io.idx import read_idx
from sparsekit.io.synthetic import make_synthetic

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    """Write an IDX file by hand (independent of the reader), gzip when the name ends in .gz."""
    big = {0x08: "u1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    data = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + np.ascontiguousarray(array, dtype=big).tobytes())
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def make_fmnist_dir(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True,
                    seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "y_train": np.arange(n_train, dtype=np.uint8) % 10,
              "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "y_test": np.arange(n_test, dtype=np.uint8) % 10}
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in zip(FILES, arrays.values(), strict=True):
        write_idx(folder / (stem + (".gz" if gz else "")), arr)
    return arrays


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """No SPARSEKIT_DATA and no Debian files: only what a test puts in place is found."""
    monkeypatch.delenv("SPARSEKIT_DATA", raising=False)
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")


# --------------------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_idx_round_trip(tmp_path, suffix, code, dtype):
    arr = (np.arange(2 * 3 * 5) * 7 - 20).reshape(2, 3, 5)
    arr = (arr % 256 if dtype == np.uint8 else arr).astype(dtype)
    write_idx(tmp_path / ("a.idx" + suffix), arr, code)
    out = read_idx(tmp_path / ("a.idx" + suffix))
    assert out.dtype == dtype and out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_and_corrupt(tmp_path, gz):
    good = tmp_path / "good"
    write_idx(good, np.ones((10, 4, 4), np.uint8))
    raw = good.read_bytes()
    pack = gzip.compress if gz else (lambda b: b)
    cases = {"truncated": pack(raw[:-5]), "too long": pack(raw + b"\0"),
             "bad magic": pack(b"\x12\x34" + raw[2:]), "bad type": pack(raw[:2] + b"\x07" + raw[3:]),
             "short header": pack(raw[:6]), "empty": pack(b"")}
    for what, data in cases.items():
        p = tmp_path / f"{what}.idx"
        p.write_bytes(data)
        with pytest.raises(ValueError, match=str(p)):
            read_idx(p)
    if gz:  # a cut gzip stream (not just a cut payload)
        p = tmp_path / "cut.gz"
        p.write_bytes(gzip.compress(raw)[:-20])
        with pytest.raises(ValueError, match="cut.gz"):
            read_idx(p)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


def test_idx_huge_header_does_not_allocate(tmp_path):
    p = tmp_path / "huge.gz"
    p.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + np.array([60000, 60000, 60000], ">u4").tobytes()))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(p)


# ---------------------------------------------------------------------------- Fashion-MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_data_dir(tmp_path, no_data, gz):
    raw = make_fmnist_dir(tmp_path / "fm", gz=gz)
    d = ds.load_dataset("fashion-mnist", data_dir=tmp_path / "fm", standardize=False)
    assert d.x_train.shape == (60, 784) and d.x_test.shape == (20, 784)
    assert d.x_train.dtype == np.float32 and d.x_train.flags.c_contiguous
    assert d.y_train.dtype == np.int64 and d.n_classes == 10 and d.image_shape == (28, 28)
    assert d.n_features == 784 and d.class_names[9] == "Ankle boot"
    np.testing.assert_allclose(d.x_train, raw["x_train"].reshape(60, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_test, raw["y_test"])


def test_fashion_mnist_standardized_with_train_stats(tmp_path, no_data):
    raw = make_fmnist_dir(tmp_path / "fm")
    d = ds.load_dataset("fashion-mnist", data_dir=tmp_path / "fm")
    xtr = raw["x_train"].reshape(60, -1) / 255.0
    mean, std = xtr.mean(0), xtr.std(0)
    np.testing.assert_allclose(d.x_train, (xtr - mean) / std, atol=2e-5)
    np.testing.assert_allclose(d.x_test, (raw["x_test"].reshape(20, -1) / 255.0 - mean) / std,
                               atol=2e-5)


def test_fashion_mnist_lookup_order(tmp_path, monkeypatch, no_data):
    make_fmnist_dir(tmp_path / "debian", n_train=30, seed=1)
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    assert ds.load_dataset("fashion-mnist").x_train.shape[0] == 30
    make_fmnist_dir(tmp_path / "env" / "fashion-mnist", n_train=40, gz=False)
    monkeypatch.setenv("SPARSEKIT_DATA", str(tmp_path / "env"))
    assert ds.load_dataset("fashion_mnist").x_train.shape[0] == 40
    make_fmnist_dir(tmp_path / "env", n_train=50)
    assert ds.load_dataset("fashion-mnist").x_train.shape[0] == 50
    make_fmnist_dir(tmp_path / "mine", n_train=20)
    assert ds.load_dataset("fashion-mnist", data_dir=tmp_path / "mine").x_train.shape[0] == 20


def test_fashion_mnist_missing_lists_every_place(tmp_path, monkeypatch, no_data):
    monkeypatch.setenv("SPARSEKIT_DATA", str(tmp_path / "envdir"))
    half = tmp_path / "envdir"
    half.mkdir()
    write_idx(half / (FILES[0] + ".gz"), np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError) as err:
        ds.load_dataset("fashion-mnist")
    msg = str(err.value)
    assert "\n" not in msg
    for place in (half, half / "fashion-mnist", tmp_path / "no-debian"):
        assert str(place) in msg
    for hint in ("apt-get install dataset-fashion-mnist", "zalandoresearch/fashion-mnist",
                 "--data-dir", "SPARSEKIT_DATA", "t10k-labels-idx1-ubyte", "missing"):
        assert hint in msg
    monkeypatch.delenv("SPARSEKIT_DATA")
    with pytest.raises(FileNotFoundError, match=r"SPARSEKIT_DATA \(not set\)"):
        ds.load_dataset("fashion-mnist")
    # an explicit data_dir is strict: it never falls back to another copy
    make_fmnist_dir(tmp_path / "no-debian")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ds.load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")


def test_fashion_mnist_mismatched_files(tmp_path, no_data):
    make_fmnist_dir(tmp_path / "fm")
    write_idx(tmp_path / "fm" / "train-labels-idx1-ubyte.gz", np.zeros(59, np.uint8))
    with pytest.raises(ValueError, match="do not match"):
        ds.load_dataset("fashion-mnist", data_dir=tmp_path / "fm")


@pytest.mark.skipif(not all((ds.DEBIAN_FASHION_MNIST_DIR / (f + ".gz")).is_file() for f in FILES),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("SPARSEKIT_DATA", raising=False)
    d = ds.load_dataset("fashion-mnist")
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.n_classes == 10 and d.image_shape == (28, 28)
    np.testing.assert_array_equal(np.bincount(d.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(d.y_test), [1000] * 10)
    cols = d.x_train[:, ::37].astype(np.float64)  # a sample of columns: cheap, and exact stats
    np.testing.assert_allclose(cols.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(cols.std(0), 1.0, atol=1e-4)
    assert 0 < np.abs(d.x_test[:, ::37].mean(0)).max() < 0.1  # test set: train stats, near 0


# ----------------------------------------------------------------------- digits, synthetic

@pytest.mark.skipif(not has_sklearn, reason="scikit-learn not installed")
def test_digits_split_deterministic_and_stratified():
    a = ds.load_dataset("digits")
    b = ds.load_dataset("digits")
    c = ds.load_dataset("digits", seed=1)
    assert a.x_train.shape == (1797 - len(a.y_test), 64) and a.image_shape == (8, 8)
    assert abs(len(a.y_test) - 0.25 * 1797) <= 10
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)
    counts = np.bincount(a.y_test, minlength=10) / np.bincount(np.r_[a.y_train, a.y_test])
    np.testing.assert_allclose(counts, 0.25, atol=0.02)
    np.testing.assert_allclose(a.x_train.mean(0), 0, atol=1e-5)
    raw = ds.load_dataset("digits", standardize=False)
    assert raw.x_train.min() == 0 and raw.x_train.max() == 1


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setattr(ds._compat, "has_sklearn", False)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        ds.load_dataset("digits")


def test_synthetic_shapes_balance_determinism():
    kw = dict(n_samples=1003, n_features=37, n_informative=4, n_classes=3,
              n_clusters_per_class=2, flip_y=0.0, seed=5)
    a, b = ds.load_dataset("synthetic", **kw), ds.load_dataset("synthetic", **kw)
    c = ds.load_dataset("synthetic", **{**kw, "seed": 6})
    assert a.x_train.shape[1] == 37 and a.x_train.shape[0] + a.x_test.shape[0] == 1003
    assert abs(a.x_test.shape[0] - 0.25 * 1003) <= 3 and a.image_shape is None
    counts = np.bincount(np.r_[a.y_train, a.y_test])
    assert counts.max() - counts.min() <= 1
    assert np.bincount(a.y_test).max() - np.bincount(a.y_test).min() <= 2
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    np.testing.assert_allclose(a.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(a.x_train.std(0), 1, atol=1e-4)
    # rows are shuffled: classes are interleaved, not in blocks
    assert len(np.unique(a.y_train[:30])) == 3


def test_synthetic_structure():
    d = make_synthetic(n_samples=2000, n_features=30, n_informative=3, n_redundant=6,
                          flip_y=0.0, standardize=False, n_clusters_per_class=1)
    x = np.r_[d.x_train, d.x_test].astype(np.float64)
    # 3 informative + 6 redundant columns span only 3 dimensions; the other 21 are independent
    assert np.linalg.matrix_rank(x - x.mean(0), tol=1e-4 * np.abs(x).max() * len(x)) == 24
    corr = np.abs(np.corrcoef(x.T))
    np.fill_diagonal(corr, 0)
    assert (corr.max(0) < 0.15).sum() == 21  # the noise columns correlate with nothing


def test_synthetic_flip_y_and_madelon_defaults():
    m = ds.load_dataset("madelon")
    assert m.name == "madelon-like" and m.n_features == 500 and m.n_classes == 2
    assert m.x_train.shape[0] + m.x_test.shape[0] == 4400
    clean = make_synthetic(n_samples=4000, n_features=10, n_informative=3, n_clusters_per_class=2,
                               flip_y=0.0, seed=1)
    noisy = make_synthetic(n_samples=4000, n_features=10, n_informative=3, n_clusters_per_class=2,
                               flip_y=0.5, seed=1)
    changed = np.mean(clean.y_train != noisy.y_train)
    assert 0.15 < changed < 0.35  # half the labels redrawn, half of those land on the other class


def test_synthetic_linear_model_separates_easy_data():
    d = make_synthetic(n_samples=3000, n_features=40, n_informative=5, n_classes=3,
                          n_clusters_per_class=1, class_sep=2.0, flip_y=0.0, seed=0)
    xb = np.c_[d.x_train, np.ones(len(d.x_train))]
    w = np.linalg.lstsq(xb, np.eye(3)[d.y_train], rcond=None)[0]
    acc = np.mean(np.argmax(np.c_[d.x_test, np.ones(len(d.x_test))] @ w, 1) == d.y_test)
    assert acc > 0.85  # chance is 1/3


def test_synthetic_large_informative_space():
    d = make_synthetic(n_samples=200, n_features=100, n_informative=70, n_redundant=0,
                          n_classes=4, n_clusters_per_class=3)
    assert d.x_train.shape[1] == 100


@pytest.mark.parametrize("kw,match", [
    ({"n_classes": 1}, "n_classes"), ({"n_informative": 0}, "n_informative"),
    ({"n_features": 10, "n_informative": 5, "n_redundant": 6}, "n_features"),
    ({"n_informative": 2, "n_clusters_per_class": 4}, "hypercube"),
    ({"flip_y": 1.5}, "flip_y"), ({"test_fraction": 1.0}, "test_fraction"),
    ({"n_samples": 3}, "n_samples"), ({"class_sep": -1}, "class_sep")])
def test_synthetic_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        ds.load_dataset("synthetic", **kw)


def test_unknown_name_and_options(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        ds.load_dataset("cifar-10")
    with pytest.raises(TypeError, match="n_hidden"):
        ds.load_dataset("synthetic", n_hidden=3)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ds.load_dataset(tmp_path / "missing.npz")


# ------------------------------------------------------------------------- npz, user arrays

def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(40, 6)), "y_train": np.arange(40) % 4,
              "x_test": rng.normal(size=(12, 6)), "y_test": np.arange(12) % 4}
    np.savez(tmp_path / "mine.npz", **arrays)
    d = ds.load_dataset(tmp_path / "mine.npz", standardize=False)
    assert d.name == "mine" and d.n_classes == 4
    np.testing.assert_allclose(d.x_train, arrays["x_train"].astype(np.float32))
    np.testing.assert_array_equal(d.y_test, arrays["y_test"])
    z = ds.load_dataset(str(tmp_path / "mine.npz"))
    np.testing.assert_allclose(z.x_train.mean(0), 0, atol=1e-6)
    np.savez(tmp_path / "train_only.npz", x_train=arrays["x_train"], y_train=arrays["y_train"])
    t = ds.load_dataset(tmp_path / "train_only.npz", test_fraction=0.25)
    assert len(t.y_test) == 12 and len(t.y_train) == 28


def test_npz_refuses_pickles_and_garbage(tmp_path):
    obj = np.array([{"a": 1}, None, 3], dtype=object)
    np.savez(tmp_path / "obj.npz", x_train=np.zeros((3, 2)), y_train=obj)
    with pytest.raises(ValueError, match="y_train holds Python objects"):
        ds.load_dataset(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ValueError, match="junk.npz"):
        ds.load_dataset(tmp_path / "junk.npz")
    np.savez(tmp_path / "keys.npz", x=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(ValueError, match="x_train, y_train"):
        ds.load_dataset(tmp_path / "keys.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        ds.load_dataset(tmp_path / "single.npy")


def test_from_arrays_label_mapping():
    x = np.arange(24, dtype=np.float64).reshape(12, 2)
    y = np.array(["cat", "dog", "ant"] * 4)
    d = from_arrays(x[:8], y[:8], x[8:], np.array(["dog", "dog", "cat", "emu"]))
    assert list(d.classes) == ["ant", "cat", "dog", "emu"] and d.n_classes == 4
    np.testing.assert_array_equal(d.classes[d.y_train], y[:8])
    np.testing.assert_array_equal(d.y_test, [2, 2, 1, 3])
    np.testing.assert_array_equal(d.x_train, x[:8])  # not standardized by default
    ints = from_arrays(x, np.array([10, 20, 30] * 4), test_fraction=0.25, seed=3)
    assert list(ints.classes) == [10, 20, 30] and len(ints.y_test) == 3
    np.testing.assert_array_equal(np.bincount(ints.y_test), [1, 1, 1])
    mixed = from_arrays(x, np.array([1, "a", (2, 3)] * 4, dtype=object), test_fraction=0)
    assert mixed.n_classes == 3 and mixed.x_test.shape == (0, 2)
    kept = from_arrays(x, np.arange(12) % 3, n_classes=5, test_fraction=0)
    assert kept.n_classes == 5 and kept.classes is None
    with pytest.raises(ValueError, match="y_train has label 3 outside 0..2"):
        from_arrays(x, np.arange(12) % 4, n_classes=3)
    with pytest.raises(ValueError, match="together"):
        from_arrays(x, y, x_test=x)
    with pytest.raises(ValueError, match="x_test has 3 features"):
        from_arrays(x, y, np.zeros((2, 3)), ["cat", "dog"])


def test_z_score_uses_train_statistics_only():
    rng = np.random.default_rng(0)
    xtr = rng.normal(5.0, 3.0, (500, 4))
    xtr[:, 3] = 7.0  # a constant feature must not divide by zero
    xte = rng.normal(-50.0, 10.0, (100, 4))
    d = from_arrays(xtr, np.arange(500) % 2, xte, np.arange(100) % 2, standardize=True)
    mean, std = xtr.mean(0), xtr.std(0)
    std[3] = 1.0
    np.testing.assert_allclose(d.x_train, (xtr - mean) / std, atol=1e-4)
    np.testing.assert_allclose(d.x_test, (xte - mean) / std, rtol=1e-5, atol=1e-4)
    assert np.all(d.x_train[:, 3] == 0) and np.isfinite(d.x_test).all()
    assert d.x_test.mean() < -5  # the test set's own statistics were not used
    x32 = np.ascontiguousarray(xtr, dtype=np.float32)
    keep = x32.copy()
    from_arrays(x32, np.arange(500) % 2, x32[:10], np.arange(10) % 2, standardize=True)
    np.testing.assert_array_equal(x32, keep)  # the caller's arrays are never modified


# ------------------------------------------------------------------------ validation, batches

@pytest.mark.parametrize("x,y,kw,match", [
    (np.zeros(5), np.zeros(5, int), {}, "x must be 2-D"),
    (np.zeros((2, 2, 2)), np.zeros(2, int), {}, "x must be 2-D"),
    (np.array([[1.0, np.nan], [0, 0]]), [0, 1], {}, r"x contains NaN or inf \(first at row 0, column 1\)"),
    (np.array([[1.0, 0], [np.inf, 0]]), [0, 1], {}, "row 1, column 0"),
    (np.array([["a", "b"]]), [0], {}, "x must hold real numbers"),
    (np.zeros((3, 2)), [0, 1], {}, "y has 2 labels but x has 3 rows"),
    (np.zeros((2, 2)), [[0], [1]], {}, "y must be 1-D"),
    (np.zeros((2, 2)), [0, 0.5], {}, "y must hold integer class labels"),
    (np.zeros((2, 2)), [0, np.nan], {}, "y must hold integer class labels"),
    (np.zeros((2, 2)), ["a", "b"], {}, "y must hold integer class labels"),
    (np.zeros((2, 2)), [0, -1], {}, "y has label -1"),
    (np.zeros((2, 2)), [0, 3], {"n_classes": 3}, r"y has label 3 outside 0\.\.2"),
    (np.zeros((2, 2)), [0, 1], {"n_features": 3}, "x has 2 features, expected 3"),
])
def test_check_xy_errors(x, y, kw, match):
    with pytest.raises(ValueError, match=match) as err:
        check_xy(x, y, **kw)
    assert "\n" not in str(err.value)


def test_check_xy_passes_and_converts():
    x, y = check_xy(np.ones((3, 2), np.uint8), np.array([0.0, 1.0, 2.0]), n_classes=3)
    assert x.dtype == np.float32 and y.dtype == np.int64
    x64, _ = check_xy(np.ones((3, 2)), None)
    assert x64.dtype == np.float64
    x = np.ones((20000, 3), np.float32)
    x[15000, 2] = np.nan  # beyond the first block
    with pytest.raises(ValueError, match="row 15000, column 2"):
        check_xy(x, names=("x_train", "y_train"))


def test_dataset_validates_on_construction():
    x, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="x_test has 2 features"):
        Dataset(x, y, np.zeros((2, 2)), np.array([0, 1]), 2, "t")
    with pytest.raises(ValueError, match="y_test has label 2"):
        Dataset(x, y, np.zeros((2, 3)), np.array([0, 2]), 2, "t")
    with pytest.raises(ValueError, match="n_classes"):
        Dataset(x, y, x, y, 1, "t")
    with pytest.raises(ValueError, match="image_shape"):
        Dataset(x, y, x, y, 2, "t", image_shape=(2, 2))
    d = Dataset(np.asfortranarray(x), y.astype(np.int32), x, y, 2, "t")
    assert d.x_train.flags.c_contiguous and d.x_train.dtype == np.float32
    assert d.y_train.dtype == np.int64 and "train=(4, 3)" in repr(d)
    with pytest.raises(AttributeError):
        d.name = "other"


def test_iterate_minibatches():
    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    batches = list(ds.iterate_minibatches(x, y, 3, np.random.default_rng(0)))
    assert [len(b[1]) for b in batches] == [3, 3, 3]
    seen = np.concatenate([b[1] for b in batches])
    assert len(set(seen)) == 9 and not np.array_equal(seen, np.arange(9))
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)
    again = list(ds.iterate_minibatches(x, y, 3, np.random.default_rng(0)))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in again]), seen)
    idx = list(ds.iterate_minibatches(x, None, 4, None, drop_last=False, indices=True))
    assert [i.tolist() for i in idx] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="batch_size"):
        ds.iterate_minibatches(x, y, 11, None)
    with pytest.raises(ValueError, match="batch_size"):
        ds.iterate_minibatches(x, y, 0, None)
    with pytest.raises(ValueError, match="y has 9 labels"):
        ds.iterate_minibatches(x, y[:9], 2, None)


def test_data_without_feature_columns_is_refused():
    from sparsekit.io.dataset import from_arrays

    with pytest.raises(ValueError, match=r"x_train has no feature columns \(shape \(10, 0\)\)"):
        from_arrays(np.zeros((10, 0)), np.arange(10) % 2)
