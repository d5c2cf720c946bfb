"""Every sub-command driven with a table of bad values for its flags (issue 18): each mistake is exit 2, one line on
stderr that names the flag, no traceback, no file written anywhere (the working folder, the data, the inputs), and no
hang. The command lines run through the real entry point in one child process (tests/flag_driver.py), on real files."""
import json, math, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from conftest import ROOT

ASSETS = ROOT / "latteclip" / "assets"


def read_only(p:Path):
    "Make `p` unwritable, for root too (the immutable attribute) when the tests run as root."
    if os.geteuid() == 0: subprocess.run(["chattr", "+i", str(p)], check=True)
    else: p.chmod(0o444)


def writable(p:Path):
    if os.geteuid() == 0: subprocess.run(["chattr", "-i", str(p)], check=False)
    else: p.chmod(0o644)


def inputs(tmp:Path, small_tree:Path)->dict:
    "The odd files the table points flags at, written for real."
    d = tmp / "inputs"; d.mkdir()
    (d / "notes.txt").write_text("these are my notes\n" * 50)
    (d / "folder").mkdir()
    (d / "empty.safetensors").write_bytes(b"")
    (d / "not json.json").write_text("{oops")
    (d / "list.json").write_text("[1, 2]")
    (d / "config.json").write_text(json.dumps({"method": "zeroshot", "settings": {"magic": 1}}))
    (d / "a file").write_text("x")
    jl = {"numeric path": '{"path": 7, "text": "a photo"}\n',
          "list class": '{"path": "airplane/img 0000.jpg", "text": "a photo", "class": ["a", "b"]}\n',
          "latin1": b'{"path": "airplane/img 0000.jpg", "text": "caf\xe9"}\n',
          "not an object": '["airplane/img 0000.jpg", "a photo"]\n',
          "empty": ""}
    for name, body in jl.items():
        (d / f"{name}.jsonl").write_bytes(body if isinstance(body, bytes) else body.encode())
    (d / "texts dir.jsonl").mkdir()
    recs = [dict(path=f"/elsewhere/{c}/img {i:04d}.jpg", text=f"a photo of a {c}") for c in ("airplane", "automobile")
            for i in range(20)]                                   # names repeat across class folders, as in CIFAR
    (d / "cifar names.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))   # bird: no record at all
    ro = d / "read-only.jsonl"; ro.write_text("")
    read_only(ro)
    (d / "cache dir").mkdir()
    (d / "descriptors.json").write_text(json.dumps({"airplane": "not a list"}))
    (d / "exported").mkdir(); (d / "exported" / "x.txt").write_text("mine")
    return d


def table(d:Path, tree:Path)->list:
    "(the flag the mistake is in, the command line)."
    run = ["run", "--data", str(tree), "--out", "o"]
    zs = run + ["--method", "zeroshot"]
    lc = run + ["--method", "latteclip", "--epochs", "1"]             # quick, should a mistake be missed
    dac, ueo = run + ["--method", "dac", "--steps", "2"], run + ["--method", "ueo", "--epochs", "1"]
    nola = run + ["--method", "nola", "--epochs", "1", "--head-epochs", "1"]
    cases = [
        # every run's own flags
        ("--seed", zs + ["--seed", "-1"]), ("--seed", zs + ["--seed", str(2**64)]), ("--seed", zs + ["--seed", "one"]),
        ("--seed", lc + ["--seed", "1.5"]),
        ("--device", zs + ["--device", "gpu0"]), ("--device", zs + ["--device", ""]),
        ("--device", zs + ["--device", "cpu:x"]),
        ("--model", zs + ["--model", ""]), ("--model", zs + ["--model", "ViT-Q-99"]),
        ("--model", zs + ["--model", f"local-dir:{d / 'folder'}"]),
        ("--pretrained", zs + ["--model", "ViT-B-32", "--pretrained", str(d / "notes.txt")]),
        ("--pretrained", zs + ["--model", "ViT-B-32", "--pretrained", str(d / "folder")]),
        ("--pretrained", zs + ["--model", "ViT-B-32", "--pretrained", str(d / "empty.safetensors")]),
        ("--pretrained", zs + ["--model", "ViT-B-32", "--pretrained", str(ASSETS / "latteclip-tiny.safetensors")]),
        ("--pretrained", zs + ["--pretrained", "laion2b_s34b_b79k"]),
        ("--data", zs[:1] + ["--method", "zeroshot", "--data", str(d / "nowhere"), "--out", "o"]),
        ("--data", zs[:1] + ["--method", "zeroshot", "--data", str(d / "notes.txt"), "--out", "o"]),
        ("--data", zs[:1] + ["--method", "zeroshot", "--data", str(d / "folder"), "--out", "o"]),
        ("--classes", zs + ["--classes", ","]), ("--classes", zs + ["--classes", "airplane,airplane"]),
        ("--shift", zs + ["--shift", "fog:9"]), ("--shift", zs + ["--shift", "rain:3"]), ("--shift", zs + ["--shift", "fog:x"]),
        ("--out", zs[:-2] + ["--out", str(d / "a file")]), ("--out", zs[:-2] + ["--out", str(tree / "run")]),
        ("--holdout", zs + ["--holdout", "-1"]), ("--holdout", zs + ["--holdout", "60"]),
        ("--holdout", zs + ["--holdout", "many"]),
        ("--eval-data", zs + ["--eval-data", str(d / "nowhere")]), ("--eval-shift", zs + ["--eval-data", str(tree),
                                                                                            "--eval-shift", "rain:1"]),
        ("--report-to", lc + ["--report-to", "mlflow"]), ("--report-to", lc + ["--report-to", ","]),
        ("--config", zs + ["--config", str(d / "nowhere.json")]), ("--config", zs + ["--config", str(d / "not json.json")]),
        ("--config", zs + ["--config", str(d / "list.json")]), ("--config", zs + ["--config", str(d / "config.json")]),
        ("--config", zs + ["--config", str(d / "folder")]),
        ("--num-processes", zs + ["--num-processes", "0"]), ("--num-processes", zs + ["--num-processes", "-2"]),
        ("--resume", zs + ["--resume"]),
        ("--method", run + ["--method", "magic"]),
        # zero-shot
        ("--batch-size", zs + ["--batch-size", "-5"]), ("--batch-size", zs + ["--batch-size", "0"]),
        ("--templates", zs + ["--templates", "a {} photo {"]), ("--templates", zs + ["--templates", "no braces"]),
        ("--templates", zs + ["--templates", "a {0} of {1}"]), ("--templates", zs + ["--templates", "a {} photo|"]),
        ("--templates", zs + ["--templates", "a {name}"]), ("--templates", lc + ["--templates", "a {} photo"]),
        # LatteCLIP and FLYP
        ("--epochs", lc + ["--epochs", "0"]), ("--epochs", lc + ["--epochs", "-3"]),
        ("--batch-size", lc + ["--batch-size", "1"]), ("--lr", lc + ["--lr", "nan"]), ("--lr", lc + ["--lr", "inf"]),
        ("--lr", lc + ["--lr", "-1e-4"]), ("--lr", lc + ["--lr", "0"]), ("--weight-decay", lc + ["--weight-decay", "-1"]),
        ("--weight-decay", lc + ["--weight-decay", "nan"]), ("--warmup", lc + ["--warmup", "-1"]),
        ("--alpha", lc + ["--alpha", "1.5"]), ("--alpha", lc + ["--alpha", "-0.1"]), ("--alpha", lc + ["--alpha", "nan"]),
        ("--kinds", lc + ["--kinds", "class,magic"]), ("--kinds", lc + ["--kinds", ","]),
        ("--groups-per-class", lc + ["--groups-per-class", "-1"]), ("--groups-per-class", lc + ["--groups-per-class", "0"]),
        ("--grad-accum", lc + ["--grad-accum", "0"]), ("--gen-batch-size", lc + ["--gen-batch-size", "0"]),
        ("--gen-dtype", lc + ["--gen-dtype", "int3"]), ("--precision", lc + ["--precision", "fp8"]),
        ("--classifier", lc + ["--classifier", "knn"]), ("--describer", lc + ["--describer", "magic"]),
        ("--describer", lc + ["--describer", "jsonl:" + str(d / "nowhere.jsonl")]),
        ("--text-cache", lc + ["--text-cache", str(d / "cache dir")]),
        ("--text-cache", lc + ["--text-cache", str(d / "read-only.jsonl")]),
        *[("--describer", lc + ["--describer", f"jsonl:{d / name}.jsonl"]) for name in
          ("numeric path", "list class", "latin1", "not an object", "empty", "texts dir", "cifar names")],
        ("--text-cache", lc + ["--text-cache", str(d / "notes.txt")]),
        ("--text-cache", lc + ["--text-cache", str(d / "a file" / "texts.jsonl")]),
        ("--mixed-precision", lc + ["--mixed-precision", "fp8"]),
        # DAC
        ("--shots", dac + ["--shots", "0"]), ("--shots", dac + ["--shots", "20"]), ("--views", dac + ["--views", "0"]),
        ("--steps", dac + ["--steps", "0"]), ("--beta", dac + ["--beta", "nan"]), ("--beta", dac + ["--beta", "-1"]),
        ("--tau", dac + ["--tau", "0"]), ("--lam", dac + ["--lam", "-1"]), ("--lam", dac + ["--lam", "inf"]),
        ("--bottleneck", dac + ["--bottleneck", "0"]), ("--lr", dac + ["--lr", "nan"]),
        # UEO
        ("--momentum", ueo + ["--momentum", "1.5"]), ("--momentum", ueo + ["--momentum", "-0.1"]),
        ("--ueo-weight-scale", ueo + ["--ueo-weight-scale", "0"]), ("--n-ctx", ueo + ["--n-ctx", "0"]),
        ("--n-unknown", ueo + ["--n-unknown", "-1"]), ("--n-unknown", ueo + ["--n-unknown", "3"]),
        ("--known-classes", ueo + ["--known-classes", "airplane,zebra"]), ("--known-classes", ueo + ["--known-classes", ","]),
        ("--epochs", ueo + ["--epochs", "0"]), ("--lr", ueo + ["--lr", "nan"]),
        ("--n-absent", ueo + ["--n-absent", "-1"]), ("--n-absent", ueo + ["--n-absent", "2"]),
        ("--absent-classes", ueo + ["--absent-classes", "zebra"]), ("--absent-classes", ueo + ["--absent-classes", ","]),
        ("--n-absent", run + ["--method", "ueo-partial", "--epochs", "1"]),                  # 4 absent of 3 classes
        ("--weight-decay", ueo + ["--weight-decay", "-1"]),
        # NoLA
        ("--nola-top-k", nola + ["--nola-top-k", "0"]), ("--head-epochs", nola + ["--head-epochs", "0"]),
        ("--label-smoothing", nola + ["--label-smoothing", "1"]), ("--label-smoothing", nola + ["--label-smoothing", "-0.1"]),
        ("--teacher-view", nola + ["--teacher-view", "strong"]),
        ("--head-lr", nola + ["--head-lr", "0"]), ("--n-prompts", nola + ["--n-prompts", "0"]),
        ("--nola-threshold", nola + ["--nola-threshold", "2"]), ("--randaug-ops", nola + ["--randaug-ops", "-1"]),
        ("--randaug-magnitude", nola + ["--randaug-magnitude", "31"]),
        ("--descriptors", nola + ["--descriptors", str(d / "nowhere.json")]),
        ("--descriptors", nola + ["--descriptors", str(d / "descriptors.json")]),
        ("--descriptors", nola + ["--descriptors", str(d / "not json.json")]),
        ("--ssl", nola + ["--ssl", "magic-net"]),
        ("--ssl-weights", nola + ["--ssl-weights", str(ASSETS / "latteclip-tiny.safetensors")]),
        ("--ssl-weights", nola + ["--ssl-weights", str(d / "notes.txt")]),
        ("--ssl-weights", nola + ["--ssl-weights", str(d / "nowhere.safetensors")]),
        ("--ssl-weights", nola + ["--ssl-weights", str(d / "folder")]),
        # compare
        ("--methods", ["compare", "--data", str(tree), "--out", "o", "--methods", ""]),
        ("--methods", ["compare", "--data", str(tree), "--out", "o", "--methods", ","]),
        ("--methods", ["compare", "--data", str(tree), "--out", "o", "--methods", "zeroshot,magic"]),
        ("--seed", ["compare", "--data", str(tree), "--out", "o", "--methods", "zeroshot", "--seed", "-1"]),
        ("--out", ["compare", "--data", str(tree), "--methods", "zeroshot", "--out", str(d / "a file")]),
        ("--batch-size", ["compare", "--data", str(tree), "--out", "o", "--methods", "zeroshot", "--batch-size", "0"]),
        # robustness
        ("--batch-size", ["robustness", "--data", str(tree), "--out", "o", "--batch-size", "0"]),
        ("--severities", ["robustness", "--data", str(tree), "--out", "o", "--severities", "0"]),
        ("--severities", ["robustness", "--data", str(tree), "--out", "o", "--severities", "6"]),
        ("--severities", ["robustness", "--data", str(tree), "--out", "o", "--severities", ","]),
        ("--severities", ["robustness", "--data", str(tree), "--out", "o", "--severities", "3,x"]),
        ("--per-class", ["robustness", "--data", str(tree), "--out", "o", "--per-class", "0"]),
        ("--templates", ["robustness", "--data", str(tree), "--out", "o", "--templates", "a {} photo {"]),
        ("--device", ["robustness", "--data", str(tree), "--out", "o", "--device", "gpu0"]),
        ("--shift", ["robustness", "--data", str(tree), "--out", "o", "--shift", "rain:2"]),
        # pre-training
        *[(f, ["pretrain", "--data", str(tree), "--out", "o", f, v]) for f, v in
          [("--epochs", "0"), ("--epochs", "-1"), ("--batch-size", "0"), ("--lr", "nan"), ("--lr", "0"), ("--seed", "-1"),
           ("--per-class", "0"), ("--val-per-class", "0"), ("--val-per-class", "20"), ("--stop-after", "0"),
           ("--device", "gpu0"), ("--data", str(d / "nowhere"))]],
        *[(f, ["pretrain-dino", "--data", str(tree), "--out", "o", "--target", "none", f, v]) for f, v in
          [("--epochs", "0"), ("--batch-size", "1"), ("--lr", "inf"), ("--seed", str(2**40)), ("--n-local", "-1"),
           ("--per-class", "0"), ("--stop-after", "-1"), ("--device", "gpu0"), ("--target", str(d / "nowhere"))]],
        *[(f, ["pretrain-vlm", "--data", str(tree), "--out", "o", f, v]) for f, v in
          [("--epochs", "0"), ("--batch-size", "1"), ("--lr", "nan"), ("--seed", "-1"), ("--per-class", "0"),
           ("--val-per-class", "0"), ("--stop-after", "0"), ("--device", "gpu0"), ("--data", str(d / "nowhere")),
           ("--groups", "-0.5"), ("--groups", "inf")]],
        # predict, export, docs, bench
        ("--run", ["predict", "--run", str(d / "nowhere"), "--data", str(tree), "--out", "o"]),
        ("--run", ["predict", "--run", str(d / "folder"), "--data", str(tree), "--out", "o"]),
        ("--run", ["predict", "--run", str(d / "notes.txt"), "--data", str(tree), "--out", "o"]),
        ("--run", ["export", "--run", str(d / "folder"), "--out", "o"]),
        ("--run", ["export", "--run", str(d / "nowhere"), "--out", "o"]),
        ("--docs-out", ["docs", "--root", str(ROOT), "--out", str(d / "a file")]),
        ("--root", ["docs", "--root", str(d / "folder"), "--out", "o"]),
        ("--n", ["bench", "--out", "o", "--n", "0"]), ("--n", ["bench", "--out", "o", "--n", "-5"]),
        ("--models", ["bench", "--out", "o", "--models", ""]), ("--models", ["bench", "--out", "o", "--models", "ViT-Q-99"]),
    ]
    if not torch.cuda.is_available(): cases.append(("--device", zs + ["--device", "cuda"]))
    return cases


@pytest.fixture(scope="module")
def results(small_tree, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flags")
    d = inputs(tmp, small_tree)
    cases = table(d, small_tree)
    cache = tmp / "cache"; cache.mkdir()
    spec = dict(cases=[dict(argv=a) for _, a in cases], work=str(tmp / "work"), watch=[str(small_tree), str(d), str(cache)])
    (tmp / "cases.json").write_text(json.dumps(spec))
    env = {**os.environ, "LATTECLIP_QUIET": "1", "HF_HUB_OFFLINE": "1", "LATTECLIP_CACHE": str(cache)}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "flag_driver.py"), str(tmp / "cases.json"),
                        str(tmp / "results.json")], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    writable(d / "read-only.jsonl")
    out = json.loads((tmp / "results.json").read_text())
    assert len(out) == len(cases)
    return list(zip([f for f, _ in cases], out))


def test_every_bad_flag_is_one_sentence(results):
    bad = []
    for flag, r in results:
        lines = r["stderr"].strip().splitlines()
        name = "--out" if flag == "--docs-out" else flag
        value = r["argv"][-1].removeprefix("jsonl:")                  # or the file it names
        problems = [p for p, ok in [("traceback", r["traceback"] is None and "Traceback" not in r["stderr"]),
                                    ("exit", r["code"] == 2), ("one line", len(lines) == 1),
                                    ("names the flag", name in r["stderr"] or value in r["stderr"]),
                                    ("wrote nothing", not r["left"]), ("lost nothing", not r["lost"]),
                                    ("quick", r["seconds"] < 60)] if not ok]
        if problems: bad.append((problems, r["argv"][:1] + r["argv"][5:], r["code"], r["stderr"][-300:],
                                 (r["traceback"] or "")[-400:], r["left"][:5]))
    tracebacks = sum(r["traceback"] is not None or "Traceback" in r["stderr"] for _, r in results)
    print(f"{len(results)} bad command lines: {len(bad)} not one sentence, {tracebacks} tracebacks, "
          f"{sum(bool(r['left']) for _, r in results)} wrote a file, {sum(bool(r['lost']) for _, r in results)} changed "
          f"or removed one, slowest {max(r['seconds'] for _, r in results)} s")
    assert not bad, "\n".join(map(str, bad))
