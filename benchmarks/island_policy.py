"""The fp32-island policy of the torch backend, measured on the CPU against the parity budgets.

    PYTHONPATH=. python3 benchmarks/island_policy.py        # ~2 min on 2 cores

For every network (a damped random model of parity's small configuration, and the bundled one) it
runs parity's per-call check (batch 4) and end-to-end check (faces: 20 DDIM steps; digits: the
ancestral DDPM, T = 50) on three candidates:
    fp16 policy        engines/torch.py's module (time embedding fp32), as the torch backend runs it
    fp16 graph islands the exported graph's conversion (export/fp16.py: + GroupNorm and softmax fp32)
    bf16 policy        engines/torch.py's module in bf16, through the torch engine
torch's CPU fp16 kernels stand in for CUDA's (the torch backend refuses CPU fp16 for speed, not
accuracy); what the islands cost on a GPU only a GPU can measure.
"""
import torch

from hw2rt.checkpoints import ASSETS, load_model
from hw2rt.engines import Engine, open_engine
from hw2rt.engines.torch import reduced_precision_module
from hw2rt.export import to_fp16
from hw2rt.models import get_spec
from hw2rt.verify.parity import BUDGETS, LAST_CONV, SMALL, end_to_end, per_call, random_model


class ModuleEngine(Engine):
    """A reduced-precision module behind the Engine interface, on the CPU (spec dtypes at the edges)."""

    backend = "torch"

    def __init__(self, module, model, precision):
        spec = get_spec(model)
        super().__init__(model, spec.inputs, spec.outputs, precision=precision)
        self.module, self.dtype = module, {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    def _run(self, feeds):
        args = [v.to(self.dtype) if v.is_floating_point() else v
                for v in (feeds[s.name] for s in self.inputs)]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {s.name: o.to(s.dtype).contiguous() for s, o in zip(self.outputs, out)}


def candidates(net, model):
    yield "fp16 policy", "fp16", ModuleEngine(reduced_precision_module(net, model, "fp16"), model, "fp16")
    # to_fp16's module casts its own inputs and outputs: fp32 in and out.
    yield "fp16 graph islands", "fp16", ModuleEngine(to_fp16(net), model, "fp16")
    yield "bf16 policy", "bf16", open_engine(model, net, backend="torch", precision="bf16")


def main():
    torch.set_num_threads(2)
    cases = [(f"{m} random{' (damped)' if m in LAST_CONV else ''}", m, random_model(m, SMALL[m][0], seed=0),
              SMALL[m][1]) for m in ("face_unet", "digit_unet", "dann", "digit_classifier")]
    for name, model in (("face_unet", "face_unet"), ("digit_unet", "digit_unet"), ("dann_usps", "dann"),
                        ("digit_classifier", "digit_classifier")):
        net = load_model(ASSETS / f"{name}.safetensors", model)[0].float().eval()
        cases.append((f"{name} bundled", model, net,
                      {"height": 32, "width": 32} if model == "face_unet" else {}))
    print("| network | candidate | per call: needs rtol (budget) | end to end: image MSE (budget) | |")
    print("|---|---|---|---|---|")
    for label, model, net, dims in cases:
        reference = open_engine(model, net, backend="torch", precision="fp32")
        for cand_name, precision, engine in candidates(net, model):
            budget = BUDGETS[precision]
            pc = per_call(reference, engine, batch=4, dims=dims, rel_budget=budget["per_call_rel_max_abs"])
            e2e = end_to_end(reference, engine, images=2, dims=dims, budget=budget["e2e_image_mse_255"])
            rtol = max(o["required_rtol"] for o in pc["outputs"].values())
            image = f"{e2e['mean_image_mse_255']:.3g} ({budget['e2e_image_mse_255']})" if e2e else "-"
            ok = pc["passed"] and (e2e is None or e2e["passed"])
            print(f"| {label} | {cand_name} | {rtol:.2g} ({budget['per_call_rel_max_abs']:g}) | {image} | "
                  f"{'ok' if ok else 'over budget'} |", flush=True)


if __name__ == "__main__":
    main()
