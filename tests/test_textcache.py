"""`--text-cache` pointed at a file that is not a latteclip text cache: refused with one sentence, the file left
byte-identical (bytes and mtime); a real cache with a torn last record is still repaired, a valid one still used."""
import json, os, warnings
from pathlib import Path
import pytest
from conftest import latteclip
from latteclip.core import LatteError
from latteclip.texts import TextCache

REC = '{"key": "a", "text": "a photo of a cat."}\n'
NOT_CACHES = {                                                   # name -> bytes: none of them is a text cache
    "not utf8.jsonl": "un café\n".encode("latin-1"),
    "binary.bin": bytes(range(256)) * 8,
    "zeros.bin": bytes(64),
    "one object.json": json.dumps({"key": "a", "text": "x", "more": [1, 2]}, indent=2).encode(),
    "one line object.json": b'{"model": "ViT-B-32", "lr": 0.001}\n',
    "array.json": b'[{"key": "a", "text": "x"}, {"key": "b", "text": "y"}]\n',
    "table.csv": b"key,text\na,a photo of a cat.\nb,a photo of a dog.\n",
    "other records.jsonl": b'{"id": "a", "caption": "a cat"}\n{"id": "b", "caption": "a dog"}\n',
    "no text.jsonl": b'{"key": "a"}\n{"key": "b"}\n',
    "text not a string.jsonl": b'{"key": "a", "text": 3}\n',
    "notes.txt": b"my notes\nbuy milk\nthe last line has no newline",
    "one line no newline.txt": b"just one line",
    "spaces.txt": b"   ",
    "other record last.jsonl": b'{"id": "a", "caption": "a cat"}',       # complete JSON, someone else's, no newline
    "ours then theirs.jsonl": (REC + '{"key": "b", "value": 1}').encode(),  # a foreign last line after a record
    "ours then notes.jsonl": (REC + "and a note").encode(),
    "ours then bad line.jsonl": (REC + "not json\n" + REC).encode(),
}


def snapshot(p:Path)->tuple:
    "What must not change: the bytes (or a folder's names) and the mtime."
    st = os.stat(p)
    return (sorted(os.listdir(p)) if p.is_dir() else p.read_bytes()), st.st_mtime_ns, st.st_size


def one_sentence(msg:str, p:Path):
    assert str(p) in msg and "pass a new path" in msg, msg
    assert "\n" not in msg and msg.endswith("."), msg


@pytest.fixture
def bad_files(tmp_path):
    files = {}
    for name, data in NOT_CACHES.items():
        files[name] = tmp_path / name
        files[name].write_bytes(data)
    folder = tmp_path / "a folder"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me\n")
    files["a folder"] = folder
    old = 1_000_000_000                                                      # an old mtime: any write would change it
    for p in files.values(): os.utime(p, (old, old))
    return files


def test_every_kind_of_other_file_is_refused_unchanged(bad_files):
    for name, p in bad_files.items():
        before = snapshot(p)
        with warnings.catch_warnings():
            warnings.simplefilter("error")                                   # no "incomplete record" repair either
            with pytest.raises(LatteError) as e: TextCache(p)
        one_sentence(str(e.value), p)
        assert snapshot(p) == before, name
        assert sorted(x.name for x in p.parent.iterdir()) == sorted(bad_files), "nothing written beside it"


def test_the_reason_is_named(bad_files):
    def msg(name):
        with pytest.raises(LatteError) as e: TextCache(bad_files[name])
        return str(e.value)
    assert "is not a latteclip text cache (it is a folder)" in msg("a folder")
    assert "line 1 is not UTF-8 text" in msg("not utf8.jsonl")
    assert 'line 1 is not a JSON object with the string fields "key" and "text"' in msg("table.csv")
    last = "line 1 is the last, with no newline, and not the start of a record"
    assert last in msg("one line no newline.txt")
    assert "damaged at line 2" in msg("ours then theirs.jsonl")
    assert "damaged at line 2" in msg("ours then bad line.jsonl")


def test_part_files_go_through_the_same_check(tmp_path):
    c = TextCache(tmp_path / "texts.jsonl")
    c.add("a", "text a", kind="image")
    part0 = c.part(0).path
    assert part0.name == "texts.part0.jsonl" and not part0.exists()
    part0.write_text("key,text\na,x\n")                                     # someone's file under a part's name
    mine = tmp_path / "texts.partial.jsonl"                       # not a name `part` gives: never read nor deleted
    mine.write_text("my own notes, no newline")
    before, mine_before = snapshot(part0), snapshot(mine)
    with pytest.raises(LatteError, match="is not a latteclip text cache"): c.part(0)
    with pytest.raises(LatteError, match="texts.part0.jsonl is not a latteclip text cache"):
        c.merge_parts()
    assert snapshot(part0) == before and snapshot(mine) == mine_before
    part0.unlink()
    p1 = c.part(1)
    p1.add("b", "text b", kind="image")
    assert c.merge_parts() == 1 and not p1.path.exists() and snapshot(mine) == mine_before
    assert TextCache(tmp_path / "texts.jsonl").texts == {"a": "text a", "b": "text b"}


def test_empty_missing_and_blank_files_are_new_caches(tmp_path):
    missing = tmp_path / "sub" / "new.jsonl"
    c = TextCache(missing)
    assert len(c) == 0 and not missing.exists()
    c.add("k", "a text", kind="image")
    assert TextCache(missing).texts == {"k": "a text"}
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert len(TextCache(empty)) == 0 and empty.read_bytes() == b""
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n" + REC + "\n  \n")
    assert TextCache(blank).texts == {"a": "a photo of a cat."} and blank.read_text() == "\n" + REC + "\n  \n"


def test_torn_last_record_is_cut_in_place_and_nothing_else(tmp_path):
    p = tmp_path / "texts.jsonl"
    good = (REC + '{"key": "b", "text": "un café au lait."}\n').encode()
    for torn in [b'{', b'{"key": "c', b'{"key": "c", "te', '{"key": "c", "text": "caf'.encode() + "é".encode()[:1],
                 b'{"key": "c", "text": "complete but for its newline"}']:
        p.write_bytes(good + torn)
        ino = os.stat(p).st_ino
        with pytest.warns(UserWarning, match="incomplete record \\(line 3"): c = TextCache(p)
        assert p.read_bytes() == good and os.stat(p).st_ino == ino, torn
        assert c.texts == {"a": "a photo of a cat.", "b": "un café au lait."}
    p.write_bytes(b'{"key": "c", "te')                                     # killed in its very first record
    with pytest.warns(UserWarning, match="line 1"): assert len(TextCache(p)) == 0
    assert p.read_bytes() == b""


def test_texts_with_unicode_line_separators_survive_a_reload(tmp_path):
    "JSON leaves U+2028, U+2029 and U+0085 unescaped: a record is one line up to its \\n, not where splitlines splits."
    c = TextCache(tmp_path / "t.jsonl")
    c.add("a", "one\u2028two\u2029three\x85four", kind="image")
    assert TextCache(tmp_path / "t.jsonl").texts == {"a": "one\u2028two\u2029three\x85four"}


def run(small_tree, cache, out):
    return latteclip("run", "--method", "latteclip", "--data", small_tree, "--epochs", "1", "--batch-size", "20",
                     "--text-cache", cache, "--out", out, timeout=300)


@pytest.mark.parametrize("name", ["notes.txt", "array.json", "a folder", "binary.bin"])
def test_cli_refuses_them_unchanged(small_tree, bad_files, tmp_path, name):
    p = bad_files[name]
    before = snapshot(p)
    r = run(small_tree, p, tmp_path / "o")
    assert r.returncode == 2, r.stderr[-1500:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-1500:]
    assert r.stderr.startswith("latteclip: error: ") and "is not a latteclip text cache" in r.stderr, r.stderr
    one_sentence(r.stderr.strip().removeprefix("latteclip: error: "), p)
    assert snapshot(p) == before
    assert not (tmp_path / "o" / "metrics.json").exists() and not (tmp_path / "o" / "checkpoints").exists()


def test_cli_valid_cache_is_used_and_torn_record_repaired(small_tree, tmp_path):
    cache = tmp_path / "texts.jsonl"
    r = run(small_tree, cache, tmp_path / "cold")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "cold" / "metrics.json").read_text())["text_calls"] > 0
    made = cache.read_bytes()
    assert made.endswith(b"\n") and all(json.loads(l)["text"] for l in made.splitlines())
    r = run(small_tree, cache, tmp_path / "warm")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "warm" / "metrics.json").read_text())["text_calls"] == 0
    assert cache.read_bytes() == made                                       # read, nothing rewritten
    with open(cache, "ab") as fh: fh.write(b'{"key": "0123456789abcdef01234567", "text": "a blurry ph')
    r = run(small_tree, cache, tmp_path / "torn")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "torn" / "metrics.json").read_text())["text_calls"] == 0
    assert cache.read_bytes() == made                                       # only the torn record was cut


def test_a_describer_that_reads_the_name_is_cached_per_name(embedded, tmp_path):
    "The prompts name no class; the offline describer writes the request's name, so its cache keys include it."
    from latteclip.texts import Request, AttributeDescriber, IMAGE_PROMPT, describe_all
    assert "{name}" not in IMAGE_PROMPT and AttributeDescriber.reads_name
    cache, prompt = TextCache(tmp_path / "t.jsonl"), IMAGE_PROMPT.format(name="cat", domain="")
    req = lambda name: Request("image", embedded.image(3), name, prompt, embedded.keys[3])
    (cat,), made = describe_all(AttributeDescriber(), [req("cat")], cache, "image")
    (dog,), again = describe_all(AttributeDescriber(), [req("dog")], cache, "image")
    assert made == again == 1 and "cat" in cat and "dog" in dog and "cat" not in dog
    (cat2,), none = describe_all(AttributeDescriber(), [req("cat")], cache, "image")
    assert none == 0 and cat2 == cat
    # a describer that looks only at the picture keys without the name: a new pseudo-label reuses its text
    assert req("cat").cache_key("m") == req("dog").cache_key("m") != req("dog").cache_key("m", with_name=True)
