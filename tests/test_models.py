"""Real forward passes: the shipped tiny CLIP and a randomly initialised ViT-B-32."""
import numpy as np
import pytest, torch
from latteclip.core import LatteError
from latteclip.models import load_clip, encode_images, encode_texts, zeroshot_classifier, templates_for, TINY
from conftest import hf_offline


@pytest.fixture(scope="module")
def tiny():
    return load_clip(TINY, device="cpu")


def test_tiny_forward_and_zero_shot_accuracy(tiny, embedded):
    ds = embedded.subset(range(0, 5000, 10))                     # 500 real images, 50 per class
    f = encode_images(tiny, ds)
    assert f.shape == (500, 128) and torch.allclose(f.norm(dim=-1), torch.ones(500), atol=1e-4)
    W = zeroshot_classifier(tiny, ds.classes)
    acc = ((f @ W.T).argmax(1) == ds.label_tensor).float().mean().item()
    assert acc > 0.6, f"the shipped tiny CLIP should classify clean CIFAR-10 well above chance, got {acc:.2f}"
    fog = encode_images(tiny, ds.with_shift("fog:5"))
    acc_fog = ((fog @ W.T).argmax(1) == ds.label_tensor).float().mean().item()
    assert acc - acc_fog > 0.15, "the demo shift must cost zero-shot at least 15 points"


def test_text_features_are_cached_and_equal(tiny):
    a = encode_texts(tiny, ["a photo of a cat.", "a photo of a dog."])
    assert "a photo of a cat." in tiny._text_cache
    b = encode_texts(tiny, ["a photo of a dog."], cache=False)
    assert torch.allclose(a[1], b[0], atol=1e-5)
    W1, W18 = zeroshot_classifier(tiny, ["cat", "dog"]), zeroshot_classifier(tiny, ["cat", "dog"], "ensemble")
    assert W1.shape == W18.shape == (2, 128) and not torch.allclose(W1, W18)


def test_vit_b_32_random_init_forward(embedded):
    clip = load_clip("ViT-B-32", pretrained=None, device="cpu")
    assert clip.image_size == 224 and sum(p.numel() for p in clip.model.parameters()) > 80e6
    f = encode_images(clip, embedded.subset([0, 600, 1200, 1800]), batch_size=4)
    W = zeroshot_classifier(clip, embedded.classes, "ensemble")
    assert f.shape == (4, 512) and W.shape == (10, 512) and torch.isfinite(f @ W.T).all()


def test_local_checkpoint_path(tmp_path, tiny):
    from safetensors.torch import save_file
    p = tmp_path / "copy.safetensors"; save_file(tiny.model.state_dict(), str(p))
    other = load_clip(TINY, pretrained=str(p), device="cpu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(other.model.encode_image(x), tiny.model.encode_image(x), atol=1e-5)


@pytest.mark.parametrize("kw, match", [(dict(model="ViT-Q-99"), "Unknown model"),
                                       (dict(model="ViT-B-32", pretrained="no_such_tag"), "neither a checkpoint"),
                                       (dict(model=TINY, pretrained="/no/such.safetensors"), "neither a checkpoint")])
def test_bad_model_names(kw, match):
    with pytest.raises(LatteError, match=match):
        load_clip(**kw)


def test_templates():
    assert templates_for(None) == ["a photo of a {}."] and len(templates_for("ensemble")) == 18
    with pytest.raises(LatteError):
        templates_for("no placeholder")


@pytest.mark.parametrize("name", ["latteclip-tiny", "ViT-B-32"])
def test_trimmed_text_encoding_equals_open_clip(name):
    "Running the text tower only up to the longest end token gives open_clip's features and gradients."
    from latteclip.models import encode_tokens
    clip = load_clip(name, None, "cpu"); m = clip.model
    toks = clip.tokenizer(["a photo of a cat.", "a blurry photo of a small red truck on a grey background!", "dog"])
    assert int(toks.argmax(-1).max()) + 1 < toks.shape[1]                     # the trimming really trims
    with torch.no_grad(): assert torch.allclose(encode_tokens(m, toks), m.encode_text(toks, normalize=True), atol=1e-5)
    grads = []
    for fn in (lambda: encode_tokens(m, toks), lambda: m.encode_text(toks, normalize=True)):
        w = torch.randn(toks.shape[0], m.text_projection.shape[1], generator=torch.Generator().manual_seed(0))
        m.zero_grad(); (fn() * w).sum().backward()
        grads.append(m.transformer.resblocks[0].attn.in_proj_weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-5 * float(grads[1].abs().max()))


@pytest.mark.parametrize("offline_env", [True, False])
def test_pretrained_tag_without_network_fails_fast(monkeypatch, offline_env, network_lookups):
    "A pretrained tag whose weights are not cached: one sentence in seconds (not a minute of download retries)."
    import socket
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"): monkeypatch.delenv(v, raising=False)
    if offline_env: hf_offline(monkeypatch)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        try: socket.create_connection(("huggingface.co", 443), timeout=5).close(); pytest.skip("this machine reaches huggingface.co")
        except OSError: pass
    del network_lookups[:]                                                   # the reachability probe above is not ours
    models = [("ViT-B-32", "laion2b_s34b_b79k"), ("RN50", "openai")]
    for model, tag in models:
        with pytest.raises(LatteError, match=r"not in the local cache.*--pretrained PATH"):
            load_clip(model, tag, device="cpu")
    # no minute of download retries: offline no attempt at all, otherwise at most one look-up a model
    assert len(network_lookups) <= (0 if offline_env else len(models)), network_lookups


def write_model_folder(clip, folder):
    "An open_clip model folder as open_clip's own hub helper writes one: open_clip_config.json + safetensors weights."
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file
    from latteclip.models import TINY_CFG
    folder.mkdir(parents=True, exist_ok=True)
    save_config_for_hf(clip.model, folder / "open_clip_config.json", model_config=TINY_CFG)
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def test_local_dir_model_loads_and_encodes_like_the_original(tiny, embedded, tmp_path):
    "`local-dir:DIR` is a model name: the same features and text features as the model it was written from."
    d = write_model_folder(tiny, tmp_path / "m")
    clip = load_clip(f"local-dir:{d}", device="cpu")
    ds = embedded.subset(range(0, 5000, 250))
    assert torch.allclose(encode_images(clip, ds), encode_images(tiny, ds), atol=1e-6)
    assert torch.allclose(zeroshot_classifier(clip, ds.classes), zeroshot_classifier(tiny, ds.classes), atol=1e-6)
    assert clip.pretrained == str(d / "open_clip_model.safetensors")          # the cache ids follow the weights file
    for bad, words in [(dict(model=f"local-dir:{tmp_path / 'none'}"), "is not an open_clip model folder"),
                       (dict(model=f"local-dir:{d}", pretrained="x.safetensors"), "--pretrained does not apply"),
                       (dict(model="hf-hub:no-slash"), "write hf-hub:org/repo")]:
        with pytest.raises(LatteError, match=words): load_clip(device="cpu", **bad)


HUB = r'''
import sys, torch
from latteclip.models import load_clip, encode_images, TINY
from latteclip.data import embedded_target
from latteclip.core import LatteError
ds = embedded_target().subset(range(0, 5000, 500))
a, b = load_clip(TINY, device="cpu"), load_clip("hf-hub:latteclip/tiny", device="cpu")
print("same", torch.allclose(encode_images(a, ds), encode_images(b, ds), atol=1e-6))
try: load_clip("hf-hub:latteclip/not-cached", device="cpu")
except LatteError as e: print("refused", e)
'''


def test_hf_hub_model_from_the_cache_offline(tiny, tmp_path):
    "`hf-hub:org/repo` loads from the Hugging Face cache with HF_HUB_OFFLINE=1; an uncached one is one sentence."
    import subprocess, sys, os
    snap = tmp_path / "hub" / "models--latteclip--tiny" / "snapshots" / "0"
    write_model_folder(tiny, snap)
    (tmp_path / "hub" / "models--latteclip--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--latteclip--tiny" / "refs" / "main").write_text("0")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "LATTECLIP_QUIET": "1"}
    r = subprocess.run([sys.executable, "-c", HUB], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "same True" in r.stdout, r.stdout
    assert "refused The model hf-hub:latteclip/not-cached is not in the local cache and HF_HUB_OFFLINE is set" in r.stdout
