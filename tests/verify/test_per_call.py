"""ORT vs torch fp32, one call, every network at both precisions (small random models)."""
import pytest
import torch

from hw2rt.engines import TorchEngine
from hw2rt.verify.parity import BUDGETS, SMALL, compare_outputs, per_call, random_model

MODELS = ["face_unet", "digit_unet", "dann", "digit_classifier"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("model", MODELS)
def test_ort_matches_torch_per_call(engines, model, precision):
    ref, cand, dims = engines(model, precision)
    budget = BUDGETS[precision]["per_call_rel_max_abs"]
    for batch, seed in ((1, 1), (3, 2)):
        result = per_call(ref, cand, batch=batch, seed=seed, dims=dims, rel_budget=budget)
        for name, s in result["outputs"].items():
            assert s["passed"], f"{model} {precision} {name}: needs rtol {s['required_rtol']:.3g} > {budget}"
            assert s["cosine"] > (1 - 1e-6 if precision == "fp32" else 1 - 1e-4)
            if precision == "fp16":
                # A graph that silently stayed fp32 would sit at ~1e-6: the fp16 interior must show.
                assert s["required_rtol"] > 2e-5, f"{model} {name}: fp16 graph looks like fp32"


def test_face_graph_is_dynamic_in_height_and_width(engines):
    ref, cand, _ = engines("face_unet", "fp32")  # exported at 32x32
    result = per_call(ref, cand, batch=2, seed=3, dims={"height": 64, "width": 32},
                      rel_budget=BUDGETS["fp32"]["per_call_rel_max_abs"])
    assert result["passed"]
    assert result["outputs"]["eps"]["shape"] == [2, 3, 64, 32]


def test_comparator_catches_a_perturbed_model():
    config, _ = SMALL["digit_unet"]
    net = random_model("digit_unet", config)
    bad = random_model("digit_unet", config)
    with torch.no_grad():
        bad.out[3].bias[0].add_(2e-4)  # one output channel shifted by ~0.5 % of the (damped) output scale
    result = per_call(TorchEngine(net, "digit_unet"), TorchEngine(bad, "digit_unet"), batch=2, seed=0,
                      rel_budget=BUDGETS["fp32"]["per_call_rel_max_abs"])
    assert not result["passed"]
    assert 1e-3 < result["outputs"]["eps"]["required_rtol"] < 1e-2


def test_comparator_fails_non_finite_output():
    ref = {"y": torch.ones(2, 3)}
    cand = {"y": torch.tensor([[1.0, float("nan"), 1.0], [1.0, 1.0, 1.0]])}
    stats = compare_outputs(ref, cand, rel_budget=1e-2)["y"]
    assert not stats["passed"] and stats["nonfinite"] and stats["max_abs"] == float("inf")
    exact = compare_outputs(ref, {"y": torch.ones(2, 3)}, rel_budget=1e-4)["y"]
    assert exact["passed"] and exact["max_abs"] == 0 and exact["cosine"] == pytest.approx(1.0)
    assert not exact["nonfinite"]
