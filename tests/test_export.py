"""The notebooks are the source of truth: exporting them must reproduce latteclip/ exactly."""
import shutil, subprocess, sys
from pathlib import Path
from conftest import ROOT


def test_library_matches_notebooks(tmp_path):
    for name in ["settings.ini", "nbs"]:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "latteclip").mkdir()
    shutil.copy(ROOT / "latteclip" / "__init__.py", tmp_path / "latteclip" / "__init__.py")
    exe = Path(sys.executable).parent / "nbdev_export"
    subprocess.run([str(exe)], cwd=tmp_path, check=True, capture_output=True)
    exported = sorted(p.relative_to(tmp_path / "latteclip") for p in (tmp_path / "latteclip").rglob("*.py"))
    shipped = sorted(p.relative_to(ROOT / "latteclip") for p in (ROOT / "latteclip").rglob("*.py"))
    assert exported == shipped, "modules differ: run nbdev_export and commit"
    for rel in exported:
        assert (tmp_path / "latteclip" / rel).read_text() == (ROOT / "latteclip" / rel).read_text(), \
            f"latteclip/{rel} differs from what the notebooks export: edit the notebook, run nbdev_export, commit both"
