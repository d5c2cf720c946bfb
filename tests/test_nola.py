"""NoLA on the shipped tiny CLIP, the shipped DINO and real embedded images: the FixMatch loss by hand, the confident
set, the visual prompts against open_clip, what is trained, the alignment head learning its labels, and the CLI."""
import csv, json
import numpy as np
import pytest, torch, torch.nn.functional as F
from latteclip.core import LatteError
from latteclip.models import load_clip
from latteclip.pixels import load_pixels, normalizer as _normalizer
from latteclip.nola import (fixmatch_loss, confident_topk, VisualPrompts, AlignmentHead, fit_head, fit_nola, run_nola, NoLAConfig,
                            strong_views, prompt_attention)
from conftest import latteclip


def test_fixmatch_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64) * 2, -1)
    p = _np_softmax(lg.detach().numpy()); t = q.argmax(-1).numpy(); conf = q.max(-1).values.numpy()
    for thr in (0., .5):
        keep = conf >= thr
        want = -np.log(p[np.arange(6), t])[keep].mean()
        loss, mask = fixmatch_loss(lg, q, thr)
        assert abs(loss.item() - want) < 1e-6 and mask.sum().item() == keep.sum()
    loss, _ = fixmatch_loss(lg, q, 0.); loss.backward()
    assert (lg.grad[torch.arange(6), q.argmax(-1)] < 0).all()                 # the target class is pushed up
    assert fixmatch_loss(lg, q, .9999)[0].item() == 0.                          # nothing confident enough: no target, no NaN
    # label smoothing eps: (1 - eps) of the target's log-probability plus eps of the mean log-probability of all classes
    eps = 0.1
    want = -((1 - eps) * np.log(p[np.arange(6), t]) + eps * np.log(p).mean(-1)).mean()
    assert abs(fixmatch_loss(lg, q, 0., eps)[0].item() - want) < 1e-6


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True)); return e / e.sum(-1, keepdims=True)


def test_confident_topk_by_hand():
    probs = torch.tensor([[.9, .1], [.6, .4], [.8, .2], [.3, .7], [.45, .55]])
    idx, y = confident_topk(probs, 2)
    assert idx.tolist() == [0, 2, 3, 4] and y.tolist() == [0, 0, 1, 1]
    idx, y = confident_topk(probs, 1)
    assert idx.tolist() == [0, 3] and y.tolist() == [0, 1]
    # the authors' fallback: class 2 is nobody's top-1; it takes the images it is 2nd for (most probable first), then 3rd
    probs = torch.tensor([[.7, .2, .1], [.6, .1, .3], [.5, .4, .1], [.2, .75, .05], [.1, .85, .05], [.5, .45, .05]])
    assert confident_topk(probs, 2)[0].tolist() == [0, 1, 4, 3]                # without: class 2 gets nothing
    idx, y = confident_topk(probs, 2, fallback=3)
    assert idx.tolist() == [0, 1, 4, 3, 2, 5] and y.tolist() == [0, 0, 1, 1, 2, 2]   # 1 is taken: 2 (rank 3, .1), 5 (.05)
    assert len(set(idx.tolist())) == len(idx)                                   # each image in one class only


def test_visual_prompts_hook_open_clip_and_change_only_when_attached(embedded):
    clip = load_clip(device="cpu"); vis = clip.model.visual
    px = torch.from_numpy(load_pixels(embedded.subset(range(8)), clip.image_size)); norm = _normalizer(clip)
    x = norm(px.permute(0, 3, 1, 2).float() / 255.)
    with torch.no_grad():
        a = clip.model.encode_image(x)
        vp = VisualPrompts(vis, 5)
        with vp.attached(vis):
            b = clip.model.encode_image(x)
            tokens = {}
            h = vis.transformer.register_forward_pre_hook(lambda m, i: tokens.update(n=i[0].shape[1]))   # returns None: inputs unchanged
            clip.model.encode_image(x); h.remove()
        c = clip.model.encode_image(x)
    grid = (clip.image_size // vis.patch_size[0]) ** 2
    assert tokens["n"] == 1 + 5 + grid                                          # class token, 5 prompts, the patches
    assert torch.equal(a, c) and not torch.allclose(a, b, atol=1e-3)           # hooks gone = the original model
    att = prompt_attention(clip, vp, px)
    assert att.shape == (len(vis.transformer.resblocks), 3) and np.allclose(att.sum(1), 1, atol=1e-4)
    v = strong_views(px, torch.Generator().manual_seed(0))
    assert v.shape == (8, 3, clip.image_size, clip.image_size) and 0 <= v.min() and v.max() <= 1


def test_alignment_head_learns_its_confident_labels(embedded):
    from latteclip.dino import load_ssl
    ssl = load_ssl(device="cpu"); clip = load_clip(device="cpu")
    sub = embedded.subset([k * 500 + j for k in range(10) for j in range(30)])
    px = torch.from_numpy(load_pixels(sub, ssl.size)); y = torch.tensor(sub.labels)
    T = F.normalize(torch.randn(10, 128, generator=torch.Generator().manual_seed(0)), dim=-1)
    idx = torch.arange(len(sub))
    cfg = NoLAConfig(head_epochs=15)
    head, losses = fit_head(ssl, px, idx, y, T, clip.logit_scale, cfg)
    assert losses[-1] < losses[0]
    from latteclip.nola import head_probs
    acc = (head_probs(ssl, head, px).argmax(1) == y).float().mean().item()
    assert acc > .5                                                             # fits its own labels far above chance (10%)


def test_fit_nola_trains_only_the_prompts(embedded, tmp_path):
    clip = load_clip(device="cpu")
    sub = embedded.subset([k * 500 + j for k in range(10) for j in range(16)]).unlabeled()
    before = {n: p.detach().clone() for n, p in clip.model.named_parameters()}
    r = fit_nola(clip, sub, NoLAConfig(epochs=2, batch_size=32, n_prompts=4, head_epochs=3, train_norm=False,
                                       train_classifier=False), out=tmp_path / "ck")
    assert all(torch.equal(before[n], p) for n, p in clip.model.named_parameters())   # CLIP itself is frozen
    assert torch.equal(r["T"], r["T0"])                                        # and the classifier is T
    assert r["prompts"].prompts.shape[0] == 4 and len(r["history"].loss) == 2 and np.isfinite(r["history"].loss).all()
    assert not torch.allclose(r["logits_after"], r["logits_before"])
    assert r["top_k"] == 160 // 50 and len(r["topk_idx"]) <= 10 * r["top_k"]
    assert (tmp_path / "ck" / "state.pt").exists()


def test_fit_nola_as_the_authors_trains_prompts_norms_and_classifier(embedded, tmp_path):
    "The defaults: prompts, the vision LayerNorm affines and a classifier that starts as T; nothing else moves."
    from latteclip.ueo import norm_affines
    clip = load_clip(device="cpu")
    sub = embedded.subset([k * 500 + j for k in range(10) for j in range(16)]).unlabeled()
    before = {n: p.detach().clone() for n, p in clip.model.named_parameters()}
    cfg = NoLAConfig(epochs=2, batch_size=32, n_prompts=4, head_epochs=3)
    assert (cfg.train_norm, cfg.train_classifier, cfg.label_smoothing, cfg.teacher_view, cfg.topk_fallback) == \
        (True, True, 0.1, "plain", True)
    r = fit_nola(clip, sub, cfg, out=tmp_path / "ck")
    changed = {n for n, p in clip.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and changed <= {f"visual.{n}" for n, _ in norm_affines(clip.model.visual)}
    assert not torch.allclose(r["T"], r["T0"]) and r["T"].shape == r["T0"].shape
    # the result is what the trained pieces compute: the prompted, re-normed model against the trained classifier
    from latteclip.nola import nola_logits
    from latteclip.pixels import normalizer
    px = torch.from_numpy(load_pixels(sub.subset(range(8)), clip.image_size))
    assert torch.allclose(nola_logits(clip, r["prompts"], r["T"], px, normalizer(clip)), r["logits_after"][:8], atol=1e-4)
    # run again under the same seed: the same model
    clip2 = load_clip(device="cpu")
    r1 = fit_nola(clip2, sub, NoLAConfig(epochs=2, batch_size=32, n_prompts=4, head_epochs=3), out=tmp_path / "ck2",
                  on_step=None)
    assert torch.allclose(r1["logits_after"], r["logits_after"], atol=1e-5)    # the run is reproducible under its seed


def test_nola_cli_on_a_real_folder(small_tree, tmp_path):
    out = tmp_path / "nola"
    p = latteclip("run", "--method", "nola", "--data", small_tree, "--epochs", "1", "--n-prompts", "4", "--out", out)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "nola" and m["n_prompts"] == 4 and m["ssl"] == "latteclip-dino-tiny"
    assert (m["config"]["train_norm"], m["config"]["label_smoothing"], m["config"]["teacher_view"]) == (True, 0.1, "plain")
    for k in ("top1", "zeroshot_top1", "descriptor_top1", "head_top1", "topk_top1"): assert m[k] is not None
    rows = list(csv.DictReader(open(out / "pseudo_labels.csv")))
    assert len(rows) == 60 and {r["dino_label"] for r in rows} <= {"airplane", "automobile", "bird"}
    p = latteclip("run", "--method", "nola", "--data", small_tree, "--ssl", "no_such_model_xyz", "--out", tmp_path / "bad")
    assert p.returncode == 2 and "neither a timm model" in p.stderr and "Traceback" not in p.stderr
