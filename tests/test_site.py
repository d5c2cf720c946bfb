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
