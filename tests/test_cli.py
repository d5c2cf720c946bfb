"""The real `latteclip` command in child processes, on real images in temporary folders."""
import csv, json
from pathlib import Path
import numpy as np
import pytest, torch
from conftest import latteclip, write_images

FIELDS = {"method", "dataset", "model", "n_images", "n_classes", "top1", "per_class_mean", "seconds", "peak_rss_mb", "skipped"}


def test_help_lists_commands():
    r = latteclip("--help")
    assert r.returncode == 0
    for c in ["run", "robustness", "pretrain", "shifts"]:
        assert c in r.stdout


def test_zero_shot_on_embedded_fog(tmp_path):
    r = latteclip("run", "--method", "zeroshot", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert FIELDS <= set(m) and m["method"] == "zeroshot" and m["dataset"] == "cifar10-target" and m["shift"] == "fog:5"
    assert m["n_images"] == 4000 and m["n_classes"] == 10 and 10 < m["top1"] < 100 and m["skipped"] == []
    assert m["eval_n_images"] == 1000 and 10 < m["eval_top1"] < 100         # the embedded default holds 1,000 out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["holdout"] == 1000
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == 4000 and set(rows[0]) == {"path", "prediction", "confidence", "label"}
    acc = np.mean([r["prediction"] == r["label"] for r in rows]) * 100
    assert abs(acc - m["top1"]) < 0.01
    assert (tmp_path / "out" / "confusion.png").stat().st_size > 1000


def test_image_folder_with_shift(small_tree, tmp_path):
    r = latteclip("run", "--method", "zeroshot", "--data", small_tree, "--shift", "gaussian_blur:3", "--out", tmp_path / "o", "--templates", "ensemble")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["n_images"] == 60 and m["n_classes"] == 3 and m["shift"] == "gaussian_blur:3" and m["top1"] is not None


def test_flat_folder_predictions_only(embedded, tmp_path):
    flat = write_images(embedded, range(0, 5000, 250), tmp_path / "flat", layout="flat")
    (flat / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = latteclip("run", "--method", "zeroshot", "--data", flat, "--classes", ",".join(embedded.classes), "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["top1"] is None and m["per_class_mean"] is None and m["n_images"] == 20
    assert [s["path"] for s in m["skipped"]] == ["broken.jpg"]
    rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert set(rows[0]) == {"path", "prediction", "confidence"} and len(rows) == 20
    assert (tmp_path / "o" / "predictions.png").exists()


@pytest.mark.parametrize("args, words", [(["--data", "/no/such/dir"], "does not exist"),
                                         (["--model", "ViT-Q-99"], "Unknown model"),
                                         (["--shift", "rain:3"], "Unknown shift"),
                                         (["--out", "/proc/cannot/write"], "Cannot write"),
                                         (["--alpha", "2", "--epochs", "0"], "--epochs must be at least 1; --alpha must be in (0, 1]"),
                                         (["--batch-size", "1"], "--batch-size must be at least 2"),
                                         (["--describer", "magic"], "Unknown describer")])
def test_user_errors_are_one_sentence_and_exit_2(args, words, tmp_path):
    r = latteclip("run", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_method_exits_2():
    r = latteclip("run", "--method", "magic")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_pretrain_and_resume(small_tree, tmp_path):
    base = ["pretrain", "--data", small_tree, "--batch-size", "16", "--val-per-class", "4", "--precision", "fp32"]
    r = latteclip(*base, "--epochs", "2", "--out", tmp_path / "full")
    assert r.returncode == 0, r.stderr
    log = json.loads((tmp_path / "full" / "pretrain.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2] and log["epochs"][1]["loss"] < log["epochs"][0]["loss"] + 1
    # stop after one epoch, then resume: the same final weights as the uninterrupted run
    r1 = latteclip(*base, "--epochs", "2", "--stop-after", "1", "--out", tmp_path / "half")
    assert r1.returncode == 0 and not (tmp_path / "half" / "latteclip-tiny.safetensors").exists()
    r2 = latteclip(*base, "--epochs", "2", "--resume", "--out", tmp_path / "half")
    assert r2.returncode == 0, r2.stderr
    from safetensors.torch import load_file
    a = load_file(tmp_path / "full" / "latteclip-tiny.safetensors"); b = load_file(tmp_path / "half" / "latteclip-tiny.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume must reproduce the uninterrupted run"


def test_robustness_per_class_scores_a_balanced_subset(tmp_path):
    "`--per-class N` scores the first N images of each class under every shift; a count below 1 is one sentence."
    from latteclip.zeroshot import robustness
    rows = robustness(shifts=["fog"], severities=(5,), per_class=3)
    assert [r["shift"] for r in rows] == ["none", "fog"]
    assert all(abs(r["top1"] * 0.3 - round(r["top1"] * 0.3)) < 0.01 for r in rows)   # 30 images: k/30 correct
    r = latteclip("robustness", "--per-class", "0", "--out", tmp_path / "rob")
    assert r.returncode == 2 and "--per-class must be at least 1" in r.stderr and "Traceback" not in r.stderr
