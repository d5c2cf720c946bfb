"""UEO (open-set, label-free) on the shipped tiny CLIP and real embedded images: the loss by hand, the prompt learner
against open_clip, what is trained, that training lowers the objective, and the open-set CLI."""
import csv, json
import numpy as np
import pytest, torch, torch.nn.functional as F
from latteclip.core import LatteError
from latteclip.models import load_clip, zeroshot_classifier
from latteclip.ueo import ueo_loss, confidence_weights, PromptLearner, norm_affines, known_split, auroc, fit_ueo, UEOConfig, run_ueo
from conftest import latteclip


def test_ueo_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(7, 4, generator=g, dtype=torch.float64) * 3; w = torch.rand(7, generator=g, dtype=torch.float64) * .7 + .25
    p = np.exp(lg.numpy()); p /= p.sum(1, keepdims=True); wn = w.numpy()
    H = lambda q: -(q * np.log(q)).sum(-1)
    for lam in (1.0, 0.5):
        want = (wn * H(p)).sum() / wn.sum() - lam * H((p / wn[:, None]).sum(0) / (1 / wn).sum())
        assert abs(ueo_loss(lg, w, lam).item() - want) < 1e-6                # float32 inside
    # the sign of each term: a sharper confident image lowers the loss, a flatter marginal of unsure images lowers it too
    lg1 = lg.clone().requires_grad_(True); ueo_loss(lg1, w).backward()
    top = lg.argmax(1); assert (lg1.grad[torch.arange(7), top][w > w.median()] < 0).all()
    # the weights: max softmax probability of the scaled cosines
    cos = torch.tensor([[0.3, 0.1], [0.2, 0.2]])
    assert torch.allclose(confidence_weights(cos, 10.), torch.tensor([1 / (1 + np.exp(-2.)), 0.5]).float())


def test_prompt_learner_starts_as_the_zeroshot_classifier_and_trains_only_its_context(embedded):
    clip = load_clip(device="cpu"); classes = embedded.classes
    pl = PromptLearner(clip, classes)
    assert pl.init == "a photo of a" and pl.ctx.shape == (4, clip.model.token_embedding.weight.shape[1])
    W = pl(); W0 = zeroshot_classifier(clip, classes, "single")
    assert torch.allclose(W, W0, atol=1e-5)                                   # same computation as open_clip's encode_text
    before = {n: p.detach().clone() for n, p in clip.model.named_parameters()}
    W.sum().backward()
    assert pl.ctx.grad is not None and pl.ctx.grad.abs().sum() > 0
    assert [n for n, _ in pl.named_parameters()] == ["ctx"]                     # CLIP itself is not a sub-module
    with torch.no_grad(): pl.ctx.add_(torch.randn(pl.ctx.shape, generator=torch.Generator().manual_seed(0)))   # (a constant shift would vanish in the LayerNorms)
    assert not torch.allclose(pl(), W0, atol=1e-3)                             # the context is what the classes share
    assert all(torch.equal(before[n], p) for n, p in clip.model.named_parameters())
    pl2 = PromptLearner(clip, classes, n_ctx=2)                                # no 2-word init text: CoOp's random init
    assert pl2.init == "X X" and pl2().shape == (len(classes), W0.shape[1])


def test_norm_affines_are_the_vision_layer_norms():
    clip = load_clip(device="cpu")
    names = [n for n, _ in norm_affines(clip.model.visual)]
    lns = [m for m in clip.model.visual.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(names) == 2 * len(lns) and len(lns) == 2 + 2 * 4                # ln_pre, ln_post, 2 per block of 4
    assert all(n.endswith(("weight", "bias")) for n in names)


def test_training_lowers_the_objective_and_touches_only_the_trainables(embedded):
    clip = load_clip(device="cpu")
    ds = embedded.subset(range(0, 5000, 40)).with_shift("fog:5").unlabeled()   # 125 real images
    frozen = {n: p.detach().clone() for n, p in clip.model.named_parameters()}
    affine = {f"visual.{n}" for n, _ in norm_affines(clip.model.visual)}
    cfg = UEOConfig(epochs=3, batch_size=25, lr=0.05, augment=False, precision="fp32")
    prompts, r = fit_ueo(clip, ds, embedded.classes, cfg)
    w = r["w"]
    obj = lambda lg: ueo_loss(lg, w).item()                                    # the objective over all images, fixed w
    assert obj(r["logits_after"]) < obj(r["logits_before"]) - 1e-3
    changed = {n for n, p in clip.model.named_parameters() if not torch.equal(frozen[n], p.detach())}
    assert changed and changed <= affine                                      # nothing but the norm affines moved
    assert not torch.allclose(prompts.ctx, PromptLearner(clip, embedded.classes).ctx)
    assert len(r["history"].loss) == 3 and all(np.isfinite(r["history"].loss))
    # the weights come from the initial zero-shot prediction with the model's logit scale
    assert torch.allclose(w, (r["logits_before"]).softmax(-1).max(-1).values, atol=1e-5)


def test_known_split_auroc_and_errors():
    cls = ["cat", "dog", "sea turtle", "car"]
    assert known_split(cls) == [0, 1, 2, 3] and known_split(cls, n_unknown=2) == [0, 1]
    assert known_split(cls, "Sea_Turtle, cat") == [0, 2]
    with pytest.raises(LatteError, match="--known-classes horse not among"): known_split(cls, "cat,horse")
    with pytest.raises(LatteError, match="at least two known"): known_split(cls, "cat")
    assert auroc([0.9, 0.8, 0.1, 0.7], [True, True, False, False]) == 100.0
    assert auroc([0.1, 0.9], [True, False]) == 0.0 and auroc([0.5], [True]) is None
    with pytest.raises(LatteError, match="--lr must be positive"): UEOConfig(lr=0)


def test_ueo_open_set_cli(tmp_path, small_tree):
    r = latteclip("run", "--method", "ueo-open", "--data", small_tree, "--known-classes", "airplane,bird", "--epochs", "1",
                  "--batch-size", "16", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["known_classes"] == ["airplane", "bird"] and m["n_unlabeled"] == 60 and m["n_unknown_images"] == 20
    assert m["n_images"] == 40 and m["n_classes"] == 2 and 0 <= m["auroc"] <= 100 and m["zeroshot_auroc"] is not None
    assert m["config"]["batch_size"] == 16 and m["config"]["lr"] == 1e-4 and m["config"]["epochs"] == 1
    rows = list(csv.DictReader(open(tmp_path / "o" / "open_set.csv")))
    assert len(rows) == 60 and sum(int(x["known_class"]) for x in rows) == 40 and {x["prediction"] for x in rows} <= {"airplane", "bird"}
    r = latteclip("run", "--method", "ueo", "--data", small_tree, "--known-classes", "airplane,horse", "--out", tmp_path / "x")
    assert r.returncode == 2 and "--known-classes horse not among" in r.stderr and "Traceback" not in r.stderr
    r = latteclip("run", "--method", "ueo", "--ueo-weight-scale", "-1", "--out", tmp_path / "y")
    assert r.returncode == 2 and "--ueo-weight-scale must be positive" in r.stderr
