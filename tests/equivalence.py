"""Before/after check for a restructuring (not a test: pytest does not collect it). Small real runs of every training:
LatteCLIP (2 epochs; 1 epoch with --grad-accum 2), FLYP on pseudo-labels, UEO, UEO open-set with --grad-accum 2 and
NoLA on 500 fog images, then CLIP and DINO pre-training on 240 images (2 epochs; CLIP also stopped after epoch 1 and
resumed). Writes their top-1, metrics, loss histories and weight hashes to a JSON file; `--vs OLD.json` compares.

    python tests/equivalence.py after.json [--vs before.json]
    PYTHONPATH=/path/to/old/checkout python tests/equivalence.py before.json      # the code before the change
"""
import argparse, hashlib, json, os, sys, tempfile
from pathlib import Path
os.environ["LATTECLIP_QUIET"] = "1"
sys.path.insert(0, str(Path(__file__).parent))


def weights_hash(f)->str:
    "A hash of every tensor of a safetensors file, in float32."
    from safetensors.torch import load_file
    sd, m = load_file(f), hashlib.sha256()
    for k in sorted(sd):
        m.update(k.encode())
        m.update(sd[k].float().numpy().tobytes())
    return m.hexdigest()[:16]


def methods()->dict:
    "Every adapting method on 500 fog images: top-1, the metrics (timings left out) and the history."
    from latteclip.data import open_data
    from latteclip.methods import run_method
    ds, res = open_data(shift="fog:5").subset(range(0, 5000, 10)), {}
    runs = [("latteclip", dict(epochs=2, batch_size=100)), ("latteclip", dict(epochs=1, batch_size=100, grad_accum=2)),
            ("flyp-pseudo", dict(epochs=2, batch_size=100)), ("ueo", dict(epochs=2, batch_size=50)),
            ("ueo-open", dict(epochs=1, batch_size=50, grad_accum=2)), ("nola", dict(epochs=1, batch_size=50))]
    for m, kw in runs:
        with tempfile.TemporaryDirectory() as d:
            os.environ["LATTECLIP_CACHE"] = d
            text = dict(text_cache=str(Path(d) / "t.jsonl")) if m.startswith("latteclip") else {}
            r = run_method(m, ds=ds, out=Path(d) / "o", **text, **kw)
            other = {k: v for k, v in r.items() if k not in ("history", "seconds", "peak_rss_mb")
                     and isinstance(v, (int, float, str, list))}
            h = {k: v for k, v in r["history"].items() if k not in ("seconds", "prototypes", "eval")}
            res[f"{m}-{kw}"] = dict(top1=r["top1"], metrics=other, history=h)
    return res


def pretrainings()->dict:
    "CLIP and DINO pre-training on 240 embedded images: per-epoch loss, validation, lr, and the weights' hash."
    from conftest import write_images
    from latteclip.data import embedded_target
    from latteclip.pretrain import pretrain
    from latteclip.pretrain_dino import pretrain_dino
    tmp = Path(tempfile.mkdtemp())
    tree = write_images(embedded_target(), [k * 500 + j for k in range(10) for j in range(24)], tmp / "pre")
    kw = dict(epochs=2, batch_size=32, val_per_class=4, precision="fp32", device="cpu")
    rows = lambda lg, val: dict(epochs=[(e["loss"], e[val], e["lr"]) for e in lg["epochs"]], w=weights_hash(lg["weights"]))
    res = dict(pretrain=rows(pretrain(str(tree), out=tmp / "p", **kw), "val_top1"))
    pretrain(str(tree), out=tmp / "p2", stop_after=1, **kw)
    res["pretrain_resumed"] = rows(pretrain(str(tree), out=tmp / "p2", resume=True, **kw), "val_top1")
    lg = pretrain_dino(str(tree), out=tmp / "d", epochs=2, batch_size=32, lr=1e-3, target=None, device="cpu",
                       precision="fp32")
    res["dino"] = rows(lg, "knn_val_top1")
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--vs", help="an earlier output to compare with")
    a = ap.parse_args()
    res = methods() | pretrainings()
    Path(a.out).write_text(json.dumps(res, indent=1))
    if a.vs:
        old = json.loads(Path(a.vs).read_text())
        res = json.loads(Path(a.out).read_text())                                   # tuples as lists, like `old`
        diff = [k for k in old.keys() | res.keys() if old.get(k) != res.get(k)]
        print("identical" if not diff else f"differ: {sorted(diff)}")
        sys.exit(1 if diff else 0)
