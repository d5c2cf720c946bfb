"""Real forward passes: the shipped tiny CLIP and a randomly initialised ViT-B-32."""
import numpy as np
import pytest, torch
from latteclip.core import LatteError
from latteclip.models import load_clip, encode_images, encode_texts, zeroshot_classifier, templates_for, TINY


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
