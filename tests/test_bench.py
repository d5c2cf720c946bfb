"""The benchmark command end to end in its quick mode: every field it promises is measured and sane."""
import json
from conftest import latteclip


def test_bench_quick_writes_every_ratio(tmp_path):
    r = latteclip("bench", "--quick", "--n", "160", "--models", "latteclip-tiny", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    b = json.loads((tmp_path / "bench.json").read_text())
    for k in ("step_ratio_latteclip_vs_flyp", "encode_ratio_vs_open_clip", "cache_rerun_fraction", "scale_ratio_2n_vs_n",
              "peak_rss_mb", "import_s", "ddp2_vs_single_throughput", "single_images_per_s", "ddp2_images_per_s"):
        assert isinstance(b[k], (int, float)) and b[k] > 0, k
    assert b["warm_calls"] == 0 and b["cache_rerun_fraction"] < 1         # a warm cache describes nothing
    assert b["transformers_imported_by_latteclip"] is False
    t = b["latteclip-tiny"]
    assert t["batch_size"] == 256 and t["latteclip_step_s"] > 0 and t["flyp_step_s"] > 0
    assert b["scale_n"] == 80 and b["default_run_images"] == 160 and b["default_run_epochs"] == 1   # ratios, not timed assertions
