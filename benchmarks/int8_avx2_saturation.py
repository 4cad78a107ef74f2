"""What ONNX Runtime's int8 convolutions compute on an x86 CPU without VNNI (AVX2, e.g. Zen 3; AVX-512
before VNNI), emulated exactly on any CPU.

There, MLAS's u8 x s8 kernels multiply with vpmaddubsw: the products of two adjacent elements of the
contraction (for a conv, two adjacent input channels at one filter tap: the filter is reordered to HWIO)
are added into a signed int16 with saturation, then widened and summed in int32. A VNNI CPU (vpdpbusd)
sums in int32 throughout. A pair a0*w0 + a1*w1 (a: uint8 activations, w: int8 weights) over 32767 is
therefore clipped on AVX2 only. With full-range weights ([-127, 127]) that can happen; with hw2rt's "ort"
weights on such a CPU ([-64, 64], export/int8.py) it cannot: 255 * (64 + 64) = 32640.

For both weight ranges, quantized from one calibration (the model's own loop, runtime/calibration.py),
over those calibration feeds: per convolution ONNX Runtime runs as an integer kernel, the fraction of
pairs that saturate and the error the clipping adds to the conv's integer sums (rms, relative to their
rms); and each graph's per-call error against torch fp32 (parity's per-call check).

    PYTHONPATH=. .venv/bin/python benchmarks/int8_avx2_saturation.py [--model digit_unet] [--samples 4]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from hw2rt.checkpoints import file_sha256, load_model, resolve_checkpoint
from hw2rt.engines import OrtEngine, TorchEngine
from hw2rt.export import export_onnx
from hw2rt.export.int8 import FULL_RANGE, REDUCED_RANGE, quantize_int8
from hw2rt.runtime.calibration import calibration_recipe, record_calibration
from hw2rt.verify.parity import BUDGETS, per_call

INT16 = (-32768, 32767)
INTEGER_KERNELS = ("QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger")


def integer_nodes(path: Path) -> list:
    """The names of the QDQ graph's Conv/Gemm/MatMul nodes that ONNX Runtime's CPU provider fuses into
    integer kernels (its optimized graph names them after the node they replace)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(opts.optimized_model_filepath).graph
    fused = [n.name for n in optimized.node if n.op_type in INTEGER_KERNELS]
    graph = onnx.load(str(path)).graph
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
            and any(f == n.name or f.startswith(n.name + "_token") for f in fused)]


def contraction(node, x: torch.Tensor, w: np.ndarray, zero_point: int):
    """(A [N, K, L], W [O, K]) as MLAS contracts them: K ordered tap-major, channel-minor for a conv."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    W = torch.from_numpy(w.astype(np.int32))
    if node.op_type == "Conv":
        if attrs.get("group", 1) != 1:
            raise ValueError(f"{node.name}: grouped convs are not emulated")
        kernel, pads = tuple(W.shape[2:]), attrs.get("pads", [0, 0, 0, 0])
        padded = torch.nn.functional.pad(x.float(), (pads[1], pads[3], pads[0], pads[2]), value=zero_point)
        cols = torch.nn.functional.unfold(padded, kernel, dilation=attrs.get("dilations", [1, 1]),
                                          stride=attrs.get("strides", [1, 1])).to(torch.int32)
        n, c, taps = x.shape[0], x.shape[1], kernel[0] * kernel[1]
        cols = cols.view(n, c, taps, -1).transpose(1, 2).reshape(n, taps * c, -1)
        return cols, W.view(W.shape[0], c, taps).transpose(1, 2).reshape(W.shape[0], taps * c)
    W = W.T if attrs.get("transB", 0) else W  # Gemm / MatMul: [K, O]
    return x.reshape(-1, W.shape[0]).unsqueeze(-1), W.T.contiguous()


def saturation(cols: torch.Tensor, W: torch.Tensor, zero_point: int) -> tuple:
    """(saturated pairs, pairs, added error [N, O, L], exact sums [N, O, L]) of the vpmaddubsw
    contraction of uint8 `cols` [N, K, L] with int8 `W` [O, K]."""
    if cols.shape[1] % 2:  # MLAS pads K with zeros
        cols, W = torch.nn.functional.pad(cols, (0, 0, 0, 1)), torch.nn.functional.pad(W, (0, 1))
    a0, a1, w0, w1 = cols[:, 0::2], cols[:, 1::2], W[:, 0::2], W[:, 1::2]
    exact = torch.einsum("nkl,ok->nol", (cols - zero_point).double(), W.double())
    err = torch.zeros_like(exact)
    o_i, k_i = torch.nonzero((w0.abs() + w1.abs()) * 255 > INT16[1], as_tuple=True)  # the only pairs that can
    saturated = 0
    for s in range(0, len(o_i), 2048):
        o, k = o_i[s:s + 2048], k_i[s:s + 2048]
        pair = a0[:, k, :] * w0[o, k][None, :, None] + a1[:, k, :] * w1[o, k][None, :, None]
        d = (pair.clamp(*INT16) - pair).double()
        saturated += int((d != 0).sum())
        err.index_add_(1, o, d)
    return saturated, a0.shape[0] * a0.shape[2] * w0.numel(), err, exact


def audit(path: Path, feeds: list) -> dict:
    """{node: {saturated, pairs, rel_rms}} of `path`'s integer nodes over `feeds`."""
    names = integer_nodes(path)
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    plan = []
    for name in names:
        node = nodes[name]
        act, wgt = producer[node.input[0]], producer[node.input[1]]
        if wgt.input[0] not in inits:  # activation x activation: u8 x u8, vpmaddwd sums pairs in int32
            continue
        plan.append((node, act.input[0], int(inits[act.input[2]]), inits[wgt.input[0]]))
        model.graph.output.append(onnx.helper.make_tensor_value_info(act.input[0], onnx.TensorProto.UINT8,
                                                                     None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the QDQ tensors as written
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    totals = {node.name: [0, 0, 0.0, 0.0] for node, *_ in plan}
    for feed in feeds:
        outs = session.run([p[1] for p in plan], {k: feed[k].numpy() for k in inputs})
        for (node, _, zero_point, w), u8 in zip(plan, outs):
            cols, W = contraction(node, torch.from_numpy(u8.astype(np.int32)), w, zero_point)
            sat, pairs, err, exact = saturation(cols, W, zero_point)
            t = totals[node.name]
            t[0] += sat
            t[1] += pairs
            t[2] += float((err ** 2).sum())
            t[3] += float((exact ** 2).sum())
    return {k: {"saturated": s, "pairs": p, "rel_rms": (e / r) ** 0.5} for k, (s, p, e, r) in totals.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="digit_unet", choices=["digit_unet", "face_unet"])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--samples", type=int, default=4, help="rows of each calibration batch audited")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    path = resolve_checkpoint(args.checkpoint, args.model)
    net, _, _ = load_model(path, args.model)
    reference = TorchEngine(net, args.model)
    recipe = calibration_recipe(args.model)
    feeds = record_calibration(reference, recipe)
    # the first rows of each half of a batch (the digits: its conditional and its unconditional half)
    half = len(feeds[0]["x"]) // 2
    rows = sorted({*range(min(args.samples // 2 or 1, half)), *range(half, half + args.samples // 2)})
    audited = [{k: v[rows] if v.dim() else v for k, v in f.items()} for f in feeds]
    results, calls = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(net, args.model, Path(tmp) / "fp32.onnx", source_sha256=file_sha256(path))
        for top in (FULL_RANGE, REDUCED_RANGE):
            graph = quantize_int8(fp32, Path(tmp) / f"int8-{top}.onnx", feeds, calibration=recipe,
                                  weights=top)
            results[top] = audit(graph, audited)
            engine = OrtEngine(graph, threads=args.threads)
            calls[top] = per_call(reference, engine, rel_budget=BUDGETS["int8"]["per_call_rel_max_abs"])
            engine.close()
    print(f"{args.model}, {len(feeds)} calibration batches x {len(rows)} rows audited, "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| integer conv | weights [-127, 127]: saturated pairs | added error (rms, rel.) "
          "| weights [-64, 64]: saturated pairs |")
    print("|---|---|---|---|")
    for name, full in results[FULL_RANGE].items():
        reduced = results[REDUCED_RANGE][name]
        print(f"| {name} | {full['saturated'] / full['pairs']:.1e} | {full['rel_rms']:.1e} "
              f"| {reduced['saturated']} of {reduced['pairs']:,} |")
    print("\n| weights | per call: needs rtol | MSE | cosine |")
    print("|---|---|---|---|")
    for top, report in calls.items():
        for out, stats in report["outputs"].items():
            print(f"| [-{top}, {top}] ({out}) | {stats['required_rtol']:.4f} | {stats['mse']:.3g} "
                  f"| {stats['cosine']:.7f} |")


if __name__ == "__main__":
    main()
