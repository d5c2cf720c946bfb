"""Run many `latteclip` command lines through the real entry point (`latteclip.cli.main`) in this one process, each in
its own empty working folder, and write what each did as JSON: exit code, stderr, a traceback if one escaped, the files
it left behind, the files it changed or removed, its seconds. `tests/test_flags.py` starts this as a child process (one Python start-up for a hundred
command lines) and asserts on the JSON.

    python tests/flag_driver.py CASES.json RESULTS.json
"""
import contextlib, io, json, os, sys, time, traceback
from pathlib import Path


def files_under(root:Path)->set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def state_of(root:Path)->dict:
    "Every file and folder below `root`: its size and modification time (a change to either is a file touched)."
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def run_case(argv:list, work:Path, watch:list)->dict:
    "One command line in `work` (made empty); `watch`: other folders whose contents must not change."
    from latteclip.cli import main
    work.mkdir(parents=True, exist_ok=True)
    before = {str(w): state_of(Path(w)) for w in watch}
    err, out, tb, code = io.StringIO(), io.StringIO(), None, None
    cwd, t0 = os.getcwd(), time.time()
    os.chdir(work)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try: code = main(argv)
            except SystemExit as e: code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        tb = traceback.format_exc()
    finally:
        os.chdir(cwd)
    after = {w: state_of(Path(w)) for w in before}
    left = sorted(files_under(work)) + sorted(f"{w}/{f}" for w in before for f in set(after[w]) - set(before[w]))
    lost = sorted(f"{w}/{f}" for w in before for f in before[w] if after[w].get(f) != before[w][f])  # changed or gone
    return dict(argv=argv, code=code, stderr=err.getvalue(), stdout=out.getvalue()[-2000:], traceback=tb,
                left=left, lost=lost, seconds=round(time.time() - t0, 2))


def main(cases_json, results_json):
    os.environ.setdefault("LATTECLIP_QUIET", "1")
    spec = json.loads(Path(cases_json).read_text())
    results = []
    for i, case in enumerate(spec["cases"]):
        results.append(run_case(case["argv"], Path(spec["work"]) / f"case{i:03d}", spec.get("watch", [])))
        Path(results_json).write_text(json.dumps(results, indent=1))        # a hang still leaves the others


if __name__ == "__main__": main(*sys.argv[1:])
