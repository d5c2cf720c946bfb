"""The `transformers` describer on tiny randomly initialised models of real families: real `generate` calls, no mocks."""
import json, subprocess, sys
import pytest, torch
from latteclip.core import LatteError
from latteclip.texts import Request, collage, IMAGE_PROMPT, GROUP_PROMPT, TextCache, describe_all
from latteclip.vlm import TransformersDescriber, tiny_vlm


@pytest.fixture(scope="module")
def reqs(embedded):
    "Two real images and a collage of four real birds."
    def one(i):
        name = embedded.classes[embedded.labels[i]]
        return Request("image", embedded.image(i), name, IMAGE_PROMPT.format(name=name, domain=""), embedded.keys[i])
    birds = [i for i in range(len(embedded)) if embedded.classes[embedded.labels[i]] == "bird"][:4]
    group = Request("group", collage([embedded.image(i) for i in birds]), "bird", GROUP_PROMPT.format(name="bird", domain=""))
    return [one(0), one(1000), group]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vlm") / "tiny-llava"
    tiny_vlm("llava", save_to=path)
    return path


class Counting(TransformersDescriber):
    "Counts its `describe` calls and the requests they carried."
    calls = seen = 0
    def describe(self, requests):
        self.calls += 1; self.seen += len(requests)
        return super().describe(requests)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_tiny_model_by_path_describes_greedily_within_budget(family, llava_dir, reqs, tmp_path):
    path = llava_dir if family == "llava" else tmp_path / "tiny-qwen2-vl"
    if family != "llava": tiny_vlm(family, save_to=path)
    d = TransformersDescriber(str(path), batch_size=2, max_new_tokens=5, device="cpu")
    from latteclip.hf import folder_id
    assert d._model is None and d.id == f"transformers:{path}:5:{folder_id(str(path))}"   # nothing loaded yet
    texts = d.describe(reqs)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert type(d.model).__name__ == {"llava": "LlavaForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration"}[family]
    assert d.processor.tokenizer.padding_side == "left"
    assert d.describe(reqs) == texts                                       # greedy: deterministic
    ids = d.generate(reqs)
    assert all(1 <= len(i) <= 5 for i in ids)                              # at most max_new_tokens new tokens
    assert [t.strip() for t in d.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)] == texts
    assert [d.describe([r])[0] for r in reqs] == texts                     # left padding: batching changes nothing


def test_text_cache_second_run_makes_no_call(llava_dir, reqs, tmp_path):
    path = tmp_path / "texts.jsonl"
    d = Counting(str(llava_dir), batch_size=2, max_new_tokens=5, device="cpu")
    texts, n = describe_all(d, reqs + reqs[:1], TextCache(path))          # 4 requests, 3 distinct
    assert (d.calls, d.seen, n) == (2, 3, 3) and texts[3] == texts[0]
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(recs) == 3 and len({r["key"] for r in recs}) == 3 and {r["describer"] for r in recs} == {d.id}
    assert sorted(r["kind"] for r in recs) == ["group", "image", "image"]
    warm = Counting(str(llava_dir), batch_size=2, max_new_tokens=5, device="cpu")
    texts2, n2 = describe_all(warm, reqs + reqs[:1], TextCache(path))
    assert (warm.calls, n2) == (0, 0) and texts2 == texts and warm._model is None    # no call, no model loaded
    other = Counting(str(llava_dir), batch_size=4, max_new_tokens=3, device="cpu")   # another id: its own texts
    describe_all(other, reqs, TextCache(path))
    assert other.calls == 1 and len(TextCache(path)) == 6


def test_passed_model_and_processor(reqs):
    model, proc = tiny_vlm("llava", seed=1)
    d = TransformersDescriber("my-tiny-llava", max_new_tokens=4, model=model, processor=proc)
    assert d.id == "transformers:my-tiny-llava:4" and len(d.describe(reqs[:2])) == 2 and d.describe([]) == []


def test_user_mistakes_are_one_sentence(tmp_path, reqs):
    with pytest.raises(LatteError, match="local folder"):                  # unknown id: fails in seconds, no retries
        TransformersDescriber("nobody-here/no-such-vlm-for-latteclip").describe(reqs[:1])
    with pytest.raises(LatteError, match="does not exist"):
        TransformersDescriber(str(tmp_path / "no" / "such" / "folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatteError, match="does not hold"):
        TransformersDescriber(str(tmp_path / "empty")).load()
    with pytest.raises(LatteError, match="dtype"):
        TransformersDescriber("x/y", dtype="float8")
    with pytest.raises(LatteError, match="family"):
        tiny_vlm("gpt2")
    if not torch.cuda.is_available():
        with pytest.raises(LatteError, match="4-bit"):
            TransformersDescriber("llava-hf/llava-v1.6-mistral-7b-hf", load_in_4bit=True)


def test_import_does_not_load_transformers():
    code = "import sys, latteclip.vlm; assert 'transformers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_generation_flags_reach_the_describers(llava_dir, small_tree, tmp_path):
    from latteclip.report import make_describer
    from latteclip.models import load_clip
    from latteclip.nola import class_embeddings
    from latteclip.descriptors import tiny_llm
    from conftest import latteclip
    d = make_describer(f"transformers:{llava_dir}", dtype="bfloat16", batch_size=2, device_map=None)
    assert (d.dtype, d.batch_size, d.load_in_4bit) == ("bfloat16", 2, False)
    assert next(d.load().model.parameters()).dtype == torch.bfloat16           # the real model, loaded in that dtype
    llm = tiny_llm("llama", tmp_path / "llm")                                 # NoLA's language model gets them too
    T, desc = class_embeddings(load_clip(device="cpu"), ["cat", "ship"], str(llm), tmp_path / "c.jsonl", dtype="bfloat16", batch_size=3)
    assert T.shape == (2, 128) and desc.calls == 16 and all(len(v) == 8 for v in desc.values())
    bad = latteclip("run", "--data", small_tree, "--describer", f"transformers:{llava_dir}", "--gen-batch-size", "0", "--out", tmp_path / "b")
    assert bad.returncode == 2 and "batch size must be at least 1" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b" / "metrics.json").exists()
    if not torch.cuda.is_available():                                         # 4-bit needs CUDA: said before any work
        q = latteclip("compare", "--methods", "zeroshot,latteclip", "--data", small_tree, "--describer", f"transformers:{llava_dir}",
                      "--gen-4bit", "--out", tmp_path / "q")
        assert q.returncode == 2 and "4-bit" in q.stderr and not (tmp_path / "q" / "zeroshot").exists()


def test_describer_ids_follow_the_model_files_and_the_words(llava_dir, tmp_path):
    "The cache names texts by the describer id: edited weights or edited words must give another id (no stale texts)."
    import json, shutil, subprocess, sys
    from conftest import ROOT
    a = TransformersDescriber(str(llava_dir), max_new_tokens=5).id
    copy = tmp_path / "copy"; shutil.copytree(llava_dir, copy)
    same = TransformersDescriber(str(copy), max_new_tokens=5).id
    assert same.rsplit(":", 1)[1] == a.rsplit(":", 1)[1]                    # the same files: the same content
    cfg = json.loads((copy / "config.json").read_text()); cfg["latteclip_edited"] = 1
    (copy / "config.json").write_text(json.dumps(cfg))
    assert TransformersDescriber(str(copy), max_new_tokens=5).id != same
    pkg = tmp_path / "pkg"; shutil.copytree(ROOT / "latteclip", pkg / "latteclip",
                                              ignore=shutil.ignore_patterns("__pycache__"))
    f = pkg / "latteclip" / "attributes.py"
    assert '"blurry"' in f.read_text()
    def attr_id(where):
        return subprocess.run([sys.executable, "-c", "from latteclip.texts import AttributeDescriber as A; print(A().id)"],
                              cwd=where, capture_output=True, text=True, check=True).stdout.strip()
    before = attr_id(pkg)
    f.write_text(f.read_text().replace('"blurry"', '"hazy"'))                 # one word of the offline describer
    assert attr_id(pkg) != before and before.startswith("attributes-")
