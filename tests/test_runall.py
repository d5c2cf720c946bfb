"""Every notebook run the way JupyterLab's Run All runs it: every cell, `notest` and `eval: false` ones included
(nbclient ignores nbdev's flags, as JupyterLab does), in a temporary copy of the repository with nothing beside it,
as on a student's machine. Afterwards the shipped assets are byte-identical (in the copy and in this checkout), the
exported library is byte-identical (the notebooks' own `nbdev_export` cells reproduce it), and no cell opened a file
outside the repository: decoy files where the development data would be are never opened."""
import hashlib, json, os, shutil, sys
from pathlib import Path
import pytest
from conftest import ROOT

NOTEBOOKS = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith((".", "_")))
COPY = ["nbs", "latteclip", "settings.ini", "setup.py", "README.md", "LICENSE", "MANIFEST.in", "pyproject.toml"]
DECOYS = ["shared/data/cifar10-target.tar", "shared/data/cifar10-pretrain.tar", "shared/METHODS.md"]

# Run in the kernel before the notebook's first cell: every file opened outside the repository copy but inside the
# folder that holds it (where `../../shared` would lead) is recorded. Python's audit hook sees every `open`.
HOOK = """
import sys as _sys, os as _os
_OUTSIDE, _REPO, _TOP = [], {repo!r}, {top!r}
def _latteclip_audit(event, args):
    if event != "open" or not args or not isinstance(args[0], (str, bytes, _os.PathLike)): return
    p = _os.path.realpath(_os.fsdecode(args[0]))
    if p.startswith(_TOP + _os.sep) and not p.startswith(_REPO + _os.sep): _OUTSIDE.append(p)
_sys.addaudithook(_latteclip_audit)
"""


def _hashes(folder:Path, pattern="*")->dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob(pattern)) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    "A copy of the repository's sources in a folder of its own; decoys where the development data would be."
    top = tmp_path_factory.mktemp("student").resolve()
    repo = top / "latteclip"
    for name in COPY:
        src = ROOT / name
        if src.is_dir(): shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_*"))
        elif src.exists(): shutil.copy2(src, repo / name)
    for d in DECOYS:
        (top / d).parent.mkdir(parents=True, exist_ok=True)
        (top / d).write_bytes(b"decoy: a notebook cell must not read outside the repository\n")
    return top, repo


@pytest.mark.filterwarnings("ignore::nbformat.validator.MissingIDFieldWarning")
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_run_all_leaves_the_package_alone(name, repo_copy, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient
    top, repo = repo_copy
    before_here, before_copy = _hashes(ROOT / "latteclip" / "assets"), _hashes(repo / "latteclip" / "assets")
    lib_before = _hashes(repo / "latteclip", "*.py")
    monkeypatch.setenv("PYTHONPATH", str(repo))                  # the kernel imports the copy's package, not ours
    monkeypatch.setenv("LATTECLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LATTECLIP_QUIET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(repo / "nbs" / name, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(HOOK.format(repo=str(repo), top=str(top))))
    nb.cells.append(nbformat.v4.new_code_cell("import json as _json; print(_json.dumps(sorted(set(_OUTSIDE))))"))
    client = NotebookClient(nb, timeout=1200, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(repo / "nbs")}})
    client.execute()
    outside = json.loads("".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout"))
    assert outside == [], f"{name} opened files outside the repository: {outside}"
    assert _hashes(ROOT / "latteclip" / "assets") == before_here, f"{name} changed this checkout's latteclip/assets"
    assert _hashes(repo / "latteclip" / "assets") == before_copy, f"{name} changed the package's assets in the copy"
    assert _hashes(repo / "latteclip", "*.py") == lib_before, f"{name} changed the exported library"
    assert all((top / d).read_bytes().startswith(b"decoy") for d in DECOYS)
