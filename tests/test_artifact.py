"""The adapted model leaves the run: every method's run writes an open_clip `local-dir:` model and its head, and
`latteclip predict` (a second process) gives exactly the run's own predictions; plain open_clip reads the model."""
import csv, json
from pathlib import Path
import pytest, torch
from conftest import write_images, latteclip
from latteclip.core import LatteError
from latteclip.methods import group, run_method

QUICK = dict(epochs=1, batch_size=32)
SETTINGS = {"zeroshot": {}, "dac": dict(shots=4, steps=20), "nola": dict(QUICK, head_epochs=2),
            "ueo": QUICK, "ueo-open": QUICK, "latteclip": QUICK, "flyp-pseudo": QUICK}


@pytest.fixture(scope="module")
def folder(embedded, tmp_path_factory):
    "160 real images, 16 of each of the 10 classes, as a labelled folder."
    return write_images(embedded, [k * 500 + j for k in range(10) for j in range(16)], tmp_path_factory.mktemp("ten"))


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory):
    "One finished run of every method of `compare --methods all` on `folder`, under fog:3."
    root = tmp_path_factory.mktemp("runs")
    assert set(SETTINGS) == set(group("all")), "a method of `all` without its quick settings here"
    return {m: (root / m, run_method(m, data=folder, shift="fog:3", out=root / m, **SETTINGS[m])) for m in SETTINGS}


def rows(path) -> dict:
    "predictions.csv as {path: (prediction, confidence, label)}."
    with open(path) as fh: return {r["path"]: (r["prediction"], r["confidence"], r.get("label")) for r in csv.DictReader(fh)}


@pytest.mark.parametrize("method", list(SETTINGS))
def test_predict_gives_the_runs_own_predictions(method, runs, folder, embedded, tmp_path):
    "`latteclip predict` in a second process, on the run's own images: every image's prediction and confidence equal."
    run, m = runs[method]
    head = json.loads((run / "classifier.json").read_text())
    assert head["method"] == method and head["classes"] == (m.get("known_classes") or sorted(embedded.classes))
    from safetensors import safe_open
    with safe_open(run / "model" / "open_clip_model.safetensors", "pt") as fh: keys = list(fh.keys())
    assert not any(k.startswith("__") for k in keys)                          # the model's own keys, nothing else
    r = latteclip("predict", "--run", run, "--data", folder, "--shift", "fog:3", "--out", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    mine, again = rows(run / "predictions.csv"), rows(tmp_path / "p" / "predictions.csv")
    assert mine and set(mine) <= set(again)                                   # DAC's run scores the non-shot images
    assert {k: again[k] for k in mine} == mine
    p = json.loads((tmp_path / "p" / "metrics.json").read_text())
    if method != "dac": assert p["top1"] == m["top1"] and p["n_images"] == m["n_images"]
    if method == "ueo-open":                                                   # 4 unknown classes of 16 images each
        assert p["n_unknown_images"] == 64 and p["auroc"] is not None and (tmp_path / "p" / "open_set.csv").exists()


@pytest.mark.parametrize("method", ["zeroshot", "latteclip", "flyp-pseudo", "ueo"])
def test_plain_open_clip_reproduces_the_run(method, runs, folder):
    ("The exported folder through plain open_clip (its own loader, preprocessing and tokenizer) and the head's "
     "weights: the run's predictions, with no latteclip code on the way.")
    import open_clip
    from PIL import Image
    from safetensors.torch import load_file
    from latteclip.data import parse_shift
    run, m = runs[method]
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{run / 'model'}")
    model.eval()
    head = json.loads((run / "classifier.json").read_text())
    W = load_file(run / "classifier.safetensors")["weights"]
    shift = parse_shift("fog:3")                                              # the run's images are shifted
    mine = rows(run / "predictions.csv")
    x = torch.stack([preprocess(shift(Image.open(folder / k).convert("RGB"))) for k in mine])
    with torch.no_grad(): f = model.encode_image(x, normalize=True)
    pred = (head["logit_scale"] * f @ W.T).argmax(1)
    assert [head["classes"][i] for i in pred] == [v[0] for v in mine.values()]
    assert open_clip.get_tokenizer(f"local-dir:{run / 'model'}")(["a photo of a cat."]).shape[-1] == 32


def test_export_copies_the_artifact_and_refuses_other_folders(runs, folder, tmp_path):
    "`latteclip export`: the copy predicts as the run; a folder of other files or an unfinished run is one sentence."
    run, _ = runs["nola"]
    r = latteclip("export", "--run", run, "--out", tmp_path / "exp")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "exp").rglob("*")} >= {"open_clip_config.json", "open_clip_model.safetensors",
                                                               "classifier.json", "classifier.safetensors"}
    assert not (tmp_path / "exp" / "checkpoints").exists()
    r = latteclip("predict", "--run", tmp_path / "exp", "--data", folder, "--shift", "fog:3", "--out", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    assert rows(tmp_path / "p" / "predictions.csv") == rows(run / "predictions.csv")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for args, words in [(["export", "--run", run, "--out", tmp_path / "other"], "holds something other"),
                        (["export", "--run", tmp_path / "other", "--out", tmp_path / "x"], "holds no finished run"),
                        (["export", "--run", run, "--out", run], "the run itself"),
                        (["predict", "--run", tmp_path / "other", "--data", folder], "holds no finished run")]:
        r = latteclip(*args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine" and not (tmp_path / "x").exists()


def test_a_run_continues_from_an_exported_model(runs, folder, tmp_path):
    "`--model local-dir:RUN/model` is the adapted model: zero-shot from it scores as the run's text classifier would."
    run, m = runs["flyp-pseudo"]
    r = latteclip("run", "--method", "zeroshot", "--model", f"local-dir:{run / 'model'}", "--data", folder,
                  "--shift", "fog:3", "--out", tmp_path / "zs")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "zs" / "metrics.json").read_text())["top1"] == m["top1_text"]


def test_predict_a_flat_folder_and_a_folder_of_some_classes(runs, embedded, tmp_path):
    ("A flat folder gets the run's class names; a folder of a few classes, in another order, is matched by name; a "
     "folder of classes the run does not know is an open set.")
    run, _ = runs["latteclip"]
    flat = write_images(embedded, [3, 503, 1003], tmp_path / "flat", layout="flat")
    r = latteclip("predict", "--run", run, "--data", flat, "--out", tmp_path / "pf")
    assert r.returncode == 0, r.stderr
    assert len(rows(tmp_path / "pf" / "predictions.csv")) == 3
    assert json.loads((tmp_path / "pf" / "metrics.json").read_text())["top1"] is None     # no labels: no score
    some = write_images(embedded, [4500 + j for j in range(5)] + [j for j in range(5)], tmp_path / "some")  # truck, airplane
    r = latteclip("predict", "--run", run, "--data", some, "--out", tmp_path / "ps")
    assert r.returncode == 0, r.stderr
    got = rows(tmp_path / "ps" / "predictions.csv")
    assert {v[2] for v in got.values()} == {"airplane", "truck"} and len(got) == 10
    ueo, _ = runs["ueo-open"]                                                 # knows 6 classes; truck is not one
    r = latteclip("predict", "--run", ueo, "--data", some, "--out", tmp_path / "po")
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "po" / "metrics.json").read_text())
    assert p["n_unknown_images"] == 5 and p["n_images"] == 5


STAGES = {"latteclip": {"latteclip": 5}, "flyp-pseudo": {"flyp": 5}, "ueo": {"ueo": 5}, "ueo-open": {"ueo": 5},
          "nola": {"nola head": 2, "nola": 5}, "dac": {"dac": 20}}


@pytest.mark.parametrize("method", list(STAGES))
def test_every_training_method_writes_its_history_and_curves(method, runs):
    ("history.csv: one row per optimizer step of each stage, in order, with its loss, lr and seconds; curves.png drawn "
     "from it and shown in report.md.")
    run, _ = runs[method]
    with open(run / "history.csv", newline="") as fh: rows = list(csv.DictReader(fh))
    got = {}
    for r in rows: got.setdefault(r["stage"], []).append(int(r["step"]))
    assert {s: len(v) for s, v in got.items()} == STAGES[method]            # 160 images, batch 32
    assert all(v == list(range(1, len(v) + 1)) for v in got.values())
    first = {"nola head": "loss_sum"}
    for r in rows:
        loss = float(r[first.get(r["stage"], "loss")])
        assert loss == loss and float(r["seconds"]) >= 0 and float(r["lr"]) > 0
    assert (run / "curves.png").stat().st_size > 1000 and "![curves](curves.png)" in (run / "report.md").read_text()
