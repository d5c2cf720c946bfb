"""Mistakes that used to give a silently wrong result (issue 18), run for real: real image files, the real command."""
import io, json
import numpy as np
import pytest
from PIL import Image
from conftest import latteclip, write_images


def test_exif_orientation_is_applied(embedded, tmp_path):
    "A phone photo stored sideways with EXIF orientation 6 is read upright (as every viewer shows it)."
    from latteclip.data import open_data
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    img.paste((10, 10, 200), (0, 0, 10, 20))                                  # a blue band on the left
    exif = Image.Exif(); exif[0x0112] = 6                                      # "rotate 90 clockwise to view"
    (tmp_path / "d" / "cat").mkdir(parents=True); (tmp_path / "d" / "dog").mkdir()
    img.save(tmp_path / "d" / "cat" / "phone.jpg", exif=exif.tobytes(), quality=95)
    img.save(tmp_path / "d" / "dog" / "plain.jpg", quality=95)
    ds = open_data(tmp_path / "d")
    up, plain = ds.image(ds.keys.index("cat/phone.jpg")), ds.image(ds.keys.index("dog/plain.jpg"))
    assert plain.size == (40, 20) and up.size == (20, 40)
    a = np.asarray(up).astype(int)
    assert a[2, 10, 2] > 150 and a[-3, 10, 0] > 150                           # the blue band is now on top


def test_every_pillow_photo_format_is_listed(embedded, tmp_path):
    "AVIF, JPEG 2000, QOI and netpbm files are images too: listed, read, not dropped unseen."
    from latteclip.data import open_data
    src = embedded.image(0)
    for ext, fmt in [(".avif", "AVIF"), (".jp2", "JPEG2000"), (".qoi", "QOI"), (".ppm", "PPM"), (".png", "PNG")]:
        for c in ("cat", "dog"):
            (tmp_path / c).mkdir(exist_ok=True)
            src.save(tmp_path / c / f"x{ext}", format=fmt)
    ds = open_data(tmp_path)
    assert len(ds) == 10 and ds.skipped == [], ds.skipped
    assert all(ds.image(i).size == (32, 32) for i in range(len(ds)))


def test_class_folders_differing_only_in_case_are_refused(embedded, tmp_path):
    "Cat/ and cat/ would be merged into one label while both stayed classes: one sentence, exit 2, for run and predict."
    write_images(embedded, range(0, 10), tmp_path / "d")
    (tmp_path / "d" / "airplane").rename(tmp_path / "d" / "Cat")
    write_images(embedded, range(500, 510), tmp_path / "d")
    (tmp_path / "d" / "automobile").rename(tmp_path / "d" / "cat")
    write_images(embedded, range(1000, 1010), tmp_path / "d")
    for cmd in (["run", "--method", "zeroshot"], ["compare", "--methods", "zeroshot"], ["robustness"]):
        r = latteclip(*cmd, "--data", tmp_path / "d", "--out", tmp_path / "o")
        assert r.returncode == 2 and "Cat and cat" in r.stderr and "Traceback" not in r.stderr, (cmd, r.stderr)
        assert not (tmp_path / "o").exists()


def test_one_class_data_is_refused_by_every_method(embedded, tmp_path):
    "One class: nothing to tell apart (LatteCLIP's mixer crashed): one sentence before any work, for every method."
    write_images(embedded, range(0, 12), tmp_path / "d")
    from latteclip.methods import load
    for m in load():
        r = latteclip("run", "--method", m, "--data", tmp_path / "d", "--out", tmp_path / "o", timeout=120)
        assert r.returncode == 2 and "needs at least two classes" in r.stderr and "Traceback" not in r.stderr, \
            (m, r.stderr[-400:])
        assert not (tmp_path / "o").exists()


def test_dac_shots_that_leave_a_class_nothing_to_score(small_tree, tmp_path):
    "--shots equal to a class's size left 0 test images ('DAC None%'): refused in one sentence; one fewer runs."
    r = latteclip("run", "--method", "dac", "--data", small_tree, "--shots", "20", "--out", tmp_path / "o")
    assert r.returncode == 2 and "leaves no image to score of airplane" in r.stderr and "at most 19" in r.stderr
    assert not (tmp_path / "o").exists()
    from latteclip.dac import few_shot_split
    shot, rest = few_shot_split([0] * 5 + [1] * 6, 2, 4)
    assert len(shot) == 8 and len(rest) == 3


def test_robustness_takes_shift_and_classes_and_skips_bad_files(small_tree, tmp_path):
    "robustness: --shift gives clean and that shift only, --classes names the classes, a broken file is skipped."
    import shutil
    d = tmp_path / "d"; shutil.copytree(small_tree, d)
    (d / "bird" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    r = latteclip("robustness", "--data", d, "--shift", "fog:5", "--classes", "airplane,automobile,bird",
                  "--per-class", "5", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "o" / "robustness.json").read_text())
    assert [(x["shift"], x["severity"]) for x in rows] == [("none", 0), ("fog", 5)]
    r = latteclip("robustness", "--data", d, "--classes", "airplane,car", "--out", tmp_path / "o2")
    assert r.returncode == 2 and "not among --classes" in r.stderr and not (tmp_path / "o2").exists()
    r = latteclip("robustness", "--data", d, "--shift", "rain:3", "--out", tmp_path / "o3")
    assert r.returncode == 2 and "Unknown shift" in r.stderr and not (tmp_path / "o3").exists()


def test_random_weights_are_said_loudly(embedded, tmp_path, capsys):
    "An architecture without --pretrained trains random weights: a warning says so, metrics.json says random."
    from latteclip.models import load_clip
    from latteclip.methods import run_method
    load_clip("RN50", None, "cpu")
    err = capsys.readouterr().err
    assert "RN50 starts from random weights" in err and "--pretrained random" in err and "openai" in err
    load_clip("RN50", "random", "cpu")                                        # asked for: no warning
    load_clip(device="cpu")                                                   # the shipped weights: none either
    assert "random weights" not in capsys.readouterr().err
    m = run_method("zeroshot", ds=embedded.subset(range(0, 5000, 500)), model="RN50", pretrained="random",
                   out=tmp_path / "o")
    assert m["pretrained"] == "random"
    assert run_method("zeroshot", ds=embedded.subset(range(0, 5000, 500)), out=tmp_path / "t")["pretrained"] \
        == "latteclip-tiny.safetensors"


def test_output_folders_are_never_data(small_tree, tmp_path):
    "--out inside --data is refused for every command that writes; a run folder already there is not read as images."
    import shutil
    d = tmp_path / "d"; shutil.copytree(small_tree, d)
    for cmd in (["run", "--method", "zeroshot", "--data", d], ["compare", "--methods", "zeroshot", "--data", d],
                ["robustness", "--data", d], ["run", "--method", "zeroshot", "--data", small_tree, "--eval-data", d]):
        r = latteclip(*cmd, "--out", d / "bird" / "run")
        assert r.returncode == 2 and "is inside --" in r.stderr and "Traceback" not in r.stderr, (cmd, r.stderr)
        assert not (d / "bird" / "run").exists()
    r = latteclip("run", "--method", "zeroshot", "--data", small_tree, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    r = latteclip("predict", "--run", tmp_path / "run", "--data", d, "--out", d / "p")
    assert r.returncode == 2 and "is inside --data" in r.stderr
    shutil.copytree(tmp_path / "run", d / "bird" / "old-run")                 # made by an older version, say
    from latteclip.data import open_data
    ds = open_data(d)
    assert len(ds) == 60 and not any("old-run" in k for k in ds.keys)       # its confusion.png is not a bird


def test_names_that_are_not_utf8_survive_to_the_end(small_tree, tmp_path):
    "A file and a class folder whose names are not UTF-8 (Latin-1 bytes): every file of the run is written."
    import os, shutil, csv
    d = tmp_path / "d"; shutil.copytree(small_tree, d)
    first = sorted((d / "bird").iterdir())[0]
    os.rename(first, os.fsencode(d / "bird") + b"/caf\xe9.jpg")
    os.rename(d / "automobile", os.fsencode(d) + b"/voitur\xe9")
    for m, extra in [("zeroshot", []), ("latteclip", ["--epochs", "1", "--batch-size", "20"])]:
        r = latteclip("run", "--method", m, "--data", d, "--out", tmp_path / m, *extra)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-800:]
        rows = list(csv.DictReader(open(tmp_path / m / "predictions.csv", encoding="utf-8")))
        assert len(rows) == 60 and "bird/caf\\xe9.jpg" in {x["path"] for x in rows}
        assert "voitur\\xe9" in json.loads((tmp_path / m / "classifier.json").read_text())["classes"]
    r = latteclip("predict", "--run", tmp_path / "latteclip", "--data", d, "--out", tmp_path / "p")
    assert r.returncode == 0, r.stderr[-800:]
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["n_images"] == 60
