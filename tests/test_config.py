"""Every run writes config.json with every setting it used; `run --config` runs it again (flags beside it win);
`compare --reuse` reuses a run only when its whole config and the package version match."""
import json
from conftest import latteclip


def test_a_run_runs_again_from_its_config(small_tree, tmp_path):
    "The config of a run, run again: the same predictions and the same config; a flag beside it wins."
    r = latteclip("run", "--method", "flyp-pseudo", "--data", small_tree, "--shift", "fog:3", "--epochs", "1",
                  "--batch-size", "20", "--seed", "3", "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert [l for l in r.stdout.splitlines() if " epoch " in l][0].startswith("flyp epoch 1/1: loss ")   # a line an epoch
    c = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (c["method"], c["shift"], c["seed"], c["data"], c["n_images"]) == ("flyp-pseudo", "fog:3", 3,
                                                                              str(small_tree.resolve()), 60)
    assert c["settings"]["epochs"] == 1 and c["settings"]["batch_size"] == 20 and c["settings"]["lr"] == 5e-5
    assert c["settings"]["kinds"] == ["class"] and c["version"]
    r = latteclip("run", "--config", tmp_path / "a" / "config.json", "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == c
    assert (tmp_path / "b" / "predictions.csv").read_text() == (tmp_path / "a" / "predictions.csv").read_text()
    r = latteclip("run", "--config", tmp_path / "a" / "config.json", "--out", tmp_path / "c", "--epochs", "2",
                  "--seed=4")                                                   # flags given beside it win
    assert r.returncode == 0, r.stderr
    c2 = json.loads((tmp_path / "c" / "config.json").read_text())
    assert c2["settings"]["epochs"] == 2 and c2["seed"] == 4 and c2["settings"]["batch_size"] == 20


def test_a_bad_config_is_one_sentence(small_tree, tmp_path):
    "A missing, non-JSON or foreign config file: one sentence, exit 2, nothing written."
    (tmp_path / "text.json").write_text("not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "foreign.json").write_text(json.dumps({"method": "zeroshot", "settings": {"epochs": 3}}))
    for f, words in [(tmp_path / "none.json", "cannot be read"), (tmp_path / "text.json", "is not JSON"),
                     (tmp_path / "list.json", "is not a run's config.json"),
                     (tmp_path / "foreign.json", "zeroshot does not take: epochs")]:
        r = latteclip("run", "--config", f, "--data", small_tree, "--out", tmp_path / "out")
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_compare_reuses_only_a_run_of_the_same_config(small_tree, tmp_path):
    "Other --epochs re-run the method that takes it; the one that does not take it is reused."
    args = ["compare", "--methods", "zeroshot,flyp-pseudo", "--data", small_tree, "--batch-size", "20",
            "--out", tmp_path / "cmp", "--reuse"]
    r = latteclip(*args, "--epochs", "1")
    assert r.returncode == 0 and "reusing" not in r.stdout, r.stderr
    r = latteclip(*args, "--epochs", "1")
    assert "zeroshot: reusing" in r.stdout and "flyp-pseudo: reusing" in r.stdout, r.stdout
    r = latteclip(*args, "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "zeroshot: reusing" in r.stdout and "flyp-pseudo: reusing" not in r.stdout
    assert json.loads((tmp_path / "cmp" / "flyp-pseudo" / "config.json").read_text())["settings"]["epochs"] == 2
    c = tmp_path / "cmp" / "zeroshot" / "config.json"                        # another package version: run again
    c.write_text(json.dumps({**json.loads(c.read_text()), "version": "0.0.0"}))
    r = latteclip(*args, "--epochs", "2")
    assert "zeroshot: reusing" not in r.stdout and "flyp-pseudo: reusing" in r.stdout, r.stdout


def test_compare_seeds_gives_mean_min_and_max(small_tree, tmp_path):
    "--seeds 0,1: each method runs once per seed (its own folder and config); the table gives mean (min-max)."
    args = ["compare", "--methods", "zeroshot,ueo", "--data", small_tree, "--epochs", "1", "--batch-size", "20",
            "--out", tmp_path / "cmp", "--seeds", "0,1"]
    r = latteclip(*args)
    assert r.returncode == 0, r.stderr[-800:]
    rows = {x["method"]: x for x in json.loads((tmp_path / "cmp" / "table.json").read_text())}
    for m in ("zeroshot", "ueo"):
        per = [json.loads((tmp_path / "cmp" / m / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        assert [json.loads((tmp_path / "cmp" / m / f"seed{s}" / "config.json").read_text())["seed"] for s in (0, 1)] == [0, 1]
        row = rows[m]
        assert row["seeds"] == [0, 1] and row["by_seed"]["top1"] == [p["top1"] for p in per]
        assert row["top1"] == round(sum(p["top1"] for p in per) / 2, 2)
        assert (row["top1_min"], row["top1_max"]) == (min(p["top1"] for p in per), max(p["top1"] for p in per))
    assert f"{rows['ueo']['top1']} ({rows['ueo']['top1_min']}–{rows['ueo']['top1_max']})" in (tmp_path / "cmp" / "table.md").read_text()
    r = latteclip(*args, "--reuse")
    assert r.stdout.count("reusing") == 4, r.stdout
    for bad, words in [(["--seed", "3"], "--seed and --seeds"), (["--seeds", "1,1"], "--seeds must name different seeds")]:
        r = latteclip(*args, *bad, "--out", tmp_path / "bad")
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "bad").exists()
