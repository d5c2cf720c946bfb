"""The benchmark command end to end in its quick mode: every field it promises is present and a sane number.

Speed is what the benchmark measures, never what a test asserts: a time, rate or ratio is checked to be a finite,
non-negative number (true on any machine, however fast or slow), not compared against a threshold."""
import json, math
from conftest import latteclip

TIMED = ("step_ratio_latteclip_vs_flyp", "encode_ratio_vs_open_clip", "cache_rerun_fraction", "scale_ratio_2n_vs_n",
         "import_s", "import_all_s", "ddp2_vs_single_throughput", "single_images_per_s", "ddp2_images_per_s",
         "text_cold_s", "text_warm_s", "scale_time_n_s", "scale_time_2n_s", "default_run_s")


def _number(x): return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def test_bench_quick_writes_every_ratio(tmp_path):
    r = latteclip("bench", "--quick", "--n", "160", "--models", "latteclip-tiny", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    b = json.loads((tmp_path / "bench.json").read_text())
    for k in TIMED: assert _number(b[k]), (k, b.get(k))
    assert isinstance(b["peak_rss_mb"], (int, float)) and b["peak_rss_mb"] > 0       # memory, not time: never zero
    assert b["warm_calls"] == 0                                                          # a warm cache describes nothing
    assert b["transformers_imported_by_latteclip"] is False
    t = b["latteclip-tiny"]
    assert t["batch_size"] == 256 and _number(t["latteclip_step_s"]) and _number(t["flyp_step_s"])
    assert b["scale_n"] == 80 and b["default_run_images"] == 160 and b["default_run_epochs"] == 1   # ratios, not timed assertions


def test_significant_figures_never_round_a_measurement_away():
    from latteclip.bench import sig
    assert sig(0.000412345) == 0.0004123 and sig(4e-7) == 4e-7 and sig(2 / 3) == 0.6667 and sig(0.0) == 0.0
