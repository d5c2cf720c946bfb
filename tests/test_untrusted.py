"""Untrusted files: a pickle that would run code is refused with one sentence, and the code never runs."""
import os, pickle, subprocess, sys
from pathlib import Path
import pytest, torch
from conftest import latteclip


class _Evil:
    "Unpickling this runs a shell command that leaves a marker file."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["raw-pickle", "torch-zip"])
def test_malicious_checkpoint_is_refused(tmp_path, fmt):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    payload = {"state_dict": {"visual.proj": _Evil(marker)}}
    if fmt == "raw-pickle": evil.write_bytes(pickle.dumps(payload, protocol=4))
    else: torch.save(payload, evil)
    pickle.loads(pickle.dumps(_Evil(tmp_path / "proof")))                    # the payload is real: plain pickle runs it
    assert (tmp_path / "proof").exists()
    r = latteclip("run", "--method", "zeroshot", "--pretrained", str(evil), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Refused to load" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not marker.exists()


def test_malicious_resume_state_is_refused(embedded, tmp_path):
    from latteclip.core import LatteError
    from latteclip.models import load_clip, TEMPLATE
    from latteclip.texts import Texts
    from latteclip.train import TrainConfig, finetune
    ds = embedded.subset(range(16)).unlabeled(); clip = load_clip(device="cpu"); y = torch.arange(16) % 10
    T = Texts(list(embedded.classes), [TEMPLATE.format(c) for c in embedded.classes], [TEMPLATE.format(embedded.classes[i]) for i in y],
              [[TEMPLATE.format(c)] for c in embedded.classes], [[] for _ in embedded.classes])
    cfg = TrainConfig(method="flyp", epochs=2, batch_size=8, kinds=("class",))
    finetune(clip, ds, y, T, cfg, out=tmp_path, stop_after=1)
    marker = tmp_path / "pwned"
    torch.save({"opt": _Evil(marker)}, tmp_path / "state.pt")                  # someone swapped the optimizer state
    with pytest.raises(LatteError, match="Refused to resume"): finetune(load_clip(device="cpu"), ds, y, T, cfg, out=tmp_path, resume=True)
    assert not marker.exists()
