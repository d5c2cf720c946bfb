"""Several processes for real: `latteclip run --num-processes 2` starts two CPU processes (gloo) through
`accelerate launch`; they must give the metrics of one process with the same global batch, shard the text
generation into the one cache (each image once), stop together on a signal and resume to the same weights."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from conftest import latteclip, write_images

ENV = {**os.environ, "LATTECLIP_QUIET": "1", "PYTHONWARNINGS": "ignore"}


def run(*args, cache, timeout=900):
    return subprocess.run([sys.executable, "-m", "latteclip", "run", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, "LATTECLIP_CACHE": str(cache)})


def metrics(out) -> dict:
    return json.loads((Path(out) / "metrics.json").read_text())


def test_latteclip_two_processes_match_one_and_cache_each_image_once(tmp_path):
    "The embedded default (4,000 adapted-to images, fog:5), 2 epochs: 2 gloo processes vs 1, global batch 256 in both."
    cache = tmp_path / "cache"
    two = run("--epochs", 2, "--num-processes", 2, "--out", tmp_path / "two", cache=cache)
    assert two.returncode == 0, two.stderr[-2000:]
    texts = cache / "texts" / "texts.jsonl"
    recs = [json.loads(l) for l in texts.read_text().splitlines() if l.strip()]
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)), "a text is in the cache twice"
    assert sum(r["kind"] == "image" for r in recs) == 4000 and sum(r["kind"] == "group" for r in recs) == 80
    assert not list(texts.parent.glob("texts.part*.jsonl")), "a per-process part file was left behind"
    m2 = metrics(tmp_path / "two")
    assert m2["text_calls"] == 4080                                             # both processes' shares, counted once
    one = run("--epochs", 2, "--out", tmp_path / "one", cache=cache)
    assert one.returncode == 0, one.stderr[-2000:]
    m1 = metrics(tmp_path / "one")
    assert m1["text_calls"] == 0                                                # the merged cache is complete
    assert m1["config"]["batch_size"] == m2["config"]["batch_size"] == 256
    assert m1["eval_n_images"] == m2["eval_n_images"] == 1000 and abs(m2["eval_top1"] - m1["eval_top1"]) <= 0.5
    print(f"top-1: 2 processes {m2['top1']}, 1 process {m1['top1']}; loss {m2['history']['loss']} vs {m1['history']['loss']}")
    assert abs(m2["top1"] - m1["top1"]) <= 0.5 and abs(m2["top1_text"] - m1["top1_text"]) <= 0.5
    assert m2["top1"] > m2["zeroshot_top1"] + 3                                 # and it did learn
    for a, b in zip(m2["history"]["loss"], m1["history"]["loss"]): assert abs(a - b) < 0.01


@pytest.fixture(scope="module")
def folder(embedded, tmp_path_factory):
    "1,000 real images, 100 per class."
    return write_images(embedded, [k * 500 + j for k in range(10) for j in range(100)], tmp_path_factory.mktemp("d1000"))


@pytest.mark.parametrize("method", ["ueo", "nola", "flyp-pseudo"])
def test_other_methods_two_processes_match_one(folder, tmp_path, method):
    res = {}
    for procs in (2, 1):
        extra = ["--num-processes", procs] if procs > 1 else []
        r = run("--method", method, "--data", folder, "--shift", "fog:5", "--epochs", 1, "--batch-size", 64,
                "--out", tmp_path / str(procs), *extra, cache=tmp_path / "cache")
        assert r.returncode == 0, r.stderr[-2000:]
        res[procs] = metrics(tmp_path / str(procs))
    print(method, {p: (m["top1"], m["history"]["loss"]) for p, m in res.items()})
    assert abs(res[2]["top1"] - res[1]["top1"]) <= 0.5
    for a, b in zip(res[2]["history"]["loss"], res[1]["history"]["loss"]): assert abs(a - b) < 0.01


def test_sigterm_stops_both_processes_and_resume_matches(folder, tmp_path):
    "SIGTERM to the launcher mid-training: all processes stop at one step, the first saves; --resume ends where an uninterrupted 2-process run ends."
    common = ["--data", folder, "--shift", "fog:5", "--epochs", 2, "--batch-size", 64, "--num-processes", 2, "--no-augment"]
    ref = run(*common, "--out", tmp_path / "ref", cache=tmp_path / "cache")
    assert ref.returncode == 0, ref.stderr[-2000:]
    p = subprocess.Popen([sys.executable, "-m", "latteclip", "run", *map(str, common), "--out", str(tmp_path / "cut")],
                         env={**ENV, "LATTECLIP_CACHE": str(tmp_path / "cache")}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    ck = tmp_path / "cut" / "checkpoints" / "checkpoint.safetensors"
    t0 = time.time()
    while not ck.exists() and time.time() - t0 < 600 and p.poll() is None: time.sleep(0.2)   # epoch 1 saved: now in epoch 2
    assert p.poll() is None, p.stderr.read()[-2000:]
    time.sleep(2); os.killpg(p.pid, signal.SIGTERM)                            # the launcher and both processes
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0 and "add --resume to go on" in err, err[-2000:]
    state = torch.load(tmp_path / "cut" / "checkpoints" / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] > 0, (state["epoch"], state["step"])   # saved inside epoch 2
    r = run(*common, "--out", tmp_path / "cut", "--resume", cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    a = load_file(tmp_path / "ref" / "checkpoints" / "checkpoint.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert metrics(tmp_path / "ref")["top1"] == metrics(tmp_path / "cut")["top1"]


def test_uneven_batch_and_cpu_fp16_exit_2(folder, tmp_path):
    r = run("--data", folder, "--epochs", 1, "--batch-size", 63, "--num-processes", 2, "--out", tmp_path / "a", cache=tmp_path / "c")
    assert r.returncode == 2 and "must be a multiple of processes" in r.stderr, r.stderr[-1500:]
    r = run("--data", folder, "--epochs", 1, "--mixed-precision", "fp16", "--out", tmp_path / "b", cache=tmp_path / "c")
    assert r.returncode == 2 and "fp16 mixed precision needs a CUDA GPU" in r.stderr, r.stderr[-1500:]
    assert not (tmp_path / "b" / "metrics.json").exists()


def test_text_cache_parts_merge_once(tmp_path):
    "Part files of an interrupted launch (one torn last line, one key also in the cache) merge into the cache, each key once."
    from latteclip.texts import TextCache
    c = TextCache(tmp_path / "texts.jsonl"); c.add("a", "text a", kind="image")
    p0, p1 = c.part(0), c.part(1)
    p0.add("a", "other a", kind="image"); p0.add("b", "text b", kind="image"); p1.add("c", "text c", kind="group")
    with open(p1.path, "a") as fh: fh.write('{"key": "d", "te')                 # killed mid-write
    assert c.merge_parts() == 2
    assert not list(tmp_path.glob("texts.part*")), "parts must be deleted once merged"
    again = TextCache(tmp_path / "texts.jsonl")
    assert again.texts == {"a": "text a", "b": "text b", "c": "text c"} and again.records["c"]["kind"] == "group"
    assert len((tmp_path / "texts.jsonl").read_text().splitlines()) == 3
