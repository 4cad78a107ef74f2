"""The ONNX graphs the TensorRT backend builds from, checked for TensorRT: the documented opset, only
operators TensorRT's ONNX parser imports (hw2rt.engines.trt.TRT_ONNX_OPS), and strongly typed-clean: every
tensor's type determined and no implicit cast needed (ONNX's strict type inference), with the fp16 graph's
fp32 islands behind explicit Casts."""
import onnx
import pytest
from onnx import TensorProto

from hw2rt.engines.trt import TRT_ONNX_OPS, unsupported_ops
from hw2rt.export import DEFAULT_OPSET
from tests.helpers import SMALL

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def typed(path):
    """The graph with every tensor's elem type, by ONNX's strict type inference (raises on a type clash)."""
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    for node in g.node:
        if node.op_type == "Constant":
            types[node.output[0]] = node.attribute[0].t.data_type
    return inferred, types


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("model", list(SMALL))
def test_exports_are_what_tensorrt_imports_and_strongly_typed(exported, model, precision):
    _, path = exported(model, precision)
    inferred, types = typed(path)
    opsets = {o.domain: o.version for o in inferred.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == DEFAULT_OPSET == 18
    assert unsupported_ops(path) == [], unsupported_ops(path)
    assert all(n.domain in ("", "ai.onnx") for n in inferred.graph.node)  # no custom (plugin) domains
    untyped = [t for n in inferred.graph.node for t in n.output if t and types.get(t, 0) == 0]
    assert not untyped, f"tensors without a determined type: {untyped[:5]}"
    for node in inferred.graph.node:
        if node.op_type == "OneHot":  # TensorRT: `depth` must be a build-time constant
            const = {o for n in inferred.graph.node if n.op_type == "Constant" for o in n.output}
            assert node.input[1] in const | {i.name for i in inferred.graph.initializer}
    floats = {types[t] for n in inferred.graph.node for t in n.input if t and types.get(t) in (FLOAT, HALF)}
    assert floats == ({FLOAT} if precision == "fp32" else {FLOAT, HALF})


def test_the_fp16_graph_keeps_its_islands_fp32_behind_explicit_casts(exported):
    _, path = exported("face_unet", "fp16")
    inferred, types = typed(path)
    nodes = inferred.graph.node
    ins = {n.op_type: {types[t] for m in nodes if m.op_type == n.op_type for t in m.input[:1]} for n in nodes}
    assert ins["Conv"] == {HALF}  # the interior runs in fp16
    assert ins["Sin"] == ins["Cos"] == {FLOAT}  # the timestep embedding
    assert ins["InstanceNormalization"] == ins["Softmax"] == {FLOAT}  # GroupNorm statistics, attention
    producer = {o: n for n in nodes for o in n.output}
    for n in nodes:
        if n.op_type in ("InstanceNormalization", "Softmax"):
            source = producer.get(n.input[0])
            while source is not None and source.op_type in ("Reshape", "Transpose", "Identity"):
                source = producer.get(source.input[0])
            assert source is not None and source.op_type == "Cast", (n.name, source and source.op_type)
    assert TRT_ONNX_OPS >= {"Cast", "Conv", "InstanceNormalization", "Softmax", "Sin", "Cos", "Einsum",
                            "Resize"}


def test_the_type_check_catches_an_implicit_cast(tmp_path):
    """A mixed-precision Add (what a broken fp16 conversion emits) is what `typed` refuses."""
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "g",
                              [helper.make_tensor_value_info("a", HALF, [2]),
                               helper.make_tensor_value_info("b", FLOAT, [2])],
                              [helper.make_tensor_value_info("c", FLOAT, [2])])
    path = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(onnx.shape_inference.InferenceError, match="inconsistent type"):
        typed(path)
