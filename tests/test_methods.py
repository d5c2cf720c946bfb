"""The method registry: the CLI's methods and flags come from it, a flag a method does not take is refused, and a
method from another package (a plug-in in a temporary folder) runs through `latteclip run` and `compare`."""
import json, os, subprocess, sys, textwrap
from dataclasses import fields
from pathlib import Path
import pytest
from conftest import latteclip


def test_cli_choices_come_from_the_registry():
    from latteclip.cli import parser
    from latteclip.methods import load, group
    methods = load()
    p = parser()
    run = next(a for a in p._subparsers._group_actions[0].choices["run"]._actions if a.dest == "method")
    assert list(run.choices) == list(methods)
    assert {"zeroshot", "latteclip", "flyp-pseudo", "nola", "ueo", "ueo-open", "dac"} <= set(group("all"))
    assert set(group("ablation")) == {"zeroshot", "latteclip", "flyp-pseudo", "latteclip-class", "latteclip-class-image",
                                      "latteclip-uniform", "latteclip-no-zs"}
    helptext = p._subparsers._group_actions[0].choices["compare"].format_help()
    assert all(m in helptext for m in methods)


def test_every_setting_is_a_flag_of_run_and_compare():
    "Each registered method's settings are flags of `run` and `compare`, with the method's own default in the help."
    from latteclip.cli import parser
    from latteclip.methods import load, flag_name
    sub = parser()._subparsers._group_actions[0].choices
    for cmd in ("run", "compare"):
        opts = {o for a in sub[cmd]._actions for o in a.option_strings}
        for m in load().values():
            for f in fields(m.settings):
                flag = flag_name(m.settings, f.name)
                if flag is not None: assert flag in opts, (cmd, m.name, flag)
    h = latteclip("run", "--help").stdout
    assert "--ueo-weight-scale" in h and "--head-epochs" in h and "--randaug-magnitude" in h and "--steps" in h


@pytest.mark.parametrize("args, words", [
    (["run", "--method", "dac", "--epochs", "2"], "--epochs does not apply to dac"),
    (["run", "--method", "dac", "--batch-size", "8"], "--batch-size does not apply to dac"),
    (["run", "--method", "zeroshot", "--alpha", "0.1"], "--alpha does not apply to zeroshot"),
    (["run", "--method", "ueo", "--alpha", "0.1"], "--alpha does not apply to ueo"),
    (["run", "--method", "latteclip", "--shots", "4"], "--shots does not apply to latteclip"),
    (["run", "--method", "nola", "--describer", "attributes"], "--describer does not apply to nola"),
    (["run", "--method", "latteclip", "--known-classes", "cat"], "--known-classes does not apply to latteclip"),
    (["run", "--method", "zeroshot", "--no-augment"], "--augment / --no-augment does not apply to zeroshot"),
    (["run", "--method", "dac", "--mixed-precision", "bf16"], "--mixed-precision does not apply to dac"),
    (["run", "--method", "latteclip", "--templates", "ensemble"], "--templates does not apply to latteclip"),
    (["run", "--method", "zeroshot", "--resume"], "zeroshot keeps no checkpoints"),
    (["run", "--method", "dac", "--resume"], "dac keeps no checkpoints"),
    (["compare", "--methods", "zeroshot,dac", "--epochs", "2"], "--epochs does not apply to zeroshot, dac"),
    (["compare", "--methods", "zeroshot,flyp-pseudo", "--n-prompts", "4"], "--n-prompts does not apply"),
    (["run", "--method", "latteclip", "--gen-dtype", "int8"], "--gen-dtype must be"),
    (["run", "--method", "latteclip", "--classifier", "knn"], "--classifier must be prototypes or text"),
    (["run", "--method", "dac", "--shots", "0"], "--shots must be at least 1"),
    (["run", "--method", "dac", "--steps", "0"], "--steps must be at least 1"),
    (["run", "--method", "zeroshot", "--templates", "no placeholder"], "needs a {}"),
    (["compare", "--methods", ",", "--epochs", "1"], "names no method"),
])
def test_a_flag_the_method_does_not_take_is_refused(tmp_path, args, words):
    "One sentence, exit 2, before any work: nothing is written into --out."
    r = latteclip(*args, "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out" / "metrics.json").exists() and not (tmp_path / "out" / "table.md").exists()


def test_dac_flags_act(small_tree, tmp_path):
    "DAC's own settings reach it (it used to ignore --lr): they are in metrics.json and change the result."
    base = ["run", "--method", "dac", "--data", small_tree, "--shots", "2", "--views", "2"]
    r = latteclip(*base, "--steps", "3", "--lr", "0.02", "--alpha", "2.0", "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert a["config"]["steps"] == 3 and a["config"]["lr"] == 0.02 and a["config"]["alpha"] == 2.0
    assert len(a["history"]["loss"]) == 3 and "Tip-Adapter" in r.stdout
    r = latteclip(*base, "--steps", "6", "--out", tmp_path / "b")
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert b["config"]["steps"] == 6 and b["config"]["lr"] == 1e-3 and len(b["history"]["loss"]) == 6


def test_methods_command_lists_every_method_with_its_settings():
    from latteclip.methods import load
    r = latteclip("methods", "--json")
    assert r.returncode == 0, r.stderr
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    assert list(rows) == list(load())
    ueo = {s["name"]: s for s in rows["ueo-open"]["settings"]}
    assert ueo["n_unknown"]["default"] == 4 and ueo["weight_scale"]["flag"] == "--ueo-weight-scale"
    assert {s["name"]: s for s in rows["flyp-pseudo"]["settings"]}["kinds"]["default"] == ["class"]
    lr = {s["name"]: s for s in rows["latteclip"]["settings"]}["lr"]
    assert lr["default"] == 5e-5 and lr["type"] == "float" and lr["help"]
    assert all(s["help"] for m in rows.values() for s in m["settings"] if s["flag"]), "every flag has a help"
    text = latteclip("methods").stdout
    assert "ueo-open:" in text and "--head-epochs" in text and "--nola-top-k" in text


TOY = '''
"""A method from outside the package: zero-shot logits divided by a temperature."""
import time
from dataclasses import dataclass
from latteclip.methods import Method, RunContext, register
from latteclip.zeroshot import zeroshot, write_run
from latteclip.core import run_files, check_settings

@dataclass
class ToySettings:
    "Settings of the toy method."
    temperature: float = 1.0   # divides the zero-shot logits
    batch_size: int = 256      # images per forward pass

    def __post_init__(self):
        check_settings([(self.temperature > 0, "--temperature must be positive")])

def run_toy(ctx: RunContext):
    logits = zeroshot(ctx.clip, ctx.ds, None, ctx.cfg.batch_size) / ctx.cfg.temperature
    with run_files(ctx.out):
        return write_run(ctx.out, "toy", ctx.ds, ctx.clip, logits, time.time() - ctx.t0,
                         temperature=ctx.cfg.temperature, seed=ctx.seed)

register(Method("toy", ToySettings, run_toy, "a toy: zero-shot logits over a temperature", metrics=("temperature",),
                columns=("temperature",), summary=lambda m: f"toy at temperature {m['temperature']}",
                data_parallel=False, resumable=False))
'''


@pytest.fixture
def plugin(tmp_path):
    "A plug-in package in a temporary folder: one module and the entry point that names it (a .dist-info folder)."
    root = tmp_path / "plugin"
    (root / "toy_latteclip_method-0.1.dist-info").mkdir(parents=True)
    (root / "toy_latteclip_method.py").write_text(textwrap.dedent(TOY))
    (root / "toy_latteclip_method-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: toy-latteclip-method\nVersion: 0.1\n")
    (root / "toy_latteclip_method-0.1.dist-info" / "entry_points.txt").write_text(
        "[latteclip.methods]\ntoy = toy_latteclip_method\n")
    return root


def with_plugin(root, *args, cwd=None):
    env = {**os.environ, "LATTECLIP_QUIET": "1", "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "latteclip", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_a_plugin_method_runs_through_run_and_compare(plugin, small_tree, tmp_path):
    "One module and one registration: the toy method gets its flag, runs, is compared, and refuses others' flags."
    files = sorted(str(p.relative_to(plugin)) for p in plugin.rglob("*") if p.is_file())
    assert files == ["toy_latteclip_method-0.1.dist-info/METADATA", "toy_latteclip_method-0.1.dist-info/entry_points.txt",
                     "toy_latteclip_method.py"]
    r = with_plugin(plugin, "methods", "--json")
    assert r.returncode == 0, r.stderr
    toy = {m["name"]: m for m in json.loads(r.stdout)}["toy"]
    assert [s["flag"] for s in toy["settings"]] == ["--temperature", "--batch-size"]
    assert "--temperature" in with_plugin(plugin, "run", "--help").stdout
    r = with_plugin(plugin, "run", "--method", "toy", "--data", small_tree, "--temperature", "2.5", "--out", tmp_path / "t")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert m["method"] == "toy" and m["temperature"] == 2.5 and m["n_images"] == 60 and "toy at temperature 2.5" in r.stdout
    r = with_plugin(plugin, "run", "--method", "zeroshot", "--data", small_tree, "--out", tmp_path / "z")
    z = json.loads((tmp_path / "z" / "metrics.json").read_text())
    assert z["top1"] == m["top1"], "a temperature does not change the argmax"
    r = with_plugin(plugin, "compare", "--methods", "zeroshot,toy", "--data", small_tree, "--temperature", "0.5",
                    "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "c" / "table.json").read_text())
    assert [x["method"] for x in rows] == ["zeroshot", "toy"]
    assert "temperature" in (tmp_path / "c" / "table.md").read_text().splitlines()[0]
    assert json.loads((tmp_path / "c" / "toy" / "metrics.json").read_text())["temperature"] == 0.5
    for bad, words in [(["--alpha", "0.1"], "--alpha does not apply to toy"),
                       (["--temperature", "0"], "--temperature must be positive")]:
        r = with_plugin(plugin, "run", "--method", "toy", "--data", small_tree, *bad, "--out", tmp_path / "x")
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = latteclip("run", "--method", "toy")                                   # without the plug-in: not a method
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_a_broken_plugin_is_one_sentence(plugin, tmp_path):
    (plugin / "toy_latteclip_method.py").write_text("raise ImportError('missing dependency frobnicate')\n")
    r = with_plugin(plugin, "methods")
    assert r.returncode == 2 and "toy" in r.stderr and "frobnicate" in r.stderr and "Traceback" not in r.stderr


def test_a_second_method_of_the_same_name_is_refused():
    from latteclip.methods import Method, register, load
    from latteclip.core import LatteError
    load()
    with pytest.raises(LatteError, match="registered already"):
        register(Method("latteclip", dict, lambda ctx: None))


def test_run_method_refuses_a_setting_in_python_too(small_tree, tmp_path):
    from latteclip.methods import run_method
    from latteclip.core import LatteError
    with pytest.raises(LatteError, match="dac does not take --epochs"):
        run_method("dac", data=small_tree, out=tmp_path / "d", epochs=2)
    assert not (tmp_path / "d").exists()
