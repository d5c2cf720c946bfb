"""NoLA's class descriptions: tiny causal LMs of real families loaded by path (real `generate`), the cache, the shipped file."""
import json
import pytest, torch
from latteclip.core import LatteError
from latteclip.texts import TextCache
from latteclip.vlm import CIFAR10
from latteclip.attributes import ADJECTIVES, SIZES, COLOURS
from latteclip.descriptors import (LLMDescriber, tiny_llm, class_descriptors, descriptors_from_captions, load_descriptors,
                                   read_descriptors, save_descriptors, descriptor_classifier, Descriptors)
from conftest import hf_offline

CLASSES = ["cat", "ship", "frog"]


class Counting(LLMDescriber):
    "Counts its `describe` calls and the requests they carried."
    calls = seen = 0
    def describe(self, items):
        self.calls += 1; self.seen += len(items)
        return super().describe(items)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_tiny_llm_by_path_generates_and_caches(family, tmp_path):
    folder = tiny_llm(family, tmp_path / family)
    d = Counting(str(folder), n=3, batch_size=4, max_new_tokens=6, device="cpu")
    assert d._model is None and d.id.startswith(f"llm:{folder}:")          # nothing loaded before a text is needed
    path = tmp_path / "texts.jsonl"
    r = class_descriptors(CLASSES, d, TextCache(path))
    assert type(d.model).__name__ == {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[family]
    assert d.tokenizer.padding_side == "left"
    assert d.text("cat").startswith("<s>[INST] ") if family == "llama" else d.text("cat").endswith("sentence.\n")
    assert isinstance(r, Descriptors) and list(r) == CLASSES and all(len(v) == 3 for v in r.values())
    assert all(isinstance(s, str) and s for v in r.values() for s in v)
    assert (r.calls, d.calls, d.seen, r.source) == (9, 3, 9, d.id)          # 9 requests in batches of 4
    ids = d.generate([("cat", 0), ("ship", 1)])
    assert all(1 <= len(i) <= 6 for i in ids)                               # at most max_new_tokens new tokens
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(recs) == 9 and len({x["key"] for x in recs}) == 9 and {x["describer"] for x in recs} == {d.id}
    assert sorted((x["name"], x["index"]) for x in recs) == sorted((c, j) for c in CLASSES for j in range(3))
    warm = Counting(str(folder), n=3, batch_size=4, max_new_tokens=6, device="cpu")
    r2 = class_descriptors(CLASSES, warm, TextCache(path))
    assert (r2.calls, warm.calls) == (0, 0) and dict(r2) == dict(r) and warm._model is None   # no call, no model loaded
    more = class_descriptors(CLASSES, warm, TextCache(path), n=4)          # a larger n: only the new indices
    assert more.calls == 3 and [v[:3] for v in more.values()] == list(r.values()) and len(TextCache(path)) == 12


def test_sampling_is_seeded_and_varied():
    m, t = tiny_llm("llama")
    items = [(c, j) for c in CLASSES for j in range(3)]
    d = LLMDescriber("tiny", max_new_tokens=8, model=m, tokenizer=t, device="cpu")
    texts = d.describe(items)
    assert d.describe(items) == texts                                      # the same seed: the same texts
    assert all(len(set(texts[3 * k:3 * k + 3])) > 1 for k in range(3))      # sampled: a class's texts differ
    other = LLMDescriber("tiny", max_new_tokens=8, model=m, tokenizer=t, seed=1)
    assert other.id != d.id and other.describe(items) != texts
    assert LLMDescriber("tiny", prompt="What does a {name} look like?", model=m, tokenizer=t).id != d.id


def test_empty_answer_falls_back_to_template():
    m, t = tiny_llm("gpt2")
    eos = t.eos_token_id
    def only_eos(module, args, out): out[..., eos] = 1e4; return out   # the real model, forced to stop at once
    m.lm_head.register_forward_hook(only_eos)
    d = LLMDescriber("tiny-gpt2", n=2, max_new_tokens=5, model=m, tokenizer=t)
    r = class_descriptors(["cat", "dog"], d)                               # no cache
    assert r == {"cat": ["a photo of a cat."] * 2, "dog": ["a photo of a dog."] * 2} and (r.calls, r.fallbacks) == (4, 4)


def test_missing_models_fail_fast_in_one_sentence(tmp_path, monkeypatch, network_lookups):
    hf_offline(monkeypatch)
    with pytest.raises(LatteError, match="does not exist"):
        LLMDescriber(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(LatteError, match="HF_HUB_OFFLINE"):
        LLMDescriber("nobody-here/no-such-llm-for-latteclip").load()
    with pytest.raises(LatteError, match="HF_HUB_OFFLINE"):
        load_descriptors("nobody-here/no-such-llm-for-latteclip", CLASSES, cache=tmp_path / "t.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatteError, match="does not hold a causal language model"):
        LLMDescriber(str(tmp_path / "empty")).load()
    assert network_lookups == []                                           # offline: not one network attempt, so no retries
    with pytest.raises(LatteError, match="at least 1"): LLMDescriber("x", n=0)
    with pytest.raises(LatteError, match="name"): LLMDescriber("x", prompt="Describe it.")
    with pytest.raises(LatteError, match="need the class names"): load_descriptors(str(tiny_llm("gpt2", tmp_path / "g")))
    with pytest.raises(LatteError, match="No tiny language model"): tiny_llm("bert")


def test_shipped_file_in_the_tiny_clip_vocabulary():
    d = load_descriptors("shipped")
    assert sorted(d) == sorted(CIFAR10) and all(len(v) >= 4 and len(set(v)) == len(v) for v in d.values())
    vocab = {"a", "photo", "of", "on", "background"} | set(ADJECTIVES) | set(SIZES) | set(COLOURS) | set(CIFAR10)
    for c, v in d.items():
        assert f"a photo of a {c}." in v
        for s in v:
            assert s.endswith(".") and c in s.rstrip(".").split()
            assert set(s.rstrip(".").split()) <= vocab, s
    sub = load_descriptors("shipped", ["ship", "cat"])
    assert list(sub) == ["ship", "cat"] and sub["cat"] == d["cat"]
    with pytest.raises(LatteError, match="'pangolin'.*JSON file"):
        load_descriptors("shipped", ["cat", "pangolin"])


def test_descriptor_classifier_unit_rows():
    from latteclip.models import load_clip, zeroshot_classifier
    clip = load_clip(device="cpu")
    d = load_descriptors("shipped", CIFAR10)
    T = descriptor_classifier(clip, d, CIFAR10)
    assert T.shape == (10, 128) and torch.allclose(T.norm(dim=-1), torch.ones(10), atol=1e-5)
    W = zeroshot_classifier(clip, CIFAR10)
    assert (T * W).sum(-1).min() > 0.5 and not torch.allclose(T, W)       # near the template, not the same
    one = descriptor_classifier(clip, {c: ["a photo of a " + c + "."] for c in CIFAR10}, CIFAR10)
    assert torch.allclose(one, W, atol=1e-5)                               # one description: the template classifier
    with pytest.raises(LatteError, match="'truck'"): descriptor_classifier(clip, {c: d[c] for c in CIFAR10[:9]}, CIFAR10)


def test_json_files(tmp_path):
    p = save_descriptors({"sea lion": ["a photo of a sea lion."], "cat": ["a cat.", " a small cat. "]}, tmp_path / "d.json", "by hand")
    d = load_descriptors(str(p), ["Sea_Lion", "cat"])
    assert d == {"Sea_Lion": ["a photo of a sea lion."], "cat": ["a cat.", "a small cat."]} and d.source == "by hand" and d.calls == 0
    with pytest.raises(LatteError, match="'dog'"): load_descriptors(str(p), ["cat", "dog"])
    with pytest.raises(LatteError, match="does not exist"): load_descriptors(str(tmp_path / "none.json"), ["cat"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LatteError, match="not valid JSON"): read_descriptors(tmp_path / "bad.json")
    (tmp_path / "shape.json").write_text(json.dumps({"classes": {"cat": []}}))
    with pytest.raises(LatteError, match="needs the shape"): read_descriptors(tmp_path / "shape.json")


def test_descriptors_from_captions_small_real_folder(small_tree, embedded):
    d = descriptors_from_captions(small_tree, n=4)
    assert list(d) == ["airplane", "automobile", "bird"] and all(len(v) == 4 for v in d.values())
    assert all(v[0] == f"a photo of a {c}." and all(s.startswith("a photo of a ") for s in v) and len(set(v)) == 4 for c, v in d.items())
    assert descriptors_from_captions(small_tree, n=4) == d                 # deterministic
    sub = embedded.subset([k * 500 + j for k in range(3) for j in range(20)])   # the same images as an ImageSet
    assert descriptors_from_captions(sub, n=4) == d
    assert all(len(v) == 2 for v in descriptors_from_captions(small_tree, n=2, per_class=5).values())
    with pytest.raises(LatteError, match="labelled"): descriptors_from_captions(sub.unlabeled())
