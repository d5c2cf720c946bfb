"""The pip package: `python -m build` makes a wheel that carries the tiny checkpoint and the embedded data; installed
into a fresh virtual environment (its dependencies borrowed from this one, no network), `latteclip run` works."""
import configparser, json, os, shutil, subprocess, sys, sysconfig, zipfile
from pathlib import Path
import latteclip
from conftest import ROOT

FILES = ["setup.py", "settings.ini", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"]


def test_version_in_one_place_and_metadata():
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    d = cfg["DEFAULT"]
    assert latteclip.__version__ == d["version"]
    for key in ("license", "description", "keywords", "min_python", "author"): assert d[key].strip(), key
    reqs = d["requirements"].split()
    assert all("<" in r and ">=" in r for r in reqs), [r for r in reqs if "<" not in r]   # every requirement bounded


def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    src = tmp_path / "src"; src.mkdir()
    for f in FILES: shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "latteclip", src / "latteclip", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    whl, = (tmp_path / "dist").glob("latteclip-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    for a in ("latteclip-tiny.safetensors", "latteclip-tiny.json", "cifar10-target.zip",
              "latteclip-dino-tiny.safetensors", "dino.json", "descriptors-cifar10.json",   # NoLA's DINO and descriptions too
              "vlm.json", "latteclip-vlm/config.json", "latteclip-vlm/model.safetensors",     # the shipped describer
              "latteclip-vlm/tokenizer.json", "latteclip-vlm/processor_config.json", "latteclip-vlm/chat_template.jinja"):
        assert f"latteclip/assets/{a}" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")   # torch & co., not latteclip
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(whl)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "elsewhere"; work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["LATTECLIP_QUIET"] = "1"
    where = subprocess.run([str(py), "-c", "import latteclip; print(latteclip.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where                                  # the installed copy, not the checkout
    r = subprocess.run([str(venv / "bin" / "latteclip"), "run", "--epochs", "1", "--out", "run"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((work / "run" / "metrics.json").read_text())
    assert m["method"] == "latteclip" and m["n_images"] == 4000 and m["eval_n_images"] == 1000 and m["shift"] == "fog:5" and m["top1"] > m["zeroshot_top1"]
