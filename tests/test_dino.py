"""The self-supervised model NoLA uses: DINO's loss by hand, the views, the k-NN measure, a real pre-training run
that resumes exactly, the shipped weights, and the real-model paths (a tiny random DINOv2 through transformers)."""
import os
import numpy as np
import pytest, torch
from safetensors.torch import load_file
from latteclip.core import LatteError
from latteclip.dino import dino_loss, multicrop, knn_top1, load_ssl, tiny_vit, DINO_TINY, DINO_CFG, cosine
from latteclip.pretrain_dino import pretrain_dino
from conftest import write_images, hf_offline


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True)); return e / e.sum(-1, keepdims=True)


def test_dino_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    t = [torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    c = torch.randn(1, 8, generator=g, dtype=torch.float64) * .1
    want = [-(_softmax((t[i].detach().numpy() - c.numpy()) / .04) * np.log(_softmax(s[j].detach().numpy() / .1))).sum(-1).mean()
            for i in range(2) for j in range(4) if i != j]                      # teacher view i vs every other student view
    loss = dino_loss(s, t, c)
    assert abs(loss.item() - np.mean(want)) < 1e-9
    loss.backward()
    assert t[0].grad is None and t[1].grad is None                             # no gradient into the teacher
    with torch.no_grad():                                                      # a small step against the gradient lowers it
        lower = dino_loss([x - 1e-2 * x.grad for x in s], t, c)
    assert lower < loss
    assert cosine(0, 10, 1., 0., warmup=2) == 0. and cosine(2, 10, 1., 0., warmup=2) == 1. and abs(cosine(10, 10, 1., .1) - .1) < 1e-12


def test_multicrop_views(embedded):
    px = torch.from_numpy(np.stack([np.asarray(embedded.image(i)) for i in range(6)]))
    v = multicrop(px, torch.Generator().manual_seed(0), n_local=3)
    assert [tuple(x.shape) for x in v] == [(6, 3, 32, 32)] * 2 + [(6, 3, 16, 16)] * 3
    assert all(x.min() >= 0 and x.max() <= 1 for x in v)
    assert not torch.allclose(v[0], v[1])                                      # two different global views
    w = multicrop(px, torch.Generator().manual_seed(0), n_local=3)
    assert all(torch.equal(a, b) for a, b in zip(v, w))                        # the generator decides everything


def test_knn_top1():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    y = torch.arange(300) % 3
    bank = torch.nn.functional.normalize(centres[y] + .1 * torch.randn(300, 16, generator=g), dim=-1)
    q = torch.nn.functional.normalize(centres[y[:60]] + .1 * torch.randn(60, 16, generator=g), dim=-1)
    assert knn_top1(bank, y, q, y[:60], k=10) == 100.
    assert knn_top1(bank, y[torch.randperm(300, generator=g)], q, y[:60], k=10) < 70.   # labels shuffled: chance-like


def test_pretraining_runs_resumes_exactly_and_loads(embedded, tmp_path):
    folder = write_images(embedded, [k * 500 + j for k in range(10) for j in range(24)], tmp_path / "pre")
    kw = dict(epochs=2, batch_size=32, lr=1e-3, target=None, device="cpu", precision="fp32")
    full = pretrain_dino(str(folder), out=tmp_path / "a", **kw)
    assert full["config"]["n_train"] == 220 and len(full["epochs"]) == 2
    assert all(np.isfinite(e["loss"]) for e in full["epochs"])
    part = pretrain_dino(str(folder), out=tmp_path / "b", stop_after=1, **kw)
    assert len(part["epochs"]) == 1 and "weights" not in part
    rest = pretrain_dino(str(folder), out=tmp_path / "b", resume=True, **kw)
    a, b = load_file(full["weights"]), load_file(rest["weights"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # the resumed run is the same run
    assert [e["loss"] for e in rest["epochs"]] == [e["loss"] for e in full["epochs"]]
    ssl = load_ssl(DINO_TINY, weights=full["weights"], device="cpu")
    f = ssl.encode(np.stack([np.asarray(embedded.image(i)) for i in range(4)]))
    assert f.shape == (4, DINO_CFG["embed_dim"]) and torch.allclose(f.norm(dim=-1), torch.ones(4), atol=1e-4)
    with pytest.raises(LatteError, match="safetensors"): load_ssl(DINO_TINY, weights=str(tmp_path / "a" / "state.pt"))


def test_shipped_weights_are_the_dino_model():
    from latteclip.core import ASSETS
    f = ASSETS / f"{DINO_TINY}.safetensors"
    assert f.exists() and f.stat().st_size < 3 * 2**20
    sd = load_file(str(f)); net = tiny_vit()
    assert sd.keys() == net.state_dict().keys()                                # the backbone alone, no projection head
    log = __import__("json").loads((ASSETS / "dino.json").read_text())
    assert log["knn_target_top1"] > 55 and log["config"]["n_train"] == 44500   # measured on the clean target set


def test_real_model_paths_offline(tmp_path, monkeypatch, network_lookups):
    import transformers as T
    cfg = T.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14)
    T.Dinov2Model(cfg).save_pretrained(tmp_path / "dinov2")
    T.BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, do_center_crop=True).save_pretrained(tmp_path / "dinov2")
    ssl = load_ssl(str(tmp_path / "dinov2"), device="cpu")                    # a local folder -> transformers
    assert ssl.kind == "transformers" and ssl.size == 28
    f = ssl.encode(np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    assert f.shape == (3, 32)
    hf_offline(monkeypatch)
    with pytest.raises(LatteError, match="timm"): load_ssl("vit_small_patch16_224.dino", device="cpu")
    with pytest.raises(LatteError, match="transformers"): load_ssl("facebook/dinov2-small", device="cpu")
    assert network_lookups == []                                               # fails fast: no network attempt at all
    with pytest.raises(LatteError, match="neither"): load_ssl("no_such_model_xyz", device="cpu")
