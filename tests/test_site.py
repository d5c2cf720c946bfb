"""The offline documentation site: built from the repository's own notebooks and README, every notebook has a page,
internal links resolve, plots are embedded; the checker catches what it claims to catch."""
import re
from latteclip.site import build_site, check_site, rewrite_links
from conftest import ROOT, latteclip


def test_site_of_this_repository(tmp_path):
    r = latteclip("docs", "--root", ROOT, "--out", tmp_path / "site")
    assert r.returncode == 0 and "0 problems" in r.stdout, r.stdout + r.stderr
    site = tmp_path / "site"
    stems = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb"))
    assert all((site / ("notebook-index.html" if s == "index" else f"{s}.html")).exists() for s in stems)
    front = (site / "index.html").read_text()
    assert 'href="15_train.html"' in front and ".ipynb" not in re.sub(r'href="https://[^"]*"', "", front)
    assert (site / "15_train.html").read_text().count("data:image/png") >= 3          # its plots, embedded
    assert "data:image/png;base64" in front and "nbs/images" not in front            # the README plot, embedded
    api = (site / "api.html").read_text()
    assert "id='ueo.ueo_loss'" in api and "id='train.finetune'" in api and "Fine-tune" in api


def test_checker_catches_missing_pages_links_and_images(tmp_path):
    site = tmp_path / "s"; site.mkdir()
    (site / "a.html").write_text('<a href="b.html">ok</a><a href="b.html#here">ok</a><a href="https://x.org">ext</a>'
                                 '<img src="data:image/png;base64,AAAA">')
    (site / "b.html").write_text('<h2 id="here">x</h2><a href="c.html">broken</a><a href="a.html#nowhere">bad anchor</a>'
                                 '<img src="plot.png">')
    problems = check_site(site, ["a", "b", "d"])
    assert problems == ["notebook d has no page", "b.html: link to c.html does not resolve",
                        "b.html: anchor a.html#nowhere does not exist", "b.html: image plot.png is not embedded"]


def test_links_to_notebooks_and_repository_files():
    page = '<a href="nbs/15_train.ipynb#x">n</a> <a href="LICENSE">l</a> <a href="../README.md">r</a> <a href="#top">t</a>'
    out = rewrite_links(page, {"15_train"}, "https://g/blob/main/", prefix="nbs/")
    assert 'href="15_train.html#x"' in out and 'href="https://g/blob/main/nbs/LICENSE"' in out
    assert 'href="https://g/blob/main/README.md"' in out and 'href="#top"' in out


# --- the output folder: only ever remove what `latteclip docs` itself wrote ---------------------------------------
import json, shutil, subprocess
import nbformat, pytest
from latteclip.core import LatteError
from latteclip.site import MARKER


def snapshot(folder):
    "Every file and folder below `folder`: relative path -> bytes (files) or None (folders)."
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def refused(r, text):
    "The CLI refused with exit 2 and one `latteclip: error:` line that contains `text`, no traceback."
    err = r.stderr.strip().splitlines()
    return r.returncode == 2 and len(err) == 1 and err[0].startswith("latteclip: error: ") and text in err[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    "This repository's site, built once by the real command."
    site = tmp_path_factory.mktemp("built") / "site"
    r = latteclip("docs", "--root", ROOT, "--out", site)
    assert r.returncode == 0 and "0 problems" in r.stdout, r.stdout + r.stderr
    return site


@pytest.fixture
def small_root(tmp_path):
    "A tiny repository: README.md and two notebooks a and b."
    root = tmp_path / "repo"
    (root / "nbs").mkdir(parents=True)
    for s in "ab":
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Page {s}\n\nsee [a](a.ipynb)")])
        nbformat.write(nb, root / "nbs" / f"{s}.ipynb")
    (root / "README.md").write_text("# tiny\n\n[a](nbs/a.ipynb)\n")
    return root


def test_a_users_folder_is_refused_and_untouched(tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    (mine / "sub" / "data.csv").write_bytes(b"1,2,3\n")
    before = snapshot(mine)
    r = latteclip("docs", "--root", ROOT, "--out", mine)
    assert refused(r, "is not empty and is not a site latteclip built"), r.stdout + r.stderr
    assert snapshot(mine) == before


def test_out_dot_in_a_git_repository_is_refused(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo,
                                    capture_output=True, text=True, check=True).stdout
    git("init", "-q")
    (repo / "code.py").write_text("print('mine')\n")
    git("add", "code.py")
    git("commit", "-qm", "mine")
    before = snapshot(repo)
    r = latteclip("docs", "--root", ROOT, "--out", ".", cwd=repo)
    assert refused(r, f"{repo.resolve()} is not empty and is not a site latteclip built"), r.stdout + r.stderr
    assert git("status", "--porcelain") == "" and (repo / "code.py").read_text() == "print('mine')\n"
    assert snapshot(repo) == before and git("log", "--format=%s").strip() == "mine"


def test_out_naming_a_file_is_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    r = latteclip("docs", "--root", ROOT, "--out", f)
    assert refused(r, "is a file, not a folder"), r.stdout + r.stderr
    assert f.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [f]


def test_a_site_is_rebuilt_in_place_and_keeps_a_users_file(built, tmp_path):
    marker = json.loads((built / MARKER).read_text())
    assert marker["files"] == sorted(p.name for p in built.glob("*.html")) and "api.html" in marker["files"]
    site = shutil.copytree(built, tmp_path / "site")
    (site / "my notes.txt").write_text("mine")
    (site / "extra").mkdir()
    (site / "extra" / "plot.svg").write_text("<svg/>")
    (site / "15_train.html").write_text("stale")
    r = latteclip("docs", "--root", ROOT, "--out", site)
    assert r.returncode == 0 and "0 problems" in r.stdout, r.stdout + r.stderr
    assert (site / "my notes.txt").read_text() == "mine" and (site / "extra" / "plot.svg").read_text() == "<svg/>"
    assert (site / "15_train.html").read_text().count("data:image/png") >= 3
    assert json.loads((site / MARKER).read_text()) == marker
    assert not [p.name for p in site.iterdir() if ".tmp" in p.name]


def test_a_rebuild_removes_only_the_pages_it_wrote(small_root, tmp_path):
    site = tmp_path / "site"
    assert build_site(small_root, site)["pages"] == ["a.html", "api.html", "b.html", "index.html"]
    (site / "mine.html").write_text("<p>mine</p>")
    (small_root / "nbs" / "b.ipynb").unlink()
    assert build_site(small_root, site)["pages"] == ["a.html", "api.html", "index.html"]
    assert sorted(p.name for p in site.iterdir()) == [MARKER, "a.html", "api.html", "index.html", "mine.html"]
    assert (site / "mine.html").read_text() == "<p>mine</p>"
    assert json.loads((site / MARKER).read_text())["files"] == ["a.html", "api.html", "index.html"]


def test_a_marker_cannot_point_outside_the_site(small_root, tmp_path):
    victims = {tmp_path / "victim": "v1", tmp_path / "victim.html": "v2", tmp_path / "abs.html": "v3",
               tmp_path / "linked.html": "v4"}
    for p, text in victims.items(): p.write_text(text)
    site = tmp_path / "site"
    (site / "sub").mkdir(parents=True)
    (site / "sub" / "x.html").write_text("v5")
    (site / "link.html").symlink_to(tmp_path / "linked.html")
    files = ["../victim", "../victim.html", str(tmp_path / "abs.html"), "sub/x.html", "sub/../../victim.html",
             "link.html", ".", "..", "", 7, None]
    (site / MARKER).write_text(json.dumps(dict(files=files)))
    build_site(small_root, site)
    assert all(p.read_text() == text for p, text in victims.items())
    assert (site / "sub" / "x.html").read_text() == "v5"
    assert not (site / "link.html").is_symlink()                    # a listed stale page: the link went, not its target
    assert json.loads((site / MARKER).read_text())["files"] == ["a.html", "api.html", "b.html", "index.html"]


def test_a_page_in_the_way_is_refused(small_root, tmp_path):
    site = tmp_path / "site"
    build_site(small_root, site)
    (small_root / "nbs" / "c.ipynb").write_bytes((small_root / "nbs" / "a.ipynb").read_bytes())
    (site / "c.html").write_text("mine, not a page")
    before = snapshot(site)
    with pytest.raises(LatteError, match="c.html is in the way and latteclip did not write it"):
        build_site(small_root, site)
    assert snapshot(site) == before


def test_a_failed_build_leaves_no_half_page_and_stays_a_site(small_root, tmp_path):
    site = tmp_path / "site"
    build_site(small_root, site)
    old_b = (site / "b.html").read_text()
    bad = json.loads((small_root / "nbs" / "b.ipynb").read_text())
    bad["cells"][0]["source"] = "a lone surrogate \ud800 cannot be written as UTF-8"
    (small_root / "nbs" / "b.ipynb").write_text(json.dumps(bad))         # json.dumps escapes it: a valid notebook
    with pytest.raises(UnicodeEncodeError): build_site(small_root, site)
    assert (site / "b.html").read_text() == old_b                       # the page it failed to write is the old one
    assert not [p.name for p in site.iterdir() if ".tmp" in p.name]
    (small_root / "nbs" / "b.ipynb").unlink()
    assert build_site(small_root, site)["pages"] == ["a.html", "api.html", "index.html"]
    assert sorted(p.name for p in site.iterdir()) == [MARKER, "a.html", "api.html", "index.html"]
