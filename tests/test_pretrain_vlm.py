"""The project's own tiny LLaVA: the tiny CLIP's image tower converted exactly, training sequences that are what the
describer sends, a real training run that lowers the loss, resumes exactly and writes a folder the `transformers:`
describer loads, and one-sentence mistakes that write nothing."""
import json, os
import numpy as np
import pytest, torch
from safetensors.torch import load_file
from latteclip.models import load_clip
from latteclip.pixels import normalizer
from latteclip.texts import Request
from latteclip.vlm import load_vlm, TransformersDescriber
from latteclip.pretrain_vlm import (VISION_PROMPT, GROUP_VISION_PROMPT, clip_vision_tower, clip_llava, image_features,
                                    caption_logits, CaptionBatch, prompt_ids, named_class, pretrain_vlm,
                                    collage_pixels, collages, draw_groups)
from conftest import latteclip


@pytest.fixture(scope="module")
def clip():
    return load_clip(device="cpu")


def test_vision_tower_is_the_tiny_clips(clip):
    v, tower = clip.model.visual, clip_vision_tower(clip)
    assert tower.config.hidden_act == "gelu" and tower.config.layer_norm_eps == v.ln_post.eps == 1e-5
    assert (tower.config.image_size, tower.config.patch_size, tower.config.num_hidden_layers) == (32, 4, 4)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf = tower(x, output_hidden_states=True)
        v.output_tokens = True
        try: pooled, tokens = v(x)                                           # open_clip's, after ln_post
        finally: v.output_tokens = False
        embedding = clip.model.encode_image(x)
    assert hf.last_hidden_state.shape == (6, 65, 128)
    assert torch.allclose(tower.post_layernorm(hf.last_hidden_state)[:, 1:], tokens, atol=1e-5)
    assert torch.allclose(hf.pooler_output @ v.proj, embedding, atol=1e-5)


def test_training_sees_what_the_describer_sends(clip, embedded):
    model, proc = clip_llava(clip=clip)
    tok = proc.tokenizer
    d = TransformersDescriber("clip-llava", model=model, processor=proc)
    ims = [embedded.image(i) for i in (0, 700)]
    P = prompt_ids(d, 32)
    assert torch.equal(d.inputs([Request("image", ims[1], "", VISION_PROMPT)])["input_ids"][0], P)
    assert (P == model.config.image_token_index).sum() == 65 and tok.unk_token_id not in P.tolist()
    caps = ["a photo of a small red airplane.", "a dark photo of a automobile on a blue background."]
    ids, mask, labels = CaptionBatch(tok, P)(caps)
    for i, (im, c) in enumerate(zip(ims, caps)):                            # the chat template's two turns
        chat = d.conversation(Request("image", im, "", VISION_PROMPT)) + [
            {"role": "assistant", "content": [{"type": "text", "text": c}]}]
        whole = proc.apply_chat_template([chat], tokenize=True, return_dict=True, return_tensors="pt")["input_ids"][0]
        assert torch.equal(whole, ids[i][mask[i].bool()])
        learned = labels[i][labels[i] != -100].tolist()
        assert tok.decode(learned, skip_special_tokens=True) == c and learned[-1] == tok.eos_token_id
        assert tok.unk_token_id not in learned
    assert (labels[:, :len(P)] == -100).all() and (labels[mask == 0] == -100).all()
    feats = image_features(model, np.stack([np.asarray(im) for im in ims]), normalizer(clip))
    with torch.no_grad():
        cached = caption_logits(model, ids, mask, feats)
        direct = model(input_ids=ids, attention_mask=mask,
                       pixel_values=proc.image_processor(ims, return_tensors="pt")["pixel_values"]).logits
    assert torch.allclose(cached, direct, atol=1e-5)
    # a collage's row: the group prompt as the describer sends it with the collage, its caption after it
    G = prompt_ids(d, 32, GROUP_VISION_PROMPT)
    px = np.stack([np.asarray(embedded.image(i)) for i in range(8)])
    col = collages(px, np.array([[0, 1, 2, 3]]))[0]
    assert torch.equal(d.inputs([Request("group", col, "", GROUP_VISION_PROMPT)])["input_ids"][0], G)
    ids, mask, labels = CaptionBatch(tok, P, G)(caps, [False, True])
    assert torch.equal(ids[1][:len(G)], G) and torch.equal(ids[0][:len(P)], P)
    assert tok.decode(labels[1][labels[1] != -100].tolist(), skip_special_tokens=True) == caps[1]
    assert (labels[1, :len(G)] == -100).all() and mask[1].sum() == len(G) + len(labels[1][labels[1] != -100])
    shrunk = collage_pixels(px, np.array([[0, 1, 2, 3]]), 32)                  # as the processor shrinks it
    assert torch.allclose(normalizer(clip)(torch.from_numpy(shrunk).permute(0, 3, 1, 2).float() / 255.),
                          proc.image_processor([col], return_tensors="pt")["pixel_values"], atol=0.02)
    g = draw_groups(np.array([0] * 5 + [1] * 3), 4, np.random.default_rng(0))
    assert g.shape == (4, 4) and (g[::2] < 5).all() and (g[1::2] >= 5).all() and len(set(g[0])) == 4
    assert "{name}" not in VISION_PROMPT + GROUP_VISION_PROMPT and "cat" not in VISION_PROMPT
    assert named_class("a dark photo of a small cat on a dog background.", embedded.classes) == "cat"
    assert named_class("a photo of a catamaran.", embedded.classes) is None


def test_training_lowers_the_loss_resumes_exactly_and_loads_as_a_describer(small_tree, embedded, tmp_path):
    kw = dict(epochs=2, batch_size=16, lr=2e-3, val_per_class=4, device="cpu", precision="fp32")
    full = pretrain_vlm(str(small_tree), out=tmp_path / "a", **kw)
    assert full["config"]["n_train"] == 48 and full["config"]["n_val"] == 12 and len(full["epochs"]) == 2
    assert full["config"]["n_groups"] == 12 and all("val_group_caption_top1" in e for e in full["epochs"])
    assert full["epochs"][1]["loss"] < full["epochs"][0]["loss"]
    assert [e["label"] for e in full["examples"]][:4] == ["airplane", "automobile", "bird", "airplane"]   # one a class first
    assert json.loads((tmp_path / "a" / "vlm.json").read_text())["epochs"] == full["epochs"]
    part = pretrain_vlm(str(small_tree), out=tmp_path / "b", stop_after=1, **kw)
    assert len(part["epochs"]) == 1 and "model" not in part and not (tmp_path / "b" / "model.safetensors").exists()
    rest = pretrain_vlm(str(small_tree), out=tmp_path / "b", resume=True, **kw)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)    # the resumed run is the same run
    assert [e["loss"] for e in rest["epochs"]] == [e["loss"] for e in full["epochs"]]
    import transformers
    model, proc = load_vlm(str(tmp_path / "a"), device="cpu")
    auto = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "a")
    assert type(model).__name__ == type(auto).__name__ == "LlavaForConditionalGeneration"
    tower = clip_vision_tower().state_dict()                                   # frozen: the tiny CLIP's, unchanged
    assert all(torch.equal(model.model.vision_tower.state_dict()[k], w) for k, w in tower.items())
    from latteclip.report import make_describer
    d = make_describer(f"transformers:{tmp_path / 'a'}", batch_size=2)         # what --describer builds
    texts = d.describe([Request("image", embedded.image(i), "", VISION_PROMPT) for i in (0, 900)])
    assert len(texts) == 2 and all(t.strip() for t in texts)


def test_without_collages(small_tree, tmp_path):
    log = pretrain_vlm(str(small_tree), out=tmp_path, epochs=1, batch_size=16, val_per_class=4, device="cpu",
                       precision="fp32", groups=0)
    assert log["config"]["n_groups"] == 0 and "val_group_caption_top1" not in log["epochs"][0]
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--data", "nowhere"), ("--val-per-class", "20"),
                                        ("--groups", "-1"), ("--groups", "nan")])
def test_a_bad_flag_is_one_sentence_and_writes_nothing(small_tree, tmp_path, flag, value):
    argv = {"--data": str(small_tree), "--out": "o", "--epochs": "1", flag: value}
    r = latteclip("pretrain-vlm", *[x for kv in argv.items() for x in kv], cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and flag in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not os.listdir(tmp_path)


def test_the_shipped_describer_loads_by_name_and_names_what_it_sees(embedded):
    from latteclip.core import asset
    from latteclip.report import make_describer
    log = json.loads(asset("vlm.json").read_text())                         # the log of the run that made it
    assert log["config"]["n_train"] == 44500 and log["config"]["prompt"] == VISION_PROMPT
    assert log["config"]["group_prompt"] == GROUP_VISION_PROMPT and log["epochs"][-1]["val_caption_top1"] > 70
    d = make_describer("transformers:latteclip-vlm")                        # what --describer builds, by name
    assert d.id.startswith("transformers:latteclip-vlm:")
    idx = list(range(7, 5000, 100))                                         # 5 clean target images a class
    texts = d.describe([Request("image", embedded.image(i), "", VISION_PROMPT) for i in idx])
    named = [named_class(t, embedded.classes) for t in texts]
    right = sum(n == embedded.classes[embedded.labels[i]] for n, i in zip(named, idx))
    assert None not in named and right >= 25, (right, texts[:5])              # measured 38 of 50; chance is 5
