"""A full disk during a run, on a real small filesystem (a tmpfs mounted here, so root only): `latteclip run` and
`latteclip compare` end with one sentence and exit 2, every file of the previous run stays byte for byte as it was,
and no temporary file is left behind, whether nothing fits, a little fits, or all but the last page fits."""
import errno, hashlib, os, shutil, subprocess
from pathlib import Path
import pytest, torch
from conftest import latteclip

LC = ("--method", "latteclip", "--epochs", "1", "--batch-size", "16", "--precision", "fp32")


@pytest.fixture
def tmpfs(tmp_path):
    "A function `mount(mb)` -> a fresh tmpfs of that size; every one is unmounted at the end."
    if os.geteuid() != 0: pytest.skip("mounting a small tmpfs needs root")
    mounted = []
    def mount(mb:int)->Path:
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0: pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(d)
        return d
    try: yield mount
    finally:
        for d in mounted: subprocess.run(["umount", str(d)], check=True)


@pytest.fixture
def env(tmp_path, monkeypatch):
    "Caches outside the small filesystem, so only the run's own files compete for its space."
    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path / "cache"))
    return tmp_path


def free(mnt:Path)->int:
    s = os.statvfs(mnt)
    return s.f_bavail * s.f_frsize


def page(mnt:Path)->int:
    return os.statvfs(mnt).f_frsize


def pages(folder:Path, size_of=4096)->int:
    "Bytes that the files under `folder` take on a filesystem of `size_of`-byte pages."
    return sum(-(-p.stat().st_size // size_of) * size_of for p in folder.rglob("*") if p.is_file())


def fill(mnt:Path, leave:int):
    "Write a filler file until the filesystem is full (a real ENOSPC), then give `leave` bytes (whole pages) back."
    f = mnt / "filler"
    leave = -(-leave // page(mnt)) * page(mnt)
    with open(f, "ab", buffering=0) as fh:
        for chunk in (1 << 20, page(mnt)):
            try:
                while True: fh.write(b"\0" * chunk)
            except OSError as e: assert e.errno == errno.ENOSPC, e
    assert free(mnt) == 0
    keep = f.stat().st_size // page(mnt) * page(mnt) - leave
    assert keep > 0, "the filesystem is too small for this case"
    os.truncate(f, keep)
    assert leave <= free(mnt) <= leave + page(mnt), (leave, free(mnt))


def snapshot(folder:Path)->dict:
    "Every file under `folder` (hidden ones too) -> the hash of its bytes."
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def check_full(r, mnt:Path):
    "Exit 2 with one sentence on stderr that names the full device, and no traceback."
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("latteclip: error: No space left on the device holding ") and "space" in lines[0]
    assert str(mnt) in lines[0] and lines[0].endswith("were left as they were."), lines[0]


def zeroshot(data, out, *extra):
    return latteclip("run", "--method", "zeroshot", "--data", data, "--out", out, *extra)


@pytest.fixture(scope="module")
def zeroshot_ref(small_tree, tmp_path_factory):
    "Run 2 of the zero-shot cases where it has room: the folder it writes."
    out = tmp_path_factory.mktemp("zeroshot-ref") / "run"
    r = zeroshot(small_tree, out, "--shift", "fog:3")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize("room", ["nothing", "a few KB", "all but a page"])
def test_zeroshot_run_on_a_full_disk_keeps_the_previous_run(small_tree, tmpfs, env, zeroshot_ref, room):
    mnt = tmpfs(96)                                      # a run writes its 30 MB model too
    r = zeroshot(small_tree, mnt / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    before = snapshot(mnt / "run")
    assert {"metrics.json", "predictions.csv", "confusion.png", "report.md"} <= set(before)
    assert snapshot(zeroshot_ref)["predictions.csv"] != before["predictions.csv"]    # run 2's files would differ
    need = pages(zeroshot_ref, page(mnt))
    leave = {"nothing": 0, "a few KB": 2 * page(mnt), "all but a page": need - page(mnt)}[room]
    fill(mnt, leave)
    left = free(mnt)
    r = zeroshot(small_tree, mnt / "run", "--shift", "fog:3")
    check_full(r, mnt)
    assert f"the previous results in {mnt / 'run'} were left" in r.stderr
    assert snapshot(mnt / "run") == before                             # byte-identical, no temporaries beside them
    assert sorted(p.name for p in mnt.iterdir()) == ["filler", "run"]
    assert free(mnt) == left                                                 # and nothing hidden elsewhere either
    os.unlink(mnt / "filler")                                                # with room again, run 2 goes through
    r = zeroshot(small_tree, mnt / "run", "--shift", "fog:3")
    assert r.returncode == 0 and snapshot(mnt / "run")["predictions.csv"] == snapshot(zeroshot_ref)["predictions.csv"]


@pytest.fixture(scope="module")
def latte_run(small_tree, tmp_path_factory):
    "A finished one-epoch LatteCLIP run on a roomy disk (its folder and its text cache)."
    d = tmp_path_factory.mktemp("latte")
    r = latteclip("run", *LC, "--data", small_tree, "--text-cache", d / "texts.jsonl", "--out", d / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    return d


@pytest.mark.parametrize("room", ["a few KB", "the weights but not the optimiser state"])
def test_latteclip_run_on_a_full_disk_keeps_the_previous_run_and_checkpoint(small_tree, tmpfs, env, latte_run, room):
    mnt = tmpfs(200)
    shutil.copytree(latte_run / "run", mnt / "run")                           # the previous run, checkpoint included
    before = snapshot(mnt / "run")
    assert {"metrics.json", "explore.json", "curves.png", "checkpoints/checkpoint.safetensors",
            "checkpoints/state.pt"} <= set(before)
    weights = (mnt / "run" / "checkpoints" / "checkpoint.safetensors").stat().st_size
    fill(mnt, {"a few KB": 4 * page(mnt), "the weights but not the optimiser state": weights + (4 << 20)}[room])
    left = free(mnt)
    r = latteclip("run", *LC, "--data", small_tree, "--shift", "fog:3", "--text-cache", env / "texts.jsonl",
                  "--out", mnt / "run")
    check_full(r, mnt)
    assert snapshot(mnt / "run") == before                             # results and checkpoint whole, no .tmp files
    assert free(mnt) == left


def test_latteclip_results_that_do_not_fit_leave_the_previous_run(small_tree, tmpfs, env, latte_run):
    "Room for the new checkpoint but not for the results: the previous (zero-shot) run's files all stay."
    mnt = tmpfs(200)
    r = zeroshot(small_tree, mnt / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    before = snapshot(mnt / "run")
    fill(mnt, pages(latte_run / "run" / "checkpoints", page(mnt)) + 2 * page(mnt))
    r = latteclip("run", *LC, "--data", small_tree, "--text-cache", latte_run / "texts.jsonl", "--out", mnt / "run")
    check_full(r, mnt)
    after = snapshot(mnt / "run")
    new = {"checkpoints/checkpoint.safetensors", "checkpoints/state.pt"}
    assert set(after) == set(before) | new, set(after) ^ set(before)
    assert {k: after[k] for k in before} == before                           # no explore.json, curves.png, new metrics


@pytest.mark.parametrize("room", ["nothing", "the run but not the table"])
def test_compare_on_a_full_disk_keeps_the_previous_compare(small_tree, tmpfs, env, room):
    mnt = tmpfs(96)                                      # a run writes its 30 MB model too
    compare = lambda out, *extra: latteclip("compare", "--methods", "zeroshot", "--data", small_tree, "--out", out,
                                            *extra)
    r = compare(mnt / "c")
    assert r.returncode == 0, r.stderr[-3000:]
    before = snapshot(mnt / "c")
    assert {"table.md", "table.json", "table.png", "zeroshot/metrics.json"} <= set(before)
    ref = compare(env / "ref", "--shift", "fog:3")
    assert ref.returncode == 0, ref.stderr[-3000:]
    run_only = pages(env / "ref" / "zeroshot", page(mnt)) + page(mnt)          # the method's files and table.json
    fill(mnt, {"nothing": 0, "the run but not the table": run_only}[room])
    left = free(mnt)
    r = compare(mnt / "c", "--shift", "fog:3")
    check_full(r, mnt)
    kept = {"nothing": f"{mnt / 'c'}",
            "the run but not the table": f"{mnt / 'c' / 'zeroshot'} and the table in {mnt / 'c'}"}[room]
    assert f"the previous results in {kept} were left" in r.stderr     # nothing fits: not even out_dir's probe
    assert snapshot(mnt / "c") == before
    assert free(mnt) == left


def test_a_torn_pseudo_label_cache_is_computed_again(tmp_path, monkeypatch, embedded):
    "A cache file cut short (a kill or a full disk mid-write, before writes were atomic) is recomputed, not a traceback."
    from latteclip.models import load_clip
    from latteclip.pseudolabels import pseudo_labels
    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path / "cache"))
    clip, ds = load_clip(device="cpu"), embedded.subset(range(0, 5000, 250))
    first = pseudo_labels(clip, ds)
    (f,) = (tmp_path / "cache" / "pseudolabels").glob("*.safetensors")
    assert not [p for p in f.parent.iterdir() if p.name.startswith(".")]          # no temporary left beside it
    f.write_bytes(f.read_bytes()[:100])                                          # torn
    again = pseudo_labels(clip, ds)
    assert torch.equal(again.labels, first.labels) and f.stat().st_size > 100    # recomputed and rewritten whole
