"""Interruptions are real signals to real child processes: SIGKILL during text generation loses no record and
duplicates none; SIGKILL or SIGTERM during training, then --resume, gives the same final weights as a run that was
never stopped; a NaN loss stops training and keeps the last good checkpoint."""
import csv, json, os, random, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from conftest import latteclip, write_images, ROOT

GEN = r'''
import sys, torch
from latteclip.data import embedded_target
from latteclip.texts import synthetic_texts, AttributeDescriber, TextCache
ds = embedded_target().subset(range(0, 5000, 2)).with_shift("fog:5").unlabeled()
print("ready", flush=True)
t = synthetic_texts(ds, torch.arange(len(ds)) % 10, AttributeDescriber(), TextCache(sys.argv[1]), groups_per_class=4)
print("done", t.calls, flush=True)
'''
ENV = {**os.environ, "LATTECLIP_QUIET": "1", "PYTHONWARNINGS": "ignore"}


def records(path:Path)->list:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def test_text_cache_survives_five_sigkills(tmp_path):
    ref = tmp_path / "ref.jsonl"
    subprocess.run([sys.executable, "-c", GEN, str(ref)], check=True, env=ENV, capture_output=True)
    want = {r["key"]: r["text"] for r in records(ref)}
    assert len(want) == len(records(ref)) > 2500                               # 2,500 images + 40 collages
    cache, rng, kills, counts = tmp_path / "killed.jsonl", random.Random(0), 0, []
    while kills < 5:
        p = subprocess.Popen([sys.executable, "-c", GEN, str(cache)], stdout=subprocess.PIPE, env=ENV, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.2, 1.2)); p.send_signal(signal.SIGKILL); p.wait(); p.stdout.close()
        n = cache.read_text().count("\n") if cache.exists() else 0            # complete records
        if n >= len(want): break                                               # it finished first: no kill to count
        kills += 1; counts.append(n)
    assert kills == 5 and counts == sorted(counts), counts                     # every restart went on where it stopped
    subprocess.run([sys.executable, "-c", GEN, str(cache)], env=ENV, capture_output=True, text=True, check=True)
    got = records(cache)
    assert len(got) == len({g["key"] for g in got}) == len(want)               # exactly one record per request
    assert {g["key"]: g["text"] for g in got} == want                           # identical to the uninterrupted run


@pytest.fixture(scope="module")
def tree(embedded, tmp_path_factory):
    "320 real images, 4 classes, for training runs of a few seconds per epoch."
    idxs = [k * 500 + j for k in range(4) for j in range(80)]
    return write_images(embedded, idxs, tmp_path_factory.mktemp("tree320"))


def train_cmd(tree, out, method, *extra):
    epochs = "3" if method == "latteclip" else "4"
    return [sys.executable, "-m", "latteclip", "run", "--method", method, "--data", str(tree), "--epochs", epochs,
            "--batch-size", "16", "--precision", "fp32", "--out", str(out), *extra,
            *(["--text-cache", str(out.parent / "texts.jsonl")] if method.startswith("latteclip") else [])]   # UEO: no texts


def steps_of(out:Path)->list:
    "history.csv without its clock: the rows a resumed run must repeat exactly."
    with open(out / "history.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def final_weights(out:Path)->dict:
    return load_file(out / "checkpoints" / "checkpoint.safetensors")


def wait_for(path:Path, p, timeout=300):
    t = time.time()
    while not path.exists():
        assert p.poll() is None, "the run ended before it could be interrupted"
        assert time.time() - t < timeout; time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
    "Uninterrupted runs, one per method, made on first use."
    made = {}
    def get(method):
        if method not in made:
            out = tmp_path_factory.mktemp(f"ref-{method}") / "run"
            r = subprocess.run(train_cmd(tree, out, method), env=ENV, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-2000:]
            made[method] = out
        return made[method]
    return get


@pytest.mark.parametrize("method,sig", [("latteclip", signal.SIGKILL), ("latteclip", signal.SIGTERM), ("ueo", signal.SIGTERM)])
def test_training_resume_after_a_signal_is_exact(tree, reference, tmp_path, method, sig):
    ref, out = reference(method), tmp_path / "run"
    p = subprocess.Popen(train_cmd(tree, out, method), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / "checkpoints" / "state.pt", p)                              # epoch 1 is saved: now in epoch 2
    live = list(out.glob(".history.tmp*.csv"))                                # written while it trains, flushed
    assert len(live) == 1 and len(live[0].read_text().splitlines()) > 1, live
    time.sleep(0.3); p.send_signal(sig); _, err = p.communicate(timeout=120)
    state = torch.load(out / "checkpoints" / "state.pt", weights_only=True)
    if sig == signal.SIGTERM:                                                   # caught: a checkpoint at the step it reached
        assert p.returncode == 130 and "add --resume to go on" in err and "Traceback" not in err, err[-2000:]
        assert state["epoch"] < int(train_cmd(tree, out, method)[9])
    else: assert p.returncode == -signal.SIGKILL and state["epoch"] in (1, 2) and state["step"] == 0
    assert not (out / "history.csv").exists()                                 # a stopped run's files are not written
    r = subprocess.run(train_cmd(tree, out, method, "--resume"), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert steps_of(out) == steps_of(ref)                                     # every step once, as in one run
    a, b = final_weights(ref), final_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ma, mb = (json.loads((o / "metrics.json").read_text()) for o in (ref, out))
    assert ma["top1"] == mb["top1"] and ma["history"]["loss"] == mb["history"]["loss"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(embedded, tmp_path):
    from latteclip.core import LatteError
    from latteclip.models import load_clip
    from latteclip.pseudolabels import pseudo_labels
    from latteclip.texts import Texts
    from latteclip.train import TrainConfig, finetune
    from latteclip.models import TEMPLATE
    ds = embedded.subset(range(0, 5000, 50)).unlabeled(); clip = load_clip(device="cpu")
    y = pseudo_labels(clip, ds, cache=False).labels
    T = Texts(list(ds.classes), [TEMPLATE.format(c) for c in ds.classes], [TEMPLATE.format(ds.classes[l]) for l in y],
              [[TEMPLATE.format(c)] for c in ds.classes], [[] for _ in ds.classes])
    def diverge(epoch, step, loss):                                             # a real divergence in epoch 2
        if epoch == 1 and step == 2:
            with torch.no_grad(): clip.model.visual.conv1.weight.mul_(float("inf"))
    cfg = TrainConfig(method="flyp", epochs=3, batch_size=20, precision="fp32", kinds=("class",))
    with pytest.raises(LatteError, match=r"loss became nan in epoch 2, step 3.*last good checkpoint \(after epoch 1\)"):
        finetune(clip, ds, y, T, cfg, out=tmp_path / "ck", on_step=diverge)
    sd = load_file(tmp_path / "ck" / "checkpoint.safetensors")
    assert all(torch.isfinite(v).all() for v in sd.values())
    assert torch.load(tmp_path / "ck" / "state.pt", weights_only=True)["epoch"] == 1


PRE = {"pretrain": ["--val-per-class", "4"], "pretrain-dino": ["--target", "none"]}


def pre_cmd(tree, out, sub, *extra):
    return [sys.executable, "-m", "latteclip", sub, "--data", str(tree), "--epochs", "3", "--batch-size", "8",
            "--precision", "fp32", "--out", str(out), *PRE[sub], *extra]


@pytest.mark.parametrize("sub,name", [("pretrain", "latteclip-tiny"), ("pretrain-dino", "latteclip-dino-tiny")])
def test_pretraining_resumes_exactly_inside_an_epoch(tree, tmp_path, sub, name):
    """SIGTERM inside epoch 2 of either pre-training: a checkpoint at the step reached; --resume replays the epoch's
    draws (for CLIP also its captions' own generator) and ends on the weights and losses of the uninterrupted run."""
    r = subprocess.run(pre_cmd(tree, tmp_path / "ref", sub), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for attempt in range(3):                                                    # until a signal lands inside an epoch
        out = tmp_path / f"run{attempt}"
        p = subprocess.Popen(pre_cmd(tree, out, sub), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(out / "state.pt", p)                                           # epoch 1 is saved: now in epoch 2
        time.sleep(0.2 + 0.2 * attempt); p.send_signal(signal.SIGTERM); _, err = p.communicate(timeout=120)
        assert p.returncode == 130 and "add --resume to go on" in err and "Traceback" not in err, err[-2000:]
        state = torch.load(out / "state.pt", weights_only=True)
        if state["step"] > 0: break
    assert state["epoch"] < 3 and state["step"] > 0, state["step"]
    r = subprocess.run(pre_cmd(tree, out, sub, "--resume"), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_file(tmp_path / "ref" / f"{name}.safetensors"), load_file(out / f"{name}.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    log = "pretrain.json" if sub == "pretrain" else "dino.json"
    la, lb = (json.loads((o / log).read_text()) for o in (tmp_path / "ref", out))
    assert [e["loss"] for e in la["epochs"]] == [e["loss"] for e in lb["epochs"]]
    assert steps_of(out) == steps_of(tmp_path / "ref")                        # history.csv: every step once
