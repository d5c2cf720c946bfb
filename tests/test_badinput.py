"""A corpus of bad and odd files, generated here from real images: every command finishes on the valid ones, lists
each skipped file with its reason in metrics.json and report.md, and exits 0; with nothing valid it exits 2."""
import io, json, os
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from conftest import latteclip

N_VALID_PER_CLASS = 6


def _png(im, **kw):
    b = io.BytesIO(); im.save(b, "PNG", **kw); return b.getvalue()


def make_corpus(embedded, root:Path)->tuple:
    "Write the corpus; returns (valid files, {bad file: expected words of its reason}, hidden files)."
    valid, bad, hidden = [], {}, []
    def put(rel, data, kind):
        p = root / rel; p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(data)
        (valid.append(rel) if kind == "ok" else hidden.append(rel) if kind == "hidden" else bad.__setitem__(rel, kind))
    for c, k in (("cat", 3), ("dog", 5)):
        idx = [i for i, l in enumerate(embedded.labels) if l == k][:N_VALID_PER_CLASS + 6]
        jp = [embedded.reader.read(embedded.keys[i]) for i in idx]
        ims = [embedded.image(i) for i in idx]
        put(f"{c}/plain one.jpg", jp[0], "ok")                                         # spaces in the name
        put(f"{c}/chat été 猫 {c}.jpg", jp[1], "ok")                                    # unicode
        b = io.BytesIO(); ims[2].convert("CMYK").save(b, "JPEG"); put(f"{c}/cmyk.jpg", b.getvalue(), "ok")
        put(f"{c}/rgba.png", _png(ims[3].convert("RGBA")), "ok")
        put(f"{c}/nested/deeper/palette.png", _png(ims[4].convert("P")), "ok")        # nested folders
        a16 = (np.asarray(ims[5].convert("L"), np.uint16) * 257)
        put(f"{c}/sixteen bit.png", _png(Image.fromarray(a16.astype("<u2"))), "ok")
        put(f"{c}/gray.png", _png(ims[6].convert("L")), "ok")
        put(f"{c}/.hidden.jpg", jp[7], "hidden")                                        # hidden file
        put(f"{c}/.hidden dir/x.jpg", jp[8], "hidden")                                  # hidden folder
    put("cat/zero bytes.jpg", b"", "empty file")
    put("cat/notes.jpg", b"these are my notes, not a picture\n" * 20, "not a readable image")
    put("cat/truncated.jpg", embedded.reader.read(embedded.keys[0])[:400], "not a readable image")
    put("dog/corrupt.jpg", embedded.reader.read(embedded.keys[1])[:200] + bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8)), "not a readable image")
    put("dog/truncated.png", _png(embedded.image(2))[:300], "not a readable image")
    put("dog/bomb.png", _png(Image.new("1", (12000, 12000)), optimize=True), "too large")  # 144 Mpx, a few KB on disk
    (root / "empty").mkdir()                                                            # an empty class folder
    os.symlink("loop_b.jpg", root / "dog" / "loop_a.jpg"); os.symlink("loop_a.jpg", root / "dog" / "loop_b.jpg")
    bad["dog/loop_a.jpg"] = bad["dog/loop_b.jpg"] = "cannot read"                   # a symlink loop
    os.symlink("..", root / "dog" / "up")                                               # a folder loop, not followed
    return valid, bad, hidden


@pytest.fixture(scope="module")
def corpus(embedded, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad corpus")
    return root, *make_corpus(embedded, root)


def check_run(out:Path, valid, bad, n_images=None):
    m = json.loads((out / "metrics.json").read_text())
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(skipped) == set(bad), set(skipped) ^ set(bad)
    for f, words in bad.items(): assert words in skipped[f], (f, skipped[f])
    assert m["n_images"] == (len(valid) if n_images is None else n_images)
    report = (out / "report.md").read_text()
    assert f"Skipped files ({len(bad)})" in report and all(f"`{f}`" in report for f in bad)
    return m


@pytest.mark.parametrize("method,extra", [("zeroshot", []), ("latteclip", ["--epochs", "1", "--batch-size", "8", "--text-cache"]),
                                          ("ueo", ["--epochs", "1", "--batch-size", "8"])])
def test_every_run_finishes_on_the_valid_images(corpus, tmp_path, method, extra):
    root, valid, bad, hidden = corpus
    extra = extra + [tmp_path / "t.jsonl"] if extra[-1:] == ["--text-cache"] else extra   # the methods that generate texts
    r = latteclip("run", "--method", method, "--data", root, "--out", tmp_path / "o", *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    m = check_run(tmp_path / "o", valid, bad)
    assert m["n_classes"] == 2 and f"{len(bad)} skipped" in r.stdout            # the empty folder is no class
    preds = (tmp_path / "o" / "predictions.csv").read_text()
    assert all(v in preds for v in valid) and not any(h in preds for h in hidden)


def test_compare_and_flat_folder(corpus, tmp_path):
    root, valid, bad, hidden = corpus
    r = latteclip("compare", "--methods", "zeroshot,flyp-pseudo", "--data", root, "--epochs", "1", "--batch-size", "8", "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr[-2000:]
    for m in ("zeroshot", "flyp-pseudo"): check_run(tmp_path / "c" / m, valid, bad)
    assert all(len(row["skipped"]) == len(bad) for row in json.loads((tmp_path / "c" / "table.json").read_text()))
    r = latteclip("run", "--method", "zeroshot", "--data", root / "cat", "--classes", "cat,dog", "--out", tmp_path / "f")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert m["n_images"] == len([v for v in valid if v.startswith("cat/")]) and m["top1"] is None
    assert {s["path"] for s in m["skipped"]} == {f[4:] for f in bad if f.startswith("cat/")}


def test_nothing_valid_exits_2_with_one_sentence(embedded, tmp_path):
    root = tmp_path / "junk"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True); (root / c / "x.jpg").write_bytes(b""); (root / c / "y.png").write_text("no")
    for method in ("zeroshot", "latteclip"):
        r = latteclip("run", "--method", method, "--data", root, "--out", tmp_path / method)
        assert r.returncode == 2 and "No readable image left" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_configuration_errors_exit_2_before_any_work(small_tree, tmp_path):
    "Each mistake: exit 2, one line naming it, no traceback, and nothing trained (no run files written)."
    bad_jsonl = tmp_path / "texts.jsonl"; bad_jsonl.write_text('{"path": "a.jpg", "text": "x"}\n{"path": "b.jpg"}\n')
    damaged = tmp_path / "cache.jsonl"; damaged.write_text('{"key": "a", "text": "x"}\nnot json\n')
    ro = tmp_path / "a file"; ro.write_text("x")                               # a folder cannot be made inside it (even as root)
    cases = [(["--method", "magic"], "invalid choice"),
             (["--model", "ViT-Q-99"], "Unknown model"),
             (["--shift", "rain:3"], "Unknown shift"),
             (["--describer", "magic"], "Unknown describer"),
             (["--data", small_tree, "--classes", "airplane,automobile"], "are not among --classes"),
             (["--data", small_tree / "bird", "--classes", "cat,Cat"], "Duplicate class names"),
             (["--method", "dac", "--data", small_tree, "--shots", "21"], "--shots 21 is more than some classes hold"),
             (["--data", small_tree, "--out", ro / "run"], "Cannot write"),
             (["--data", small_tree, "--describer", f"jsonl:{bad_jsonl}"], "line 2: a record needs the string field(s) text"),
             (["--data", small_tree, "--text-cache", damaged], "damaged at line 2"),
             (["--method", "ueo", "--data", small_tree, "--known-classes", "airplane,zebra"], "--known-classes zebra not among")]
    for args, words in cases:
        out = [] if "--out" in args else ["--out", tmp_path / "o"]
        r = latteclip("run", *args, *out, timeout=120)
        assert r.returncode == 2, (args, r.stderr[-500:])
        assert words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-500:])
        if "invalid choice" not in words: assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "o" / "metrics.json").exists() and not (tmp_path / "o" / "checkpoints").exists()
