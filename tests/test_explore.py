"""The ipywidgets explorer, driven from code over a real LatteCLIP run: filters, the epoch slider and the cards
show what the run's files say."""
import json
import numpy as np
import pytest
from latteclip.core import LatteError
from latteclip.explore import Explorer
from latteclip.report import run_method


@pytest.fixture(scope="module")
def run(embedded, tmp_path_factory):
    ds = embedded.subset(range(0, 5000, 40)).with_shift("fog:5")                  # 125 real images
    out = tmp_path_factory.mktemp("explore") / "run"
    m = run_method("latteclip", ds=ds, out=out, epochs=2, batch_size=25, text_cache=str(out.parent / "t.jsonl"))
    return ds, out, m


def test_run_writes_what_the_explorer_needs(run):
    ds, out, m = run
    r = json.loads((out / "explore.json").read_text())
    assert len(r["keys"]) == len(r["y_zs"]) == len(r["image_texts"]) == len(r["weights"]) == len(ds)
    assert len(r["preds_by_epoch"]) == 2 and all(len(p) == len(ds) for p in r["preds_by_epoch"])
    last = np.asarray(r["preds_by_epoch"][-1]); labels = np.asarray(ds.labels)
    assert round(100 * (last == labels).mean(), 2) == m["history"]["eval"][-1]["prototypes"]   # the same predictions
    assert all(w[0] > 0 and len(w) == 3 for w in r["weights"])
    assert "_pred" not in json.dumps(m["history"])


def test_explorer_filters_epochs_and_cards(run):
    ds, out, m = run
    e = Explorer(out, ds=ds, per_page=5)
    assert len(e.selected()) == len(ds) and len(e.grid.children) == 5 and e.page.max == (len(ds) - 1) // 5
    assert f"top-1 at this epoch {m['history']['eval'][-1]['prototypes']:.2f}%" in e.summary.value
    e.cls.value = "cat"; y_zs = np.asarray(e.rec["y_zs"])
    assert set(y_zs[e.selected()]) == {ds.classes.index("cat")}
    e.by.value = "true label"
    assert set(np.asarray(ds.labels)[e.selected()]) == {ds.classes.index("cat")}
    e.which.value = "wrong"; wrong_last = e.selected()
    assert all(e.prediction()[j] != ds.labels[j] for j in wrong_last)
    e.epoch.value = 0                                                              # the zero-shot pseudo-labels
    assert all(y_zs[j] != ds.labels[j] for j in e.selected())
    assert f"top-1 at this epoch {m['zeroshot_top1']:.2f}%" in e.summary.value
    card = e.grid.children[0].children[1].value
    j = int(e.shown[0])
    assert f"pseudo-label: {ds.classes[y_zs[j]]}" in card and f"true: {ds.classes[ds.labels[j]]}" in card and "&#10007;" in card
    assert e.rec["image_texts"][j] in card and "mixer: class" in card
    assert e.grid.children[0].children[0].value[:4] == b"\x89PNG"


def test_explorer_errors(tmp_path):
    with pytest.raises(LatteError, match="has no explore.json"): Explorer(tmp_path)
