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


def test_absent_split_and_without_classes(embedded):
    from latteclip.ueo import absent_split, without_classes
    cls = ["cat", "dog", "sea turtle", "car", "ship"]
    known = known_split(cls, n_unknown=1)                                     # ship unknown
    assert absent_split(cls, known) == [] and absent_split(cls, known, n_absent=2) == [2, 3]
    assert absent_split(cls, known, "Sea_Turtle") == [2] and absent_split(cls, known, "car, cat") == [0, 3]
    with pytest.raises(LatteError, match="--absent-classes ship not among the known classes"): absent_split(cls, known, "ship")
    with pytest.raises(LatteError, match="--n-absent 3 leaves 1 of the 4 known classes with images"):
        absent_split(cls, known, n_absent=3)
    with pytest.raises(LatteError, match="--n-absent 5 leaves 0 of the 4 known classes with images"):
        absent_split(cls, known, n_absent=5)
    with pytest.raises(LatteError, match="--absent-classes leaves 1"): absent_split(cls, known, "cat,dog,car")
    ds = embedded.subset(range(0, 5000, 250))                                 # 20 real images, 2 of each class
    part = without_classes(ds, ["cat", "dog"])
    assert len(part) == 16 and not {"cat", "dog"} & {part.classes[l] for l in part.labels} and part.classes == ds.classes
    assert without_classes(ds, []) is ds
    with pytest.raises(LatteError, match="take images out by their class folder"): without_classes(ds.unlabeled(), ["cat"])


def test_the_authors_plain_sgd_is_the_default(embedded):
    "One step of the default optimiser is exactly `p - lr * grad` (no momentum, no weight decay) on every trainable."
    clip = load_clip(device="cpu")
    cfg = UEOConfig(epochs=1, batch_size=40, lr=0.5, augment=False, precision="fp32")
    assert (cfg.momentum, cfg.weight_decay) == (0., 0.)
    ds = embedded.subset(range(0, 5000, 125)).unlabeled()                    # 40 images: one step
    from latteclip.pixels import load_pixels, normalizer
    prompts = PromptLearner(clip, embedded.classes)
    x = normalizer(clip)(torch.from_numpy(load_pixels(ds, clip.image_size)).permute(0, 3, 1, 2).float() / 255.)
    affines = [p for _, p in norm_affines(clip.model.visual)]
    for p in affines: p.requires_grad_(True)
    s = clip.model.logit_scale.exp().clamp(max=100).detach()
    with torch.no_grad(): w = confidence_weights(clip.model.encode_image(x, normalize=True) @ prompts().T, clip.logit_scale)
    ueo_loss(s * clip.model.encode_image(x, normalize=True) @ prompts().T, w).backward()
    want = [(prompts.ctx - 0.5 * prompts.ctx.grad).detach()] + [(p - 0.5 * p.grad).detach() for p in affines]
    clip = load_clip(device="cpu")
    got, _ = fit_ueo(clip, ds, embedded.classes, cfg)
    have = [got.ctx.detach()] + [p.detach() for _, p in norm_affines(clip.model.visual)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(have, want))
    moved = max((a - b).abs().max().item() for a, b in zip(want[1:], affines))
    assert moved > 1e-4                                                      # the step is not vanishingly small


def test_the_four_settings_cli(tmp_path, embedded):
    "closed, partial, open and open-partial on a real 4-class folder, held-out images scored the same way."
    from conftest import write_images
    from latteclip.report import method_list
    assert method_list("ueo-settings") == ["ueo", "ueo-open", "ueo-partial", "ueo-open-partial"]
    data = write_images(embedded, [k * 500 + j for k in range(4) for j in range(12)], tmp_path / "data")
    ev = write_images(embedded, [k * 500 + 100 + j for k in range(4) for j in range(8)], tmp_path / "eval")
    quick = ["--data", data, "--eval-data", ev, "--epochs", "1", "--batch-size", "16"]
    runs = {"partial": ["--method", "ueo-partial", "--n-absent", "1"],
            "open-partial": ["--method", "ueo-open-partial", "--known-classes", "airplane,automobile,bird",
                             "--absent-classes", "bird"]}
    m = {}
    for k, args in runs.items():
        r = latteclip("run", *args, *quick, "--out", tmp_path / k)
        assert r.returncode == 0, r.stderr
        m[k] = json.loads((tmp_path / k / "metrics.json").read_text())
    p, op = m["partial"], m["open-partial"]
    assert p["absent_classes"] == ["cat"] and p["n_unlabeled"] == 36 and p["n_images"] == 36 and p["n_classes"] == 4
    assert p["n_unknown_images"] == 0 and p["auroc"] is None and p["eval_n_images"] == 24 and "eval_auroc" not in p
    assert op["absent_classes"] == ["bird"] and op["n_unlabeled"] == 36 and op["n_unknown_images"] == 12
    assert op["n_images"] == 24 and op["n_classes"] == 3 and op["auroc"] is not None
    assert op["eval_n_images"] == 16 and op["eval_n_unknown_images"] == 8 and op["eval_auroc"] is not None
    rows = list(csv.DictReader(open(tmp_path / "open-partial" / "open_set.csv")))
    assert len(rows) == 36 and {x["prediction"] for x in rows} <= {"airplane", "automobile", "bird"}
    for args, msg in [(["--absent-classes", "zebra"], "--absent-classes zebra not among the known classes"),
                      (["--n-absent", "3"], "--n-absent 3 leaves 1 of the 4 known classes"),
                      (["--absent-classes", ","], "--absent-classes names no class"),
                      (["--n-absent", "-1"], "--n-absent must be >= 0")]:
        r = latteclip("run", "--method", "ueo", *args, *quick, "--out", tmp_path / "bad")
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "bad").exists()
    flat = write_images(embedded, range(0, 5000, 250), tmp_path / "flat", layout="flat")
    r = latteclip("run", "--method", "ueo-partial", "--data", flat, "--classes", "airplane,automobile,bird,cat",
                  "--n-absent", "1", "--epochs", "1", "--out", tmp_path / "bad")
    assert r.returncode == 2 and "take images out by their class folder" in r.stderr and not (tmp_path / "bad").exists()
