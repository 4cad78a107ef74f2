"""The assignment's drop-in scripts call hw2rt with the assignment's argument order."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hw2rt.io import read_labels_csv
from hw2rt.models import build_model

SCRIPTS = Path(__file__).parents[2] / "scripts"
HW2RT = str(Path(sys.executable).parent / "hw2rt")


def sh(*args):
    env = {**os.environ, "HW2RT": HW2RT}
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def test_usage_errors():
    for script, n in (("hw2_1.sh", 1), ("hw2_2.sh", 3), ("hw2_3.sh", 2)):
        r = sh(SCRIPTS / script)
        assert r.returncode == 2 and "usage" in r.stderr, script


def test_hw2_2_runs_ddim_on_a_unet_pt(tmp_path):
    torch.manual_seed(0)
    net = build_model("face_unet", {"base": 32})
    torch.save(net.state_dict(), tmp_path / "UNet.pt")
    (tmp_path / "noise").mkdir()
    torch.save(torch.randn(1, 3, 32, 32), tmp_path / "noise" / "00.pt")
    r = sh(SCRIPTS / "hw2_2.sh", tmp_path / "noise", tmp_path / "out", tmp_path / "UNet.pt")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "00.png").is_file()
    # the fastest precision the bundled face UNet passed its gate in, on this CPU, said in one line
    from hw2rt.engines.auto import choose
    assert r.stdout.splitlines()[0] == choose("face_unet", "auto", "cpu").line()


@pytest.mark.parametrize("domain", ["usps", "svhn"])
def test_hw2_3_picks_the_model_from_the_path(tmp_path, domain):
    folder = tmp_path / "hw2_data" / "digits" / domain / "data"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    r = sh(SCRIPTS / "hw2_3.sh", folder, tmp_path / "pred.csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("auto: ")
    assert [n for n, _ in read_labels_csv(tmp_path / "pred.csv")] == ["00000.png", "00001.png", "00002.png"]


def test_hw2_1_runs_the_few_step_setting_the_table_chose():
    """hw2_1.sh passes the sampler, steps and eta of jobs.FAST_SAMPLER / FAST_STEPS / FAST_ETA (what the
    demo and the bench run), with x0 clipping left at its default."""
    from hw2rt.runtime.jobs import DEFAULT_CLIP, FAST_ETA, FAST_SAMPLER, FAST_STEPS

    words = (SCRIPTS / "hw2_1.sh").read_text().split("exec", 1)[1].split()
    assert words[words.index("--sampler") + 1] == FAST_SAMPLER
    assert words[words.index("--steps") + 1] == str(FAST_STEPS)
    assert float(words[words.index("--eta") + 1] if "--eta" in words else 0) == FAST_ETA
    assert "--no-x0-clip" not in words and DEFAULT_CLIP[FAST_SAMPLER] is True


def test_every_script_lets_auto_choose_backend_and_precision():
    """The scripts run the fastest precision whose gate the bundled model passed, on the backend measured
    fastest for it on this CPU kind (engines/auto.py), and print the choice."""
    for script in ("hw2_1.sh", "hw2_2.sh", "hw2_3.sh"):
        words = (SCRIPTS / script).read_text().split("exec", 1)[1].split()
        assert words[words.index("--backend") + 1] == "auto"
        assert words[words.index("--precision") + 1] == "auto"
