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


def _same_names_other_images(embedded, src, dst):
    "A copy of the folder `src` whose every file holds another image of the same class, under the same name."
    import shutil
    shutil.copytree(src, dst)
    for k, c in enumerate(sorted(p.name for p in dst.iterdir())):
        other = [i for i, l in enumerate(embedded.labels) if embedded.classes[l] == c][100:]
        for f, i in zip(sorted((dst / c).iterdir()), other): f.write_bytes(embedded.reader.read(embedded.keys[i]))
    return dst


def test_resume_refuses_a_checkpoint_trained_on_other_data_or_settings(embedded, small_tree, tmp_path):
    "--resume continued a checkpoint trained on other images (20% against 81%): now one sentence, exit 2, untouched."
    other = _same_names_other_images(embedded, small_tree, tmp_path / "other")
    quick = ["--epochs", "1", "--batch-size", "20", "--kinds", "class"]
    r = latteclip("run", "--method", "latteclip", "--data", small_tree, "--out", tmp_path / "o", *quick)
    assert r.returncode == 0, r.stderr[-800:]
    ck = tmp_path / "o" / "checkpoints"
    before = {f.name: f.read_bytes() for f in ck.iterdir()}
    for args, words in [(["--data", other], "images (their content)"), (["--data", small_tree, "--lr", "1e-4"], "--lr"),
                        (["--data", small_tree, "--model", "RN50", "--pretrained", "random"], "--model"),
                        (["--data", small_tree, "--classes", "airplane,automobile,bird,deer"], "classes")]:
        r = latteclip("run", "--method", "latteclip", "--out", tmp_path / "o", "--resume", *quick, *args)
        assert r.returncode == 2 and words in r.stderr and "trained with other" in r.stderr, (args, r.stderr[-600:])
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert {f.name: f.read_bytes() for f in ck.iterdir()} == before       # the checkpoint is as it was
    r = latteclip("run", "--method", "ueo", "--data", small_tree, "--out", tmp_path / "o", "--resume", "--epochs", "1")
    assert r.returncode == 2 and "--method" in r.stderr, r.stderr[-600:]
    r = latteclip("run", "--method", "latteclip", "--data", small_tree, "--out", tmp_path / "o", "--resume", *quick,
                  "--text-cache", tmp_path / "elsewhere.jsonl")                # a setting free to change
    assert r.returncode == 0, r.stderr[-600:]


def test_pseudo_label_cache_keys_on_content(embedded, small_tree, tmp_path, monkeypatch):
    "The same file names holding other images: the cache gave the old labels (97.5% zero-shot where 50% was true)."
    import shutil, torch
    from latteclip.data import open_data
    from latteclip.models import load_clip
    from latteclip.pseudolabels import pseudo_labels
    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path / "cache"))
    clip = load_clip(device="cpu")
    d = tmp_path / "d"; shutil.copytree(small_tree, d)
    first = pseudo_labels(clip, open_data(d))
    shutil.rmtree(d); _same_names_other_images(embedded, small_tree, d)
    again, fresh = pseudo_labels(clip, open_data(d)), pseudo_labels(clip, open_data(d), cache=False)
    assert torch.equal(again.logits, fresh.logits) and not torch.equal(again.logits, first.logits)
    moved = tmp_path / "moved"; shutil.copytree(d, moved)                      # the same images elsewhere: a hit
    assert len(list((tmp_path / "cache" / "pseudolabels").iterdir())) == 2
    assert torch.equal(pseudo_labels(clip, open_data(moved)).logits, fresh.logits)
    assert len(list((tmp_path / "cache" / "pseudolabels").iterdir())) == 2


def test_jsonl_records_match_by_relative_path(embedded, tmp_path, capsys):
    "CIFAR-style folders repeat file names: every cat got a dog's description. Records match by their path's parts."
    from latteclip.data import open_data
    from latteclip.texts import JsonlDescriber, Request
    from latteclip.core import LatteError
    for c, k in (("cat", 3), ("dog", 5)):
        idx = [i for i, l in enumerate(embedded.labels) if l == k][:3]
        (tmp_path / "d" / c).mkdir(parents=True)
        for n, i in enumerate(idx): (tmp_path / "d" / c / f"{n}.png").write_bytes(embedded.reader.read(embedded.keys[i]))
    ds = open_data(tmp_path / "d")
    f = tmp_path / "texts.jsonl"
    recs = [{"path": f"/data/cifar/train/{c}/{n}.png", "text": f"{c} number {n}"} for c in ("dog", "cat") for n in range(3)]
    recs.append({"path": "/data/cifar/train/cat/99.png", "text": "no such image"})
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    jd = JsonlDescriber(f)
    assert jd.match(ds.keys) == dict(images=6, records=7, unused=1)
    assert "1 of the 7 image records" in capsys.readouterr().err
    out = jd.describe([Request("image", None, "cat", "", k) for k in ds.keys])
    assert out == [f"{k.split('/')[0]} number {k.split('/')[1][0]}" for k in ds.keys]
    f.write_text("".join(json.dumps(r) + "\n" for r in recs[:5]))            # dog/2.png has no record now
    with pytest.raises(LatteError, match="no description for 1 of the 6"): JsonlDescriber(f).match(ds.keys)
    f.write_text(json.dumps({"path": "a/cat/0.png", "text": "x"}) + "\n" + json.dumps({"path": "b/cat/0.png", "text": "y"}) + "\n")
    with pytest.raises(LatteError, match="both fit the image cat/0.png"): JsonlDescriber(f).match(ds.keys[:1])


def _damaged_zip(embedded, path, n_per_class=12):
    "A stored .zip of 3 classes whose member airplane/img 0001.jpg has one byte flipped (its CRC no longer matches)."
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for k in range(3):
            for j in range(n_per_class):
                i = k * 500 + j
                z.writestr(f"{embedded.classes[k]}/img {j:04d}.jpg", embedded.reader.read(embedded.keys[i]))
    with zipfile.ZipFile(path) as z: info = z.getinfo("airplane/img 0001.jpg")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def test_every_reader_skips_a_damaged_archive_member(embedded, tmp_path):
    "One CRC-damaged member of a .zip crashed every command: each skips and lists it; a truncated .zip is one sentence."
    z = _damaged_zip(embedded, tmp_path / "data.zip")
    bad = "airplane/img 0001.jpg"
    cmds = {"run": (["run", "--method", "zeroshot", "--data", z], "metrics.json", lambda m: m["skipped"]),
            "robustness": (["robustness", "--data", z, "--severities", "3"], "robustness.md",
                           lambda md: [line.split("`")[1] for line in md.splitlines() if line.startswith("- `")]),
            "pretrain": (["pretrain", "--data", z, "--epochs", "1", "--batch-size", "16", "--val-per-class", "2"],
                         "pretrain.json", lambda m: m["config"]["skipped"]),
            "pretrain-dino": (["pretrain-dino", "--data", z, "--epochs", "1", "--batch-size", "16", "--target", "none"],
                              "dino.json", lambda m: m["config"]["skipped"])}
    for name, (cmd, f, skipped) in cmds.items():
        r = latteclip(*cmd, "--out", tmp_path / name)
        assert r.returncode == 0, (name, r.stderr[-800:])
        text = (tmp_path / name / f).read_text()
        listed = skipped(text if f.endswith(".md") else json.loads(text))
        paths = [s if isinstance(s, str) else s["path"] if isinstance(s, dict) else s[0] for s in listed]
        assert paths == [bad], (name, listed)
    r = latteclip("predict", "--run", tmp_path / "run", "--data", z, "--out", tmp_path / "p")
    assert r.returncode == 0 and [s["path"] for s in json.loads((tmp_path / "p" / "metrics.json").read_text())["skipped"]] == [bad]
    cut = tmp_path / "cut.zip"; cut.write_bytes(z.read_bytes()[:len(z.read_bytes()) // 2])
    for name, (cmd, _, _) in cmds.items():
        cmd = [cut if c == z else c for c in cmd]
        r = latteclip(*cmd, "--out", tmp_path / f"cut-{name}")
        assert r.returncode == 2 and "cannot be read as a .zip" in r.stderr and "Traceback" not in r.stderr, (name, r.stderr[-500:])
        assert not (tmp_path / f"cut-{name}").exists()


def test_compare_reuse_keys_on_the_images_content(embedded, small_tree, tmp_path):
    "Images replaced under the same names: compare --reuse ran nothing again; now the config's fingerprint differs."
    import shutil
    d = tmp_path / "d"; shutil.copytree(small_tree, d)
    args = ["compare", "--methods", "zeroshot", "--data", d, "--out", tmp_path / "cmp", "--reuse"]
    assert latteclip(*args).returncode == 0
    assert "zeroshot: reusing" in latteclip(*args).stdout
    run = tmp_path / "cmp" / "zeroshot"
    first, fp = (run / "predictions.csv").read_text(), json.loads((run / "config.json").read_text())["data_fingerprint"]
    shutil.rmtree(d); _same_names_other_images(embedded, small_tree, d)
    r = latteclip(*args)
    assert r.returncode == 0 and "reusing" not in r.stdout, r.stdout
    assert json.loads((run / "config.json").read_text())["data_fingerprint"] != fp
    assert (run / "predictions.csv").read_text() != first                     # scored on the new images
