"""Held-out (inductive) scoring beside the transductive scores: `--eval-data` images the method never sees, scored
with the adapted model at the end of the run, exactly as `latteclip predict` scores them afterwards."""
import json
import pytest
from conftest import write_images, latteclip


@pytest.fixture(scope="module")
def two(embedded, tmp_path_factory):
    "Two labelled folders of other real images: 8 of each class to adapt on, 6 of each to hold out."
    root = tmp_path_factory.mktemp("heldout")
    return (write_images(embedded, [k * 500 + 100 + j for k in range(10) for j in range(8)], root / "adapt"),
            write_images(embedded, [k * 500 + 200 + j for k in range(10) for j in range(6)], root / "held"))


@pytest.mark.parametrize("method,extra", [("latteclip", ["--epochs", "1", "--batch-size", "16"]),
                                          ("ueo-open", ["--epochs", "1", "--batch-size", "16"])])
def test_eval_data_is_scored_as_predict_scores_it(two, tmp_path, method, extra):
    "eval_top1 of the run equals predict's top-1 on the same folder; the open-set method adds eval_auroc."
    adapt, held = two
    r = latteclip("run", "--method", method, "--data", adapt, "--eval-data", held, "--shift", "fog:3",
                  "--out", tmp_path / "run", *extra)
    assert r.returncode == 0, r.stderr
    assert "held-out: top-1" in r.stdout
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_images"] == (80 if method == "latteclip" else 48)            # transductive: the adapted-to images
    p = latteclip("predict", "--run", tmp_path / "run", "--data", held, "--shift", "fog:3", "--out", tmp_path / "p")
    assert p.returncode == 0, p.stderr
    pm = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert (m["eval_top1"], m["eval_per_class_mean"]) == (pm["top1"], pm["per_class_mean"])
    assert m["eval_n_images"] == pm["n_images"] == (60 if method == "latteclip" else 36)
    if method == "ueo-open":
        assert m["eval_n_unknown_images"] == 24 and m["eval_auroc"] == pm["auroc"] is not None
    else: assert "eval_auroc" not in m
    c = json.loads((tmp_path / "run" / "config.json").read_text())
    assert c["eval_data"] == str(held.resolve()) and c["eval_shift"] is None


def test_eval_shift_and_compare_columns(two, tmp_path):
    "--eval-shift scores the held-out images under another shift; compare's table carries eval_top1."
    adapt, held = two
    r = latteclip("compare", "--methods", "zeroshot", "--data", adapt, "--eval-data", held, "--shift", "fog:3",
                  "--eval-shift", "none", "--out", tmp_path / "cmp")
    assert r.returncode == 0, r.stderr
    assert "eval_top1" in (tmp_path / "cmp" / "table.md").read_text().splitlines()[0]
    row = json.loads((tmp_path / "cmp" / "table.json").read_text())[0]
    p = latteclip("predict", "--run", tmp_path / "cmp" / "zeroshot", "--data", held, "--shift", "none",
                  "--out", tmp_path / "p")
    assert p.returncode == 0, p.stderr
    assert row["eval_top1"] == json.loads((tmp_path / "p" / "metrics.json").read_text())["top1"]


def test_unlabelled_or_bad_eval_data_is_one_sentence(two, embedded, tmp_path):
    "A flat folder, a missing folder or a bad shift: one sentence, exit 2, nothing written."
    adapt, _ = two
    flat = write_images(embedded, [1, 2], tmp_path / "flat", layout="flat")
    for args, words in [(["--eval-data", flat], "has no labels"),
                        (["--eval-data", tmp_path / "none"], f"--eval-data {tmp_path / 'none'} does not exist"),
                        (["--eval-data", adapt, "--eval-shift", "fog:9"], "severity")]:
        r = latteclip("run", "--method", "zeroshot", "--data", adapt, "--out", tmp_path / "out", *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "out").exists()
