"""ONNX export: names, dynamic axes, opset, metadata, fp16 islands."""
import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from hw2rt.checkpoints import file_sha256, save_checkpoint
from hw2rt.errors import Hw2rtError
from hw2rt.export import (
    export_checkpoint,
    export_onnx,
    fold_batchnorm,
    read_metadata,
    state_dict_sha256,
    to_fp16,
)
from hw2rt.models import get_spec
from hw2rt.models.face_unet import TimeEmbedding
from tests.helpers import DIMS, SMALL, small_net

MODELS = list(SMALL)


def ort_run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.numpy() for k, v in feeds.items()})


def elem_types(model: onnx.ModelProto) -> dict:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


# --- export ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_export_names_opset_metadata_and_dynamic_batch(exported, model):
    net, path = exported(model)
    spec = get_spec(model)
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == [s.name for s in spec.inputs]
    assert [o.name for o in m.graph.output] == [s.name for s in spec.outputs]
    assert [i.type.tensor_type.elem_type for i in m.graph.input] == [
        onnx.TensorProto.FLOAT if s.dtype == torch.float32 else onnx.TensorProto.INT64 for s in spec.inputs]
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch"
               for i in (*m.graph.input, *m.graph.output))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 18
    meta = read_metadata(m)
    assert meta["model"] == model and meta["precision"] == "fp32" and int(meta["opset"]) >= 18
    assert json.loads(meta["config"]) == net.config
    assert meta["source_sha256"] == state_dict_sha256(net)
    assert meta["version"] and meta["exporter"] and meta["torch"] == torch.__version__
    for batch in (1, 3):
        feeds = spec.example_inputs(batch, seed=batch, **DIMS.get(model, {}))
        with torch.no_grad():
            ref = net(*feeds.values())
        ref = ref if isinstance(ref, tuple) else (ref,)
        for got, want in zip(ort_run(path, feeds), ref):
            assert got.shape == tuple(want.shape) and got.shape[0] == batch
            np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4 * float(want.abs().max()))


def test_export_refuses_old_opset(tmp_path):
    with pytest.raises(Hw2rtError, match="opset 17"):
        export_onnx(small_net("digit_classifier"), "digit_classifier", tmp_path / "m.onnx", opset=17)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_checkpoint_records_the_file_hash(tmp_path):
    net = small_net("digit_unet")
    ckpt = tmp_path / "digits.safetensors"
    save_checkpoint(net, "digit_unet", ckpt, half=False)
    out = export_checkpoint(ckpt, tmp_path / "digits.onnx", precision="fp16")
    meta = read_metadata(out)
    assert (meta["source_sha256"] == file_sha256(ckpt) and meta["model"] == "digit_unet"
            and meta["precision"] == "fp16")


# --- fp16 -----------------------------------------------------------------------------------------------

def test_fp16_face_graph_is_fp16_with_fp32_islands(exported):
    _, path = exported("face_unet", "fp16")
    m = onnx.load(str(path))
    types = elem_types(m)
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    # I/O keeps the spec dtypes (fp32 x in, int64 t, fp32 eps out).
    assert [types[i.name] for i in m.graph.input] == [F32, onnx.TensorProto.INT64]
    assert types["eps"] == F32
    # Every Conv/Gemm weight and every convolution is fp16; the only fp32 constants are the islands'
    # own (GroupNorm affine [C,1,1], inv_freq [1,16]).
    inits = {i.name: i for i in m.graph.initializer}
    weights = [inits[n.input[1]] for n in m.graph.node
               if n.op_type in ("Conv", "Gemm") and n.input[1] in inits]
    assert len(weights) > 100 and all(w.data_type == F16 for w in weights)
    fp32_consts = [i for i in inits.values() if i.data_type == F32]
    assert fp32_consts and all(np.prod(i.dims) <= 256 for i in fp32_consts)
    assert [list(i.dims) for i in fp32_consts].count([1, 16]) == 1
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[0]] == F16 and types[n.output[0]] == F16 for n in convs)
    # The islands: sin/cos of the timestep, GroupNorm statistics (InstanceNormalization), softmax in fp32.
    islands = {op: [n for n in m.graph.node if n.op_type == op]
               for op in ("Sin", "Cos", "InstanceNormalization", "Softmax")}
    assert all(islands.values()), {k: len(v) for k, v in islands.items()}
    for op, nodes in islands.items():
        for n in nodes:
            assert types[n.input[0]] == F32 and types[n.output[0]] == F32, f"{op} {n.name} not fp32"
    assert sum(n.op_type == "Cast" for n in m.graph.node) > len(islands["Softmax"]) * 2


def test_fp16_graph_runs_on_cpu_and_matches_torch_fp16(exported):
    net, path = exported("face_unet", "fp16")
    spec = get_spec("face_unet")
    feeds = spec.example_inputs(2, seed=5, height=64, width=64)
    got = ort_run(path, feeds)[0]
    assert got.dtype == np.float32
    with torch.no_grad():
        want32 = net(*feeds.values())
        want16 = to_fp16(net)(*feeds.values())  # the module the graph was exported from, in torch
    scale = float(want32.abs().max())
    err32 = np.abs(got - want32.numpy()).max() / scale
    err16 = np.abs(got - want16.numpy()).max() / scale
    assert 1e-5 < err32 < 1e-2  # really fp16, still accurate
    # The torch fp16 module (what torch-fp16 on CUDA runs) agrees to fp16 rounding; the two round
    # at different points (ORT's CPU casts vs torch's kernels), so neither is closer to fp32.
    assert err16 < 1e-2


def test_fp16_conversion_keeps_islands_exact_and_leaves_the_original():
    net = small_net("face_unet")
    half = to_fp16(net)
    emb = next(m for m in half.modules() if isinstance(m, TimeEmbedding))
    assert emb.inv_freq.dtype == torch.float32
    assert torch.equal(emb.inv_freq, net.time[0].inv_freq)  # never rounded through fp16
    norms = [m for m in half.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    assert half.net.down1.weight.dtype == torch.float16
    assert next(net.parameters()).dtype == torch.float32  # the original is untouched


def test_fold_batchnorm_is_exact_enough_and_removes_bn():
    net = small_net("dann")
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = get_spec("dann").example_inputs(4)["x"]
    folded = fold_batchnorm(copy.deepcopy(net))
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules())
    with torch.no_grad():
        for a, b in zip(net(x), folded(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


