"""Data sources and shifts on real images."""
import zipfile
import numpy as np
import pytest
from latteclip.core import LatteError
from latteclip.data import open_data, parse_shift, Shift, SHIFTS, pack_archive, plasma_fractal
from conftest import write_images


def test_embedded_set(embedded):
    assert len(embedded) == 5000 and embedded.has_labels and len(embedded.classes) == 10
    assert np.bincount(embedded.labels).tolist() == [500] * 10
    assert embedded.image(0).size == (32, 32)


def test_image_folder_and_flat_folder(embedded, small_tree, tmp_path):
    tree = open_data(small_tree)
    assert len(tree) == 60 and tree.classes == ["airplane", "automobile", "bird"] and tree.has_labels
    assert np.bincount(tree.labels).tolist() == [20, 20, 20]
    flat = write_images(embedded, range(0, 5000, 500), tmp_path / "flat", layout="flat")
    (flat / "readme.jpg").write_text("this is text, not a JPEG")
    (flat / ".hidden.jpg").write_bytes(b"")
    ds = open_data(flat, classes="cat, dog")
    assert len(ds) == 10 and not ds.has_labels and ds.classes == ["cat", "dog"]
    assert [k for k, _ in ds.skipped] == ["readme.jpg"]
    with pytest.raises(LatteError, match="--classes"):
        open_data(flat)


def test_archive_roundtrip(small_tree, tmp_path):
    z = pack_archive(small_tree, tmp_path / "a.zip")
    a, b = open_data(z), open_data(small_tree)
    assert a.classes == b.classes and a.labels == b.labels
    assert np.array_equal(np.asarray(a.image(7)), np.asarray(b.image(7)))
    assert zipfile.ZipFile(z).testzip() is None


def test_bad_paths(tmp_path):
    with pytest.raises(LatteError, match="does not exist"):
        open_data(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatteError, match="No images"):
        open_data(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LatteError, match="not a .zip or .tar"):
        open_data(tmp_path / "notes.txt")


def test_classes_must_match_folders(small_tree):
    with pytest.raises(LatteError, match="not among --classes"):
        open_data(small_tree, classes="airplane,truck,ship")
    with pytest.raises(LatteError, match="Duplicate"):
        open_data(small_tree, classes="airplane,airplane,bird")


def test_shift_parsing():
    assert parse_shift("fog:5") == Shift("fog", 5) and parse_shift(None) is None and parse_shift("none") is None
    for bad in ["rain:3", "fog:9", "fog:x"]:
        with pytest.raises(LatteError):
            parse_shift(bad)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_every_shift_is_deterministic_and_changes_the_image(embedded, name):
    img = embedded.image(123)
    a, b = np.asarray(Shift(name, 3)(img)), np.asarray(Shift(name, 3)(img))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(img))
    # severity 5 moves the image further from the original than severity 1
    d1 = np.abs(np.asarray(Shift(name, 1)(img)).astype(int) - np.asarray(img)).mean()
    d5 = np.abs(np.asarray(Shift(name, 5)(img)).astype(int) - np.asarray(img)).mean()
    assert d5 >= d1


def test_shift_semantics(embedded):
    img = embedded.image(42); x = np.asarray(img).astype(float)
    assert np.asarray(Shift("contrast", 5)(img)).std() < 0.3 * x.std()
    g = np.asarray(Shift("grayscale", 1)(img)); assert (g[..., 0] == g[..., 1]).all()
    assert np.asarray(Shift("brightness", 5)(img)).mean() > x.mean()
    assert np.asarray(Shift("gaussian_blur", 5)(img)).astype(float).var() < x.var()
    m = plasma_fractal(32, 2, np.random.default_rng(0)); assert m.shape == (32, 32) and m.min() == 0 and m.max() == 1


def test_shift_depends_on_pixels_not_names(embedded, small_tree, tmp_path):
    flat = write_images(embedded, range(0, 20), tmp_path / "flat", layout="flat")
    a = open_data(small_tree, shift="gaussian_noise:3"); b = open_data(flat, classes="airplane", shift="gaussian_noise:3")
    assert np.array_equal(np.asarray(a.image(0)), np.asarray(b.image(0)))
