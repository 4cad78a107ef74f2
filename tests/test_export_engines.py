"""ONNX export (names, dynamic axes, opset, metadata, fp16 islands), engines, cache, bad input."""
import copy
import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import hw2rt.engines.weights as engines_pkg  # where cached_onnx calls export_onnx
from hw2rt.checkpoints import file_sha256, save_checkpoint
from hw2rt.engines import OrtEngine, TorchEngine, check_feeds, open_engine
from hw2rt.errors import Hw2rtError
from hw2rt.export import (
    export_checkpoint,
    export_onnx,
    fold_batchnorm,
    read_metadata,
    state_dict_sha256,
    to_fp16,
)
from hw2rt.models import build_model, get_spec
from hw2rt.models.face_unet import TimeEmbedding
from hw2rt.parity import run_parity

SMALL = {"face_unet": {"base": 32}, "digit_unet": {"n_feat": 16}, "dann": {}, "digit_classifier": {}}
DIMS = {"face_unet": {"height": 32, "width": 32}}
MODELS = list(SMALL)


def small_net(model, seed=0):
    torch.manual_seed(seed)
    return build_model(model, SMALL[model]).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(model, precision) -> (net, path): one export per pair for the whole module."""
    root, made = tmp_path_factory.mktemp("onnx"), {}

    def get(model, precision="fp32"):
        if (model, precision) not in made:
            net = small_net(model)
            path = export_onnx(net, model, root / f"{model}.{precision}.onnx", precision=precision,
                               dims=DIMS.get(model))
            made[model, precision] = (net, path)
        return made[model, precision]

    return get


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
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in (*m.graph.input, *m.graph.output))
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
    assert meta["source_sha256"] == file_sha256(ckpt) and meta["model"] == "digit_unet" and meta["precision"] == "fp16"


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
    weights = [inits[n.input[1]] for n in m.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in inits]
    assert len(weights) > 100 and all(w.data_type == F16 for w in weights)
    fp32_consts = [i for i in inits.values() if i.data_type == F32]
    assert fp32_consts and all(np.prod(i.dims) <= 256 for i in fp32_consts)
    assert [list(i.dims) for i in fp32_consts].count([1, 16]) == 1
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[0]] == F16 and types[n.output[0]] == F16 for n in convs)
    # The islands: sin/cos of the timestep, GroupNorm statistics (InstanceNormalization), softmax in fp32.
    islands = {op: [n for n in m.graph.node if n.op_type == op] for op in ("Sin", "Cos", "InstanceNormalization", "Softmax")}
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


# --- cache ----------------------------------------------------------------------------------------------

@pytest.fixture
def count_exports(monkeypatch):
    calls = []
    real = engines_pkg.export_onnx

    def counting(*args, **kwargs):
        calls.append(kwargs.get("precision"))
        return real(*args, **kwargs)

    monkeypatch.setattr(engines_pkg, "export_onnx", counting)
    return calls


def test_cache_hit_then_corrupt_byte_rebuilds(tmp_path, count_exports):
    net = small_net("digit_unet")
    ckpt = tmp_path / "digits.safetensors"
    save_checkpoint(net, "digit_unet", ckpt, half=False)
    cache = tmp_path / "cache"

    first = open_engine("digit_unet", ckpt, backend="ort", cache_dir=cache)
    entry = first.cache_entry
    assert entry.built and count_exports == ["fp32"]
    manifest = json.loads(entry.manifest.read_text())
    assert manifest["sha256"] == file_sha256(entry.path)
    assert manifest["parts"]["source_sha256"] == file_sha256(ckpt)
    assert manifest["parts"]["precision"] == "fp32" and manifest["parts"]["opset"] >= 18
    mtime = entry.path.stat().st_mtime_ns
    feeds = get_spec("digit_unet").example_inputs(2)
    before = first.run(feeds)["eps"]

    second = open_engine("digit_unet", ckpt, backend="ort", cache_dir=cache)
    assert not second.cache_entry.built and second.cache_entry.reason == "hit"
    assert count_exports == ["fp32"] and entry.path.stat().st_mtime_ns == mtime

    data = bytearray(entry.path.read_bytes())  # flip one byte inside the weights, same size
    data[len(data) // 2] ^= 0xFF
    entry.path.write_bytes(bytes(data))
    third = open_engine("digit_unet", ckpt, backend="ort", cache_dir=cache)
    assert third.cache_entry.built and "hash" in third.cache_entry.reason
    assert count_exports == ["fp32", "fp32"]
    assert file_sha256(entry.path) == json.loads(entry.manifest.read_text())["sha256"]
    torch.testing.assert_close(third.run(feeds)["eps"], before, rtol=0, atol=0)

    fp16 = open_engine("digit_unet", ckpt, backend="ort", precision="fp16", cache_dir=cache)
    assert fp16.cache_entry.built and fp16.cache_entry.path != entry.path and fp16.precision == "fp16"


def test_cache_stale_manifest_and_env_var(tmp_path, monkeypatch, count_exports):
    monkeypatch.setenv("HW2RT_CACHE", str(tmp_path / "envcache"))
    net = small_net("digit_classifier")
    entry = open_engine("digit_classifier", net, backend="ort").cache_entry
    assert entry.path.is_relative_to(tmp_path / "envcache")
    m = json.loads(entry.manifest.read_text())
    m["key"] = "0" * 64  # a manifest that belongs to another key
    entry.manifest.write_text(json.dumps(m))
    again = open_engine("digit_classifier", net, backend="ort").cache_entry
    assert again.built and again.reason == "stale manifest" and len(count_exports) == 2
    with torch.no_grad():  # other weights: another key, another entry
        net.fc3.bias.add_(1.0)
    other = open_engine("digit_classifier", net, backend="ort").cache_entry
    assert other.built and other.key != entry.key


# --- engines: bad artefacts and requests ----------------------------------------------------------

def test_foreign_truncated_missing_and_wrong_model_onnx(tmp_path, exported):
    foreign = tmp_path / "foreign.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(Hw2rtError, match="foreign.onnx: not an hw2rt export"):
        OrtEngine(foreign)

    _, good = exported("digit_classifier")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(Hw2rtError, match="truncated.onnx: not a loadable ONNX model"):
        open_engine("digit_classifier", truncated, backend="ort")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    with pytest.raises(Hw2rtError, match="garbage.onnx"):
        OrtEngine(garbage)
    with pytest.raises(Hw2rtError, match="missing.onnx: ONNX file not found"):
        OrtEngine(tmp_path / "missing.onnx")
    with pytest.raises(Hw2rtError, match="holds a digit_classifier graph, but this needs a dann"):
        open_engine("dann", good, backend="ort")
    with pytest.raises(Hw2rtError, match="is an fp32 graph, but fp16 was asked for"):
        open_engine("digit_classifier", good, backend="ort", precision="fp16")
    with pytest.raises(Hw2rtError, match="runs on the ort backend"):
        open_engine("digit_classifier", good, backend="torch")
    with pytest.raises(Hw2rtError, match="holds no torch module"):
        run_parity("digit_classifier", good)  # the torch reference needs the checkpoint
    engine = open_engine("digit_classifier", good)  # auto on the CPU: ort, precision from the file
    assert engine.backend == "ort" and engine.precision == "fp32" and engine.metadata["model"] == "digit_classifier"


def test_requests_a_backend_cannot_serve():
    net = small_net("digit_classifier")
    with pytest.raises(Hw2rtError, match="fp16 only on CUDA"):
        open_engine("digit_classifier", net, backend="torch", precision="fp16")
    with pytest.raises(Hw2rtError, match="fp16 only on CUDA"):
        TorchEngine(net, "digit_classifier", precision="fp16", device="cpu")
    with pytest.raises(Hw2rtError, match="unknown backend"):
        open_engine("digit_classifier", net, backend="tensorflow")
    with pytest.raises(Hw2rtError, match="unknown precision"):
        open_engine("digit_classifier", net, backend="torch", precision="int8")
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(Hw2rtError, match="TensorRT"):
            open_engine("digit_classifier", net, backend="trt")
    if not torch.cuda.is_available():
        with pytest.raises(Hw2rtError, match="cuda"):
            open_engine("digit_classifier", net, backend="torch", device="cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(Hw2rtError, match="onnxruntime-gpu"):
            open_engine("digit_classifier", net, backend="ort", device="cuda", cache_dir=None)


# --- engines: feeds -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digit_engines(exported):
    net, path = exported("digit_unet")
    return {"torch": TorchEngine(net, "digit_unet"), "ort": OrtEngine(path, model="digit_unet")}


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_bad_feeds_are_clear_errors(digit_engines, backend):
    engine = digit_engines[backend]
    good = get_spec("digit_unet").example_inputs(2)
    cases = [
        ({k: v for k, v in good.items() if k != "c"}, r"missing 'c'.*inputs are x, c, t, mask"),
        ({**good, "extra": good["t"]}, r"unexpected 'extra'"),
        ({**good, "x": good["x"].double()}, r"'x' has dtype torch.float64, expected torch.float32"),
        ({**good, "c": good["c"].int()}, r"'c' has dtype torch.int32, expected torch.int64"),
        ({**good, "x": good["x"][0]}, r"'x' has shape \[3, 28, 28\], expected \[batch, 3, 28, 28\]"),
        ({**good, "x": torch.zeros(2, 3, 27, 28)}, r"'x' has shape \[2, 3, 27, 28\]"),
        ({**good, "t": torch.rand(3)}, r"'t' has batch 3 but 'x' has 2"),
        ({**good, "mask": [0.0, 1.0]}, r"'mask' must be a torch tensor or numpy array"),
    ]
    for feeds, message in cases:
        with pytest.raises(Hw2rtError, match=message):
            engine.run(feeds)
    with pytest.raises(Hw2rtError, match="expected 4 inputs"):
        engine(good["x"], good["c"])
    with pytest.raises(Hw2rtError, match="feeds must be a dict"):
        engine.run([good["x"]])


def test_numpy_feeds_positional_call_and_max_batch(digit_engines, exported):
    good = get_spec("digit_unet").example_inputs(2)
    for engine in digit_engines.values():
        as_torch = engine.run(good)["eps"]
        as_numpy = engine.run({k: v.numpy() for k, v in good.items()})["eps"]
        assert isinstance(as_numpy, torch.Tensor) and as_numpy.device == engine.device
        torch.testing.assert_close(as_numpy, as_torch, rtol=0, atol=0)
        torch.testing.assert_close(engine(*good.values()), as_torch, rtol=0, atol=0)
    _, path = exported("digit_unet")
    small = OrtEngine(path, max_batch=2)
    small.run(good)
    with pytest.raises(Hw2rtError, match="batch 3 exceeds this engine's max_batch 2"):
        small.run(get_spec("digit_unet").example_inputs(3))
    small.close()
    with pytest.raises(Hw2rtError, match="closed"):
        small.run(good)


def test_face_size_error_names_the_engine(exported):
    _, path = exported("face_unet")
    engine = OrtEngine(path)
    bad = get_spec("face_unet").example_inputs(1, height=40, width=40)  # not a multiple of 32
    with pytest.raises(Hw2rtError, match=r"face_unet \(ort .*onnxruntime failed"):
        engine.run(bad)


def test_check_feeds_returns_spec_order():
    spec = get_spec("digit_unet")
    feeds = spec.example_inputs(1)
    shuffled = {k: feeds[k] for k in reversed(list(feeds))}
    assert list(check_feeds(spec.inputs, shuffled)) == ["x", "c", "t", "mask"]
