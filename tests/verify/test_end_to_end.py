"""Whole samplers on ORT vs torch fp32: DDIM faces and guided DDPM digits, image MSE on 0..255."""
import json

import pytest

from hw2rt.verify.parity import BUDGETS, end_to_end, format_report, parity_report, run_parity


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ddim_faces_end_to_end(engines, precision):
    ref, cand, dims = engines("face_unet", precision)
    result = end_to_end(ref, cand, images=2, seed=0, dims=dims, steps=20,
                        budget=BUDGETS[precision]["e2e_image_mse_255"])
    assert (result["sampler"].startswith("ddim") and result["steps"] == 20
            and len(result["image_mse_255"]) == 2)
    assert result["passed"], f"faces {precision}: image MSE {result['image_mse_255']}"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ddpm_digits_end_to_end(engines, precision):
    ref, cand, dims = engines("digit_unet", precision)
    result = end_to_end(ref, cand, images=3, seed=1, dims=dims, steps=30,
                        budget=BUDGETS[precision]["e2e_image_mse_255"])
    assert result["sampler"].startswith("ddpm") and result["steps"] == 30
    assert result["passed"], f"digits {precision}: image MSE {result['image_mse_255']}"


def test_report_is_json_and_prints(engines):
    ref, cand, dims = engines("digit_unet", "fp16")
    report = parity_report(ref, cand, batch=2, dims=dims, steps=10, source={"note": "test"})
    assert report["passed"] is True
    json.loads(json.dumps(report))  # JSON-serialisable as is
    text = format_report(report)
    assert "PASSED" in text and "| eps |" in text and "end to end" in text


def test_run_parity_writes_json(tmp_path):
    out = tmp_path / "report.json"
    report = run_parity("digit_classifier", backend="ort", precision="fp32", threads=1,
                        cache_dir=tmp_path / "cache", json_path=out)
    assert report["passed"] and report["end_to_end"] is None
    assert json.loads(out.read_text())["per_call"]["outputs"]["logits"]["passed"] is True
    assert report["source"]["checkpoint"] is None and "random" in report["source"]["note"]


def test_a_nan_output_is_named_and_a_graphless_candidate_is_not_localized():
    import torch

    from hw2rt.engines import TorchEngine
    from hw2rt.verify.parity import random_model

    class NaNs(TorchEngine):
        def _run(self, feeds):
            return {k: v * float("nan") for k, v in super()._run(feeds).items()}

    net = random_model("digit_classifier")
    report = parity_report(TorchEngine(net, "digit_classifier"), NaNs(net, "digit_classifier"), batch=2,
                           e2e=False)
    assert not report["passed"] and report["per_call"]["outputs"]["logits"]["nonfinite"]
    assert report["localize"]["skipped"] == "the torch engine has no ONNX graph to localize in"
    text = format_report(report)
    assert "NaN/Inf in the candidate's output logits (per call)" in text and "localize: skipped" in text
    assert torch.isfinite(torch.tensor(report["per_call"]["outputs"]["logits"]["scale"]))
