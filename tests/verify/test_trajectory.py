"""Parity along whole trajectories: a perturbation injected at one step shows up at that step."""
import json

import pytest
import torch
from click.testing import CliRunner

from hw2rt.cli import main
from hw2rt.engines import TorchEngine
from hw2rt.verify.parity import SMALL, random_model
from hw2rt.verify.trajectory import trajectory_report

STEPS = 8
LOOPS = [("face_unet", "face-ddim", 0.0), ("digit_unet", "digit-ancestral", 0.0),
         ("digit_unet", "digit-ddim", 1.0), ("digit_unet", "digit-dpmpp-2m", 0.0),
         ("digit_unet", "digit-unipc", 0.0)]
# Steps after a forced step that still see its error through the solver's memory: DPM-Solver++(2M) keeps
# the last x0; UniPC also corrects from its last corrected latent, which forcing does not put back.
MEMORY = {"digit-dpmpp-2m": 1, "digit-unipc": None}


class PerturbedAt(TorchEngine):
    """The reference network, with `value` added to its output on every loop's call `step` (one call
    per step: all images run in one chunk)."""

    def __init__(self, net, model, step, value):
        super().__init__(net, model)
        self.step, self.value, self.calls = step, value, 0

    def _run(self, feeds):
        out = super()._run(feeds)
        if self.calls % STEPS == self.step:
            out = {k: v + self.value for k, v in out.items()}
        self.calls += 1
        return out


def _report(model, loop, eta, step, value):
    config, dims = SMALL[model]
    net = random_model(model, config, seed=0)
    x_T = torch.randn(2, 3, *(dims.values() or (28, 28)), generator=torch.Generator().manual_seed(0))
    return trajectory_report(TorchEngine(net, model), PerturbedAt(net, model, step, value), loop=loop,
                             x_T=x_T, steps=STEPS, eta=eta, rel_budget=1e-4)


@pytest.mark.parametrize("model,loop,eta", LOOPS)
def test_a_perturbation_at_one_step_is_found_at_that_step(model, loop, eta):
    report = _report(model, loop, eta, step=3, value=0.05)
    assert report["steps"] == STEPS and not report["passed"] and report["nonfinite"] is None
    free, forced = report["free"]["per_step"], report["forced"]["per_step"]
    # the same network before the perturbation: bit-identical steps, then over budget at step 3
    assert all(s["max_abs"] == 0 for s in free[:3])
    assert report["free"]["first_over_budget"] == 3 == report["forced"]["first_over_budget"]
    # forced: the error is that step's alone; the steps after it are put back on the reference's latent
    assert forced[3]["rel"] > 1e-3
    memory = MEMORY.get(loop, 0)
    if memory is not None:
        assert all(s["max_abs"] == 0 for s in forced[4 + memory:])
        assert all(s["max_abs"] > 0 for s in forced[3:4 + memory])
    assert all(s["max_abs"] > 0 for s in free[3:])  # free: it drifts on
    assert forced[3]["x0_max_abs"] > 0 and forced[3]["t"] == free[3]["t"]


def test_nan_is_a_named_failure():
    report = _report("digit_unet", "digit-ancestral", 0.0, step=5, value=float("nan"))
    assert not report["passed"]
    assert report["nonfinite"] == {"run": "free", "step": 5, "t": report["free"]["per_step"][5]["t"],
                                   "tensor": "x"}


def test_cli_writes_json_and_plot(tmp_path):
    out = tmp_path / "p.json"
    result = CliRunner().invoke(main, ["parity", "--model", "digit_unet", "--backend", "ort",
                                       "--threads", "1", "--no-e2e", "--trajectory", "--sampler", "ddim",
                                       "--steps", "6", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "trajectory (digit-ddim, 6 steps" in result.output
    traj = json.loads(out.read_text())["trajectory"]
    assert traj["loop"] == "digit-ddim" and traj["steps"] == 6 and traj["passed"] is True
    for run in ("free", "forced"):
        assert len(traj[run]["per_step"]) == 6 and traj[run]["first_over_budget"] is None
        assert set(traj[run]["per_step"][0]) == {"t", *traj["statistics"]}
    assert [s["t"] for s in traj["free"]["per_step"]] == sorted((s["t"] for s in traj["free"]["per_step"]),
                                                                 reverse=True)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_trajectory_of_a_classifier(tmp_path):
    result = CliRunner().invoke(main, ["parity", "--model", "dann", "--trajectory", "--json",
                                       str(tmp_path / "p.json")])
    assert result.exit_code == 1 and "has no sampler" in result.output
    assert not (tmp_path / "p.json").exists()
