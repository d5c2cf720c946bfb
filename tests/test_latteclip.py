"""LatteCLIP's pieces with real forward/backward passes on the shipped tiny CLIP and real images."""
import csv, json, os
from pathlib import Path
import numpy as np
import pytest, torch, torch.nn.functional as F
from latteclip.models import load_clip, encode_texts, TEMPLATE
from latteclip.prototypes import Prototypes
from latteclip.mixer import text_weights, mix, targets
from latteclip.texts import AttributeDescriber, TextCache, synthetic_texts, describe_all, Request, collage, tiles
from latteclip.train import TrainConfig, TextBank, clip_loss, latteclip_loss, finetune
from conftest import latteclip, write_images
from latteclip.core import LatteError


@pytest.fixture(scope="module")
def setup(embedded, tmp_path_factory):
    ds = embedded.subset(range(0, 5000, 50)).with_shift("fog:5").unlabeled()     # 100 images
    clip = load_clip(device="cpu")
    from latteclip.pseudolabels import pseudo_labels
    pl = pseudo_labels(clip, ds, cache=False)
    T = synthetic_texts(ds, pl.labels, AttributeDescriber(), TextCache(tmp_path_factory.mktemp("t") / "t.jsonl"), groups_per_class=2)
    return ds, pl, T


def test_clip_loss_matches_open_clip():
    import open_clip
    f, t = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    assert torch.allclose(clip_loss(f, t, torch.tensor(20.)), open_clip.loss.ClipLoss()(f, t, torch.tensor(20.)), atol=1e-6)


def test_latteclip_loss_by_hand(setup):
    ds, pl, T = setup
    clip = load_clip(device="cpu"); model = clip.model
    bank = TextBank(T, clip.tokenizer)
    P = Prototypes(encode_texts(clip, T.class_texts))
    P.P.copy_(F.normalize(P.P + 0.05 * torch.randn_like(P.P), dim=-1))          # prototypes away from the texts
    idx = torch.arange(8); y_zs = pl.labels[idx]
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        f = model.encode_image(x, normalize=True)
        g = torch.Generator().manual_seed(0)
        cfg = TrainConfig(alpha=0.1)
        loss, parts, mixed, labs, y_ft = latteclip_loss(model, f, idx, y_zs, P, bank, cfg, g)
        # by hand, one image at a time, with the same group-text draws
        g = torch.Generator().manual_seed(0)
        picks = [T.group_texts[int(y)][torch.randint(len(T.group_texts[int(y)]), (1,), generator=g).item()] for y in y_zs]
        enc = lambda s: model.encode_text(clip.tokenizer([s]), normalize=True)[0]
        s = model.logit_scale.exp()
        total = 0.
        for labels in [(f @ P.P.T).argmax(1), y_zs]:
            tg = []
            for i in range(8):
                texts = [enc(T.class_texts[int(labels[i])]), enc(T.image_texts[i]), enc(picks[i])]
                w = []
                for t in texts:
                    sims = sorted((P.P @ t).tolist(), reverse=True); w.append(sims[0] - sims[1] + 1e-6)
                m = F.normalize(sum(wj * tj for wj, tj in zip(w, texts)) / sum(w), dim=0)
                p = P.P[int(labels[i])]
                tg.append(F.normalize(p + 0.1 * (m - p), dim=0))
            tg = torch.stack(tg); logits = s * f @ tg.T; y = torch.arange(8)
            total += (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2
    assert torch.allclose(loss, total, atol=1e-4), (loss, total)
    assert torch.equal(y_ft, (f @ P.P.T).argmax(1))


def test_finetune_learns_and_resume_is_exact(setup, tmp_path):
    ds, pl, T = setup
    cfg = TrainConfig(epochs=2, batch_size=50, lr=1e-4, precision="fp32")
    c1 = load_clip(device="cpu"); before = {k: v.clone() for k, v in c1.model.state_dict().items()}
    P1, h1 = finetune(c1, ds, pl.labels, T, cfg, out=tmp_path / "a")
    assert any(not torch.equal(before[k], v) for k, v in c1.model.state_dict().items()), "no weight moved"
    assert not torch.equal(P1.P, h1.prototypes[0]), "prototypes did not move"
    c2 = load_clip(device="cpu")
    finetune(c2, ds, pl.labels, T, cfg, out=tmp_path / "b", stop_after=1)          # stopped after epoch 1
    c3 = load_clip(device="cpu")
    P3, h3 = finetune(c3, ds, pl.labels, T, cfg, out=tmp_path / "b", resume=True)  # a fresh process would do this
    assert all(torch.equal(c1.model.state_dict()[k], v) for k, v in c3.model.state_dict().items()), "resume is not exact"
    assert torch.equal(P1.P, P3.P) and h1.loss == h3.loss


def test_text_cache_second_run_makes_no_call(setup, tmp_path):
    ds, pl, _ = setup
    class Counting(AttributeDescriber):
        calls = 0
        def describe(self, requests):
            Counting.calls += len(requests); return super().describe(requests)
    cache = TextCache(tmp_path / "c.jsonl")
    a = synthetic_texts(ds, pl.labels, Counting(), cache, groups_per_class=2)
    n = Counting.calls; assert n > 0
    b = synthetic_texts(ds, pl.labels, Counting(), TextCache(tmp_path / "c.jsonl"), groups_per_class=2)
    assert Counting.calls == n and b.calls == 0 and a.image_texts == b.image_texts and a.group_texts == b.group_texts
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(l)["key"] for l in lines}) == len(cache)


def test_torn_cache_line_is_dropped_and_damage_reported(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"key": "a", "text": "x"}\n{"key": "b", "te')
    with pytest.warns(UserWarning, match="incomplete record \\(line 2"): c = TextCache(p)
    assert len(c) == 1 and p.read_text().endswith("\n")
    p.write_text('{"key": "a", "text": "x"}\nnot json\n{"key": "b", "text": "y"}\n')
    from latteclip.core import LatteError
    with pytest.raises(LatteError, match="line 2"):
        TextCache(p)


def test_collage_geometry(embedded):
    c = collage([embedded.image(i) for i in range(4)])
    assert c.size == (672, 672) and all(t.size == (326, 326) for t in tiles(c))
    assert np.asarray(c)[:, 326:346].min() == 255                                # the 20 px gap is white


def test_labels_never_read_flat_equals_tree(embedded, tmp_path):
    idxs = [k * 500 + j for k in range(3) for j in range(24)]
    tree = write_images(embedded, idxs, tmp_path / "tree"); flat = write_images(embedded, idxs, tmp_path / "flat", layout="flat")
    args = ["--method", "latteclip", "--epochs", "1", "--batch-size", "24", "--seed", "3", "--shift", "fog:5",
            "--text-cache", tmp_path / "texts.jsonl"]
    r1 = latteclip("run", "--data", tree, "--out", tmp_path / "o1", *args)
    r2 = latteclip("run", "--data", flat, "--classes", "airplane,automobile,bird", "--out", tmp_path / "o2", *args)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    p1 = [r["prediction"] for r in csv.DictReader(open(tmp_path / "o1" / "predictions.csv"))]
    p2 = [r["prediction"] for r in csv.DictReader(open(tmp_path / "o2" / "predictions.csv"))]
    assert len(p1) == 72 and p1 == p2
    m = json.loads((tmp_path / "o1" / "metrics.json").read_text())
    for k in ["top1", "zeroshot_top1", "top1_text", "top1_prototypes"]:
        assert m[k] is not None
    assert (tmp_path / "o1" / "report.md").exists() and (tmp_path / "o1" / "curves.png").exists()
    assert json.loads((tmp_path / "o2" / "metrics.json").read_text())["top1"] is None


def test_attention_rollout_by_hand(embedded):
    "Rollout from the hooks equals rollout from attention recomputed by hand from each block's weights."
    from latteclip.train import attention_rollout
    from latteclip.core import LatteError
    clip = load_clip(device="cpu"); v = clip.model.visual
    x = torch.stack([clip.preprocess(embedded.image(i)) for i in range(3)])
    with torch.no_grad(): ref = clip.model.encode_image(x)
    got = attention_rollout(clip, x)
    assert got.shape == (3, 8, 8) and (got >= 0).all() and (got.sum((1, 2)) < 1).all()
    with torch.no_grad(): assert torch.equal(clip.model.encode_image(x), ref)         # hooks gone, output unchanged
    ins = []
    hs = [b.ln_1.register_forward_hook(lambda m, a, o: ins.append(o)) for b in v.transformer.resblocks]
    with torch.no_grad(): clip.model.encode_image(x)
    for h in hs: h.remove()
    R = torch.eye(65).expand(3, 65, 65)
    for b, h in zip(v.transformer.resblocks, ins):
        a = b.attn; H = a.num_heads; d = h.shape[-1] // H
        q, k, _ = F.linear(h, a.in_proj_weight, a.in_proj_bias).chunk(3, -1)
        q, k = (t.reshape(3, 65, H, d).transpose(1, 2) for t in (q, k))
        A = ((q @ k.transpose(-1, -2)) / d ** 0.5).softmax(-1).mean(1)            # heads averaged
        A = 0.5 * A + 0.5 * torch.eye(65)
        R = (A / A.sum(-1, keepdim=True)) @ R
    assert torch.allclose(got, R[:, 0, 1:].reshape(3, 8, 8), atol=1e-5)
    with pytest.raises(LatteError, match="vision transformer"):
        attention_rollout(load_clip("RN50", "random", "cpu"), torch.randn(1, 3, 224, 224))


def test_prototype_source_zeroshot_moves_prototypes_from_y_zs_only(setup):
    "--prototype-source zeroshot: only the mixes of the zero-shot labels reach the prototype update (both: y_ft's too)."
    ds, pl, T = setup
    clip = load_clip(device="cpu"); model = clip.model
    bank = TextBank(T, clip.tokenizer)
    P = Prototypes(encode_texts(clip, T.class_texts))
    P.P.copy_(F.normalize(P.P + 0.05 * torch.randn_like(P.P), dim=-1))
    idx = torch.arange(8); y_zs = pl.labels[idx]
    with torch.no_grad():
        f = model.encode_image(torch.randn(8, 3, 32, 32), normalize=True)
        out = {src: latteclip_loss(model, f, idx, y_zs, P, bank, TrainConfig(prototype_source=src),
                                   torch.Generator().manual_seed(0)) for src in ("both", "zeroshot")}
    (lb, _, mb, labs_b, y_ft), (lz, _, mz, labs_z, _) = out["both"], out["zeroshot"]
    assert torch.equal(lb, lz)                                                 # the loss is the same
    assert torch.equal(labs_b, torch.cat([y_ft, y_zs])) and torch.equal(labs_z, y_zs)
    assert torch.equal(mz, mb[8:])                                             # the zero-shot half of the mixes
    with pytest.raises(LatteError, match="--prototype-source"): TrainConfig(prototype_source="ft")
