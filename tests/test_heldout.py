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


def _preds(run):
    import csv
    return {r["path"]: r for r in csv.DictReader(open(run / "predictions.csv"))}


def test_holdout_splits_with_the_seed_and_scores_the_rest(two, tmp_path):
    "--holdout N: N images drawn with the seed are left out of adaptation and scored with their labels at the end."
    adapt, _ = two
    runs = {}
    for name, args in [("all", ["--holdout", "0"]), ("h", ["--holdout", "20"]), ("h2", ["--holdout", "20"]),
                       ("s1", ["--holdout", "20", "--seed", "1"])]:
        r = latteclip("run", "--method", "zeroshot", "--data", adapt, "--out", tmp_path / name, *args)
        assert r.returncode == 0, r.stderr
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert runs["all"]["n_images"] == 80 and "eval_top1" not in runs["all"]
    assert runs["h"]["n_images"] == 60 and runs["h"]["eval_n_images"] == 20
    every, kept = _preds(tmp_path / "all"), _preds(tmp_path / "h")
    held = sorted(set(every) - set(kept))
    assert len(held) == 20 and set(kept) <= set(every)
    acc = round(100 * sum(every[k]["prediction"] == every[k]["label"] for k in held) / 20, 2)
    assert runs["h"]["eval_top1"] == acc                       # zero-shot's predictions of the held-out images
    assert _preds(tmp_path / "h2").keys() == kept.keys()                      # the same seed: the same split
    assert _preds(tmp_path / "s1").keys() != kept.keys()                      # another seed: another split
    c = json.loads((tmp_path / "h" / "config.json").read_text())
    assert c["holdout"] == 20 and c["n_images"] == 80
    r = latteclip("run", "--config", tmp_path / "h" / "config.json", "--out", tmp_path / "again")
    assert r.returncode == 0, r.stderr
    assert _preds(tmp_path / "again").keys() == kept.keys()                   # run --config holds out the same


def test_holdout_never_reads_labels(embedded):
    "The split depends on the number of images and the seed only: relabelled images split the same way."
    import random
    from latteclip.methods import split_holdout
    ds = embedded.subset(range(0, 5000, 25))
    shuffled = ds.relabel(ds.classes, random.Random(0).sample(ds.labels, len(ds)))
    a, b = split_holdout(ds, 50, 3), split_holdout(shuffled, 50, 3)
    assert a[0].keys == b[0].keys and a[1].keys == b[1].keys and len(a[1]) == 50 and len(a[0]) == 150
    assert not set(a[0].keys) & set(a[1].keys)
    assert a[1].labels == [ds.labels[ds.keys.index(k)] for k in a[1].keys]   # held-out images keep their labels


def test_bad_holdout_is_one_sentence(two, embedded, tmp_path):
    "Every impossible --holdout, through run and compare: one sentence, exit 2, nothing written."
    adapt, held = two
    flat = write_images(embedded, range(0, 40, 2), tmp_path / "flat", layout="flat")
    cases = [(["--data", adapt, "--holdout", "-1"], "--holdout must be at least 0 (a whole number), got -1"),
             (["--data", adapt, "--holdout", "79"], "leaves 1 of the 80 images"),
             (["--data", adapt, "--holdout", "500"], "hold out at most 78"),
             (["--data", adapt, "--holdout", "5", "--eval-data", held], "--holdout and --eval-data"),
             (["--data", flat, "--classes", ",".join(embedded.classes), "--holdout", "5"], "needs labelled --data"),
             (["--data", adapt, "--holdout", "many"], "--holdout must be a whole number, got 'many'")]
    for cmd in (["run", "--method", "zeroshot"], ["compare", "--methods", "zeroshot"]):
        for args, words in cases:
            r = latteclip(*cmd, *args, "--out", tmp_path / "out")
            assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (cmd, args, r.stderr)
            assert not (tmp_path / "out").exists()
