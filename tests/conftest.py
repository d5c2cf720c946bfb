"""Shared fixtures: real images (from the embedded CIFAR-10 target set) written to temporary folders."""
import os, subprocess, sys
from pathlib import Path
import pytest

os.environ.setdefault("LATTECLIP_QUIET", "1")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded():
    from latteclip.data import embedded_target
    return embedded_target()


def write_images(ds, idxs, root, layout="tree"):
    "Write the original JPEG bytes of `idxs` as `<root>/<class>/<n>.jpg` (tree) or `<root>/<n>.jpg` (flat)."
    root = Path(root)
    for i in idxs:
        d = root / ds.classes[ds.labels[i]] if layout == "tree" else root
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img {i:04d}.jpg").write_bytes(ds.reader.read(ds.keys[i]))
    return root


@pytest.fixture(scope="session")
def small_tree(embedded, tmp_path_factory):
    "A labelled image folder of 60 real images, 3 classes (airplane, automobile, bird)."
    idxs = [k * 500 + j for k in range(3) for j in range(20)]
    return write_images(embedded, idxs, tmp_path_factory.mktemp("tree"))


def latteclip(*args, cwd=None, timeout=600):
    "Run the real `latteclip` command in a child process."
    return subprocess.run([sys.executable, "-m", "latteclip", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "LATTECLIP_QUIET": "1"})


@pytest.fixture
def network_lookups(monkeypatch):
    "The host names this process looks up from now on (each network connection starts with one): the real resolver, counted."
    import socket
    seen, real = [], socket.getaddrinfo
    def counted(host, *a, **k):
        seen.append(host)
        return real(host, *a, **k)
    monkeypatch.setattr(socket, "getaddrinfo", counted)
    return seen


def hf_offline(monkeypatch):
    "HF_HUB_OFFLINE=1 as a user sets it before starting Python: huggingface_hub reads it once, when first imported."
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
