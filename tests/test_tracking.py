"""`--report-to tensorboard`: every training step's scalars through accelerate's TensorBoard tracker, read back with
tensorboard's own reader and equal to `history.csv`; an unknown tracker or a missing package is one sentence."""
import csv, importlib.util
import pytest
from conftest import latteclip


def test_report_to_tensorboard_writes_the_steps_scalars(small_tree, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    r = latteclip("run", "--method", "flyp-pseudo", "--data", small_tree, "--epochs", "2", "--batch-size", "20",
                  "--report-to", "tensorboard", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    events = sorted((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].parent.name == "flyp-pseudo"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"flyp/loss", "flyp/lr", "metrics/top1", "metrics/zeroshot_top1"} <= tags, tags
    with open(tmp_path / "run" / "history.csv", newline="") as fh: rows = list(csv.DictReader(fh))
    loss = acc.Scalars("flyp/loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows] == list(range(1, 7))   # 60 images / 20, 2 epochs
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)
    import json
    assert acc.Scalars("metrics/top1")[0].value == pytest.approx(
        json.loads((tmp_path / "run" / "metrics.json").read_text())["top1"])


@pytest.mark.parametrize("name,words", [("nope", "choose tensorboard or wandb"),
                                        ("wandb", "needs the wandb package")])
def test_report_to_an_unknown_tracker_or_a_missing_package(small_tree, tmp_path, name, words):
    if name == "wandb" and importlib.util.find_spec("wandb") is not None: pytest.skip("wandb is installed here")
    for cmd in (["run", "--method", "flyp-pseudo"], ["compare", "--methods", "zeroshot,flyp-pseudo"]):
        r = latteclip(*cmd, "--data", small_tree, "--report-to", name, "--out", tmp_path / "out")
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "out").exists()


def test_latteclip_logs_each_term_of_its_loss(small_tree, tmp_path):
    "LatteCLIP's history.csv (and TensorBoard) carry the loss's two terms each step: loss = loss_ft + loss_zs."
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    r = latteclip("run", "--method", "latteclip", "--data", small_tree, "--epochs", "1", "--batch-size", "20",
                  "--report-to", "tensorboard", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "loss_ft" in r.stdout and "loss_zs" in r.stdout                  # the epoch line
    with open(tmp_path / "run" / "history.csv", newline="") as fh: rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(r["stage"] == "latteclip" for r in rows)
    for row in rows:
        assert float(row["loss"]) == pytest.approx(float(row["loss_ft"]) + float(row["loss_zs"]), rel=1e-5)
        assert 0 <= float(row["agreement"]) <= 1
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "latteclip"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("latteclip/loss_zs")] == pytest.approx([float(r["loss_zs"]) for r in rows],
                                                                                 rel=1e-6)
