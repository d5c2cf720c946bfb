"""Hostile data folders: links to devices, named pipes, endless /proc files, huge sparse files and archive bombs are
skipped with a reason, never opened or never read past their size, so a run finishes with modest memory instead of
hanging or filling the machine; and `pack_archive` never damages the file it writes."""
import io, json, os, subprocess, sys, tarfile, zipfile
from pathlib import Path
import pytest
from latteclip.core import LatteError, asset
from latteclip.data import MAX_BYTES, pack_archive
from conftest import latteclip, write_images

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX devices, named pipes and symlinks")

PEAK_MB = 3000          # these runs peak near 1 GB; a read of a device or of an endless file goes far past it
TIMEOUT = 300           # a run here takes under a minute; a read that blocks (a named pipe) would never end
STREAM = "/proc/self/pagemap"   # a regular file whose size says 0 and which streams about 256 GB to whoever reads it
IDXS = [k * 500 + j for k in range(3) for j in range(3)]   # 9 real images: airplane, automobile, bird
CLASSES = "airplane,automobile,bird"
KINDS = {  # kind: (the file made in a folder of real images, words its reason in `skipped` must hold)
    "dev-zero": ("airplane/zero.jpg", "not a regular file"),
    "dev-urandom": ("airplane/random.jpg", "not a regular file"),
    "fifo": ("automobile/x.jpg", "not a regular file"),
    "proc-stream": ("automobile/stream.png", "empty file"),
    "dev-zero-png": ("bird/zeros.png", "not a regular file"),
    "sparse-8g": ("bird/big.jpg", "larger than"),
}
REASONS = dict(KINDS.values())   # file: words of its reason


def make(kind, path:Path):
    "Make the hostile file `kind` at `path`."
    if kind == "proc-stream" and not os.path.exists(STREAM): pytest.skip(f"{STREAM} is not on this system")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("dev-zero", "dev-zero-png"): os.symlink("/dev/zero", path)
    elif kind == "dev-urandom": os.symlink("/dev/urandom", path)
    elif kind == "fifo": os.mkfifo(path)
    elif kind == "proc-stream": os.symlink(STREAM, path)
    elif kind == "sparse-8g": subprocess.run(["truncate", "-s", "8G", str(path)], check=True)
    return path


def skipped_of(m:dict)->dict: return {s["path"]: s["reason"] for s in m["skipped"]}


@pytest.mark.parametrize("kind", KINDS)
def test_run_skips_a_hostile_file(embedded, tmp_path, kind):
    root = write_images(embedded, IDXS, tmp_path / "data")
    rel, words = KINDS[kind]
    make(kind, root / rel)
    r = latteclip("run", "--method", "zeroshot", "--data", root, "--out", tmp_path / "o", timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert list(skipped_of(m)) == [rel] and words in skipped_of(m)[rel], m["skipped"]
    assert m["n_images"] == len(IDXS) and m["n_classes"] == 3 and m["top1"] is not None
    assert m["peak_rss_mb"] < PEAK_MB, m["peak_rss_mb"]


def test_flat_folder_run_skips_every_hostile_file(embedded, tmp_path):
    root = write_images(embedded, IDXS, tmp_path / "flat", layout="flat")
    if not os.path.exists(STREAM): pytest.skip(f"{STREAM} is not on this system")
    expected = {make(kind, root / rel.split("/")[-1]).name: words for kind, (rel, words) in KINDS.items()}
    r = latteclip("run", "--method", "zeroshot", "--data", root, "--classes", CLASSES, "--out", tmp_path / "o",
                  timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    skipped = skipped_of(m)
    assert set(skipped) == set(expected), m["skipped"]
    assert all(words in skipped[f] for f, words in expected.items()), m["skipped"]
    assert m["n_images"] == len(IDXS) and m["top1"] is None and m["peak_rss_mb"] < PEAK_MB, m


# The Python API, in a child process so that a read that blocks fails the test (timeout) instead of hanging it.
API = r"""
import json, sys
from latteclip.core import peak_rss_mb
from latteclip.data import image_folder, flat_folder, open_data
how, root, classes = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
before = peak_rss_mb()
ds = {"image_folder": lambda: image_folder(root), "flat_folder": lambda: flat_folder(root, classes),
      "open_data": lambda: open_data(root), "open_data flat": lambda: open_data(root, classes),
      "open_data unverified": lambda: open_data(root, verify=False)}[how]()
sizes = [ds.image(i).size for i in range(len(ds))]
print(json.dumps(dict(n=len(ds), labels=ds.labels, skipped=dict(ds.skipped), grew_mb=peak_rss_mb() - before)))
"""


def api(how, root, classes=CLASSES):
    "Open `root` with the Python API `how` in a child process; what it found and how much its peak memory grew."
    r = subprocess.run([sys.executable, "-c", API, how, str(root), classes], capture_output=True, text=True,
                       timeout=TIMEOUT, env={**os.environ, "LATTECLIP_QUIET": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("how", ["image_folder", "open_data", "open_data unverified"])
def test_api_skips_hostile_files_in_a_class_folder(embedded, tmp_path, how):
    if not os.path.exists(STREAM): pytest.skip(f"{STREAM} is not on this system")
    root = write_images(embedded, IDXS, tmp_path / "data")
    for kind, (rel, _) in KINDS.items(): make(kind, root / rel)
    got = api(how, root)
    assert set(got["skipped"]) == set(REASONS), got["skipped"]
    assert all(words in got["skipped"][rel] for rel, words in REASONS.items()), got["skipped"]
    assert got["n"] == len(IDXS) and sorted(got["labels"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert got["grew_mb"] < 500, got


@pytest.mark.parametrize("how", ["flat_folder", "open_data flat"])
def test_api_skips_hostile_files_in_a_flat_folder(embedded, tmp_path, how):
    if not os.path.exists(STREAM): pytest.skip(f"{STREAM} is not on this system")
    root = write_images(embedded, IDXS, tmp_path / "flat", layout="flat")
    expected = {make(kind, root / rel.split("/")[-1]).name: words for kind, (rel, words) in KINDS.items()}
    got = api(how, root)
    assert set(got["skipped"]) == set(expected) and all(w in got["skipped"][f] for f, w in expected.items()), got
    assert got["n"] == len(IDXS) and got["labels"] == [-1] * len(IDXS) and got["grew_mb"] < 500, got


def zip_bomb(embedded, path:Path)->Path:
    "Real images plus `bird/bomb.jpg`: 2 MAX_BYTES of zeros deflated to about 2 MB."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for i in IDXS:
            z.writestr(f"{embedded.classes[embedded.labels[i]]}/{i}.jpg", embedded.reader.read(embedded.keys[i]))
        with z.open("bird/bomb.jpg", "w", force_zip64=True) as f:
            for _ in range(2 * MAX_BYTES // 2**24): f.write(bytes(2**24))
    return path


def tar_bomb(embedded, path:Path)->Path:
    "Real images plus `bird/bomb.jpg`, a member that says it holds 8 GB (a hole in a sparse file: nothing on disk)."
    with open(path, "wb") as f:
        for i in IDXS:
            data = embedded.reader.read(embedded.keys[i])
            info = tarfile.TarInfo(f"{embedded.classes[embedded.labels[i]]}/{i}.jpg")
            info.size = len(data)
            f.write(info.tobuf(format=tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512))
        big = tarfile.TarInfo("bird/bomb.jpg")
        big.size = 8 * 2**30
        f.write(big.tobuf(format=tarfile.GNU_FORMAT))
        f.truncate(f.tell() + big.size + 1024)   # the member's 8 GB, then the two zero blocks that end a tar
    return path


@pytest.mark.parametrize("make_bomb", [zip_bomb, tar_bomb])
def test_archive_bomb_member_is_skipped_unread(embedded, tmp_path, make_bomb):
    arch = make_bomb(embedded, tmp_path / ("bomb.zip" if make_bomb is zip_bomb else "bomb.tar"))
    assert arch.stat().st_blocks * 512 < 50 * 2**20                     # what it takes on disk
    got = api("open_data", arch)
    assert list(got["skipped"]) == ["bird/bomb.jpg"] and "larger than" in got["skipped"]["bird/bomb.jpg"], got
    assert got["n"] == len(IDXS) and got["grew_mb"] < 200, got   # the member's bytes were never extracted


def test_a_hostile_archive_path_is_one_sentence(tmp_path):
    bad = tmp_path / "data.zip"
    subprocess.run(["truncate", "-s", "1G", str(bad)], check=True)   # a zip of nothing but zeros
    r = latteclip("run", "--method", "zeroshot", "--data", bad, "--out", tmp_path / "o", timeout=TIMEOUT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    fifo = tmp_path / "pipe.zip"
    os.mkfifo(fifo)                                                    # opening it would wait for a writer forever
    r = latteclip("run", "--method", "zeroshot", "--data", fifo, "--out", tmp_path / "o", timeout=TIMEOUT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_pack_archive_never_damages_its_destination(embedded, small_tree, tmp_path):
    dst = pack_archive(small_tree, tmp_path / "out" / "a.zip")
    before = dst.read_bytes()
    (tmp_path / "no images" / "cat").mkdir(parents=True)
    (tmp_path / "no images" / "cat" / "notes.txt").write_text("not a picture")
    for src in (tmp_path / "missing", tmp_path / "no images"):
        with pytest.raises(LatteError, match="left alone"): pack_archive(src, dst)
        assert dst.read_bytes() == before
    broken = tmp_path / "broken"                                       # fails half way: dst must stay as it was
    write_images(embedded, [0, 1, 2], broken)
    os.symlink("loop b.jpg", broken / "airplane" / "loop a.jpg")
    os.symlink("loop a.jpg", broken / "airplane" / "loop b.jpg")
    with pytest.raises(LatteError, match="left alone"): pack_archive(broken, dst)
    assert dst.read_bytes() == before and os.listdir(dst.parent) == ["a.zip"]   # no partial file left behind


def test_pack_archive_reproduces_the_shipped_zip(tmp_path):
    shipped = asset("cifar10-target.zip")
    assert pack_archive(shipped, tmp_path / "again.zip").read_bytes() == shipped.read_bytes()
