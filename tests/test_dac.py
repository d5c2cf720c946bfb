"""DAC (few-shot) on the shipped tiny CLIP and real embedded images: losses by hand, training helps, errors."""
import json
import numpy as np
import pytest, torch, torch.nn.functional as F
from latteclip.core import LatteError
from latteclip.dac import DAC, DACConfig, supcon_loss, few_shot_split, fit_dac, view_features, dac_logits
from latteclip.models import load_clip, encode_images, zeroshot_classifier
from conftest import latteclip


def test_supcon_by_hand():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(6, 5, generator=g), dim=-1); y = torch.tensor([0, 0, 1, 1, 1, 2])
    tau, total, n = 0.2, 0., 0
    for i in range(6):
        others = [j for j in range(6) if j != i]
        den = sum(np.exp(float(z[i] @ z[j]) / tau) for j in others)
        pos = [j for j in others if y[j] == y[i]]
        if pos: total += np.mean([-np.log(np.exp(float(z[i] @ z[j]) / tau) / den) for j in pos]); n += 1
    assert abs(supcon_loss(z, y, tau).item() - total / n) < 1e-5


def test_dac_forward_by_hand_and_starts_as_tip_adapter():
    g = torch.Generator().manual_seed(1)
    W0 = F.normalize(torch.randn(3, 8, generator=g), dim=-1); keys = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    ky = torch.tensor([0, 0, 1, 1, 2, 2]); f = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    m = DAC(W0, keys, ky, 50., DACConfig(alpha=0.7, beta=3.0))
    want = 50. * f @ W0.T + 0.7 * torch.exp(-3.0 * (1 - f @ keys.T)) @ F.one_hot(ky, 3).float()   # Tip-Adapter
    assert torch.allclose(dac_logits(m, f), want, atol=1e-5)
    with torch.no_grad(): m.R.add_(0.1); m.adapter[2].bias.add_(0.05)
    a = F.normalize(f + m.adapter(f), dim=-1); k = F.normalize(keys + m.adapter(keys), dim=-1)
    want = 50. * f @ F.normalize(W0 + m.R, dim=-1).T + 0.7 * torch.exp(-3.0 * (1 - a @ k.T)) @ F.one_hot(ky, 3).float()
    assert torch.allclose(dac_logits(m, f), want, atol=1e-5)


def test_training_on_real_shots_lowers_the_loss(embedded):
    clip = load_clip(device="cpu"); ds = embedded.subset(range(0, 5000, 10)).with_shift("fog:5")
    shot, rest = few_shot_split(ds.labels, 10, 8, seed=0)
    assert np.array_equal(shot, few_shot_split(ds.labels, 10, 8, seed=0)[0]) and not np.array_equal(shot, few_shot_split(ds.labels, 10, 8, seed=1)[0])
    shots = ds.subset(shot); y = torch.tensor([ds.labels[i] for i in shot])
    m = DAC(zeroshot_classifier(clip, ds.classes), encode_images(clip, shots), y, clip.logit_scale, DACConfig(shots=8, steps=60))
    V = view_features(clip, shots, 2)
    ce = lambda: F.cross_entropy(m(V.reshape(-1, V.shape[-1]), torch.eye(len(shot), dtype=torch.bool).repeat(2, 1))[0], y.repeat(2)).item()
    before = ce(); losses = fit_dac(m, V, y)
    assert losses[-1] < losses[0] and ce() < before                        # it learns, on real frozen features
    f = encode_images(clip, ds.subset(rest)); yt = np.array([ds.labels[i] for i in rest])
    assert (dac_logits(m, f).argmax(1).numpy() == yt).mean() > 0.30            # above the 10-class chance level by far


def test_dac_cli_and_errors(tmp_path, small_tree):
    r = latteclip("run", "--method", "dac", "--shots", "99", "--data", str(small_tree), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--shots 99 is more than some classes hold" in r.stderr and "Traceback" not in r.stderr
    r = latteclip("run", "--method", "dac", "--shots", "0", "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "--shots must be at least 1" in r.stderr
    r = latteclip("run", "--method", "dac", "--shots", "2", "--data", str(small_tree), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["method"] == "dac" and m["shots"] == 2 and len(m["shot_files"]) == 2 * m["n_classes"] and m["top1"] is not None
    assert not set(m["shot_files"]) & {row.split(",")[0] for row in (tmp_path / "o" / "predictions.csv").read_text().splitlines()[1:]}
