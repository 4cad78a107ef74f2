"""hw2rt's fp32 islands in an OpenVINO model: what the openvino backend's bf16 keeps in fp32, and how.

bf16 keeps hw2rt's fp32 islands (`engines/torch.fp32_islands`, module names: "time" covers the nodes the
exporter scoped "/time/...") with OpenVINO's own mark, the rt_info `ov::disable_fp16_compression` sets
(DisablePrecisionConversion), which the CPU plugin reads as "keep this node's original precision" under
a bf16 inference precision. Python cannot make that attribute, so the marked model goes through
OpenVINO's IR (XML), whose reader does. Beside the islands, the nodes torch's policy runs in fp32 are
marked, found as torch's type promotion finds them (`_promoted`): an op with an fp32 input outside every
module with weights (an island's output, the network's input), and a cast of integers with what reads it
inside one (the face UNet's sinusoidal timestep embedding). The mark is not copied when the plugin
replaces a node, so what it would replace is rewritten first into what it keeps: marked Unsqueezes of
trailing axes become one Reshape, island MatMuls by a constant (Linear) 1x1 Convolutions (as
FullyConnected they ran bf16), marked SiLUs x * (0.5 + 0.5 tanh(x / 2)) (its own Swish ran bf16), marked
nearest upsamplings depthwise transposed convolutions of ones (its Interpolate ran bf16).
`island_precisions` reads what each island node ran in from the runtime model. What the plugin does
differently from torch is on the safe side: a bf16 convolution fused with the fp32 residual sum after
it returns f32, where torch rounds the convolution's output first.
"""
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch


def _ov():
    """The openvino package (imported when first needed; engines/openvino.py refuses its absence in one
    line before anything here runs)."""
    import openvino

    return openvino


# OpenVINO's fp32 mark (transformations/rt_info/disable_fp16_compression.hpp) as its IR writes it
KEEP_FP32 = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16"}
# the rewrites mark_islands makes before marking (part of a compiled model's cache key)
REWRITES = ("matmuls as 1x1 convolutions", "torch's promotion", "casts from integers fp32", "silus as tanh",
            "upsamplings as deconvolutions", "marked unsqueezes as one reshape")


def island_scopes(islands) -> tuple:
    """The node-name prefixes of module islands as torch's TorchScript exporter scopes them: one component
    per module on the path, each the module's name from its last non-numeric part ("time.0" stays
    "time.0", "down2.resblocks.conv1" is /down2/resblocks/conv1/)."""
    scopes = []
    for name in islands:
        atoms = name.split(".")
        parts = []
        for i in range(len(atoms)):
            k = max((j for j in range(i + 1) if not atoms[j].isnumeric()), default=0)
            parts.append(".".join(atoms[k:i + 1]))
        scopes.append("/" + "/".join(parts) + "/")
    return tuple(scopes)


def _in_island(name: str, scopes: tuple) -> bool:
    return any(name.startswith(s) for s in scopes)


def _replace(op, node, parts: dict | None = None) -> None:
    """`node` takes `op`'s place: its name, its consumers and its tensor names (localize finds tensors by
    name); `parts` ({suffix: node}), the rewrite's other nodes, are named after it."""
    name = op.get_friendly_name()
    for suffix, part in (parts or {}).items():
        part.set_friendly_name(name + suffix)
    node.set_friendly_name(name)
    names = op.output(0).get_names()
    op.output(0).replace(node.output(0))
    node.output(0).get_tensor().set_names(names)


def _reshape_trailing_unsqueezes(model, marked) -> int:
    """Unsqueezes to be marked (`marked(name)`) that append axes become Reshapes ([0] * rank + [1] * new
    axes, special zero), which the plugin keeps as they are, mark included; a run of them becomes one
    Reshape (the plugin merges consecutive Reshapes into a new, unmarked node). Returns how many."""
    ov = _ov()
    ops = ov.opset13
    done, made = 0, {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Unsqueeze" or not marked(op.get_friendly_name()):
            continue
        rank = op.get_input_partial_shape(0).rank
        axes = op.input_value(1).get_node()
        if not rank.is_static or axes.get_type_name() != "Constant":
            continue
        r, new = rank.get_length(), sorted(int(a) for a in np.ravel(axes.get_data()))
        if [a if a >= 0 else a + r + len(new) for a in new] != list(range(r, r + len(new))):
            continue
        source, ones = op.input_value(0), len(new)
        before = made.get(source.get_node().get_friendly_name())
        if before is not None and len(source.get_target_inputs()) == 1:  # this run's previous Unsqueeze
            source, r, ones = before[0], before[1], before[2] + ones
        shape = ops.constant(np.array([0] * r + [1] * ones, np.int64))
        reshape = ops.reshape(source, shape, special_zero=True)
        made[op.get_friendly_name()] = (source, r, ones)
        _replace(op, reshape)
        done += 1
    model.validate_nodes_and_infer_types()
    return done


def _matmuls_as_convolutions(model, scopes: tuple) -> int:
    """Island MatMuls of a 2-D input by a constant (a Linear: the face UNet's timestep projections) become
    1x1 Convolutions between two Reshapes, which the plugin keeps in fp32 under the mark; as MatMuls it
    fuses them with their bias into FullyConnected nodes that run bf16 whatever the mark. Returns how many."""
    ov = _ov()
    ops = ov.opset13
    done = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or not _in_island(op.get_friendly_name(), scopes):
            continue
        weight = op.input_value(1).get_node()
        attrs = op.get_attributes()
        rank = op.get_input_partial_shape(0).rank
        if (weight.get_type_name() != "Constant" or attrs.get("transpose_a") or not rank.is_static
                or rank.get_length() != 2):
            continue
        w = weight.get_data()
        w = w if attrs.get("transpose_b") else w.T  # [out, in]
        x = ops.reshape(op.input_value(0), ops.constant(np.array([0, 0, 1, 1], np.int64)), special_zero=True)
        conv = ops.convolution(x, ops.constant(np.ascontiguousarray(w[:, :, None, None])), [1, 1], [0, 0],
                               [0, 0], [1, 1])
        y = ops.reshape(conv, ops.constant(np.array([0, 0], np.int64)), special_zero=True)
        _replace(op, y, {"/to_nchw": x, "/as_conv": conv})
        done += 1
    model.validate_nodes_and_infer_types()
    return done


def _silus_as_tanh(model, marked) -> int:
    """Marked SiLUs, x * Sigmoid(x), become x * (0.5 + 0.5 * tanh(x / 2)), the same function: the plugin
    fuses x * Sigmoid(x) into a Swish node of its own, which drops the mark and ran bf16 (the input of every
    fp32 convolution after a GroupNorm island was rounded to bf16). Returns how many."""
    ops = _ov().opset13
    done = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Multiply" or not marked(op.get_friendly_name()):
            continue
        for x, gate in ((op.input_value(0), op.input_value(1)), (op.input_value(1), op.input_value(0))):
            sigmoid = gate.get_node()
            if sigmoid.get_type_name() == "Sigmoid" and sigmoid.input_value(0) == x:
                break
        else:
            continue
        half = ops.constant(np.array(0.5, np.float32))
        scaled = ops.multiply(x, half)
        tanh = ops.tanh(scaled)
        scale = ops.multiply(tanh, half)
        gate = ops.add(scale, half)
        _replace(op, ops.multiply(x, gate), {"/half": scaled, "/tanh": tanh, "/scale": scale, "/gate": gate})
        done += 1
    model.validate_nodes_and_infer_types()
    return done


def _upsamplings_as_deconvolutions(model, marked) -> int:
    """Marked nearest upsamplings by whole factors (torch's nn.Upsample: Interpolate, asymmetric, floor)
    become depthwise transposed convolutions of ones, kernel = stride = the factor: the same values. The
    plugin replaces Interpolate (opset 11 by opset 4) and splits a Tile, either way dropping the mark; they
    ran bf16, rounding the input of the fp32 convolution after them. Returns how many."""
    ops = _ov().opset13
    done = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Interpolate" or not marked(op.get_friendly_name()):
            continue
        attrs, scales = op.get_attributes(), op.input_value(1).get_node()
        shape = op.get_input_partial_shape(0)
        torch_nearest = {"mode": "nearest", "shape_calculation_mode": "scales",
                         "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        if (any(attrs.get(k) != v for k, v in torch_nearest.items()) or any(attrs.get("pads_begin", []))
                or any(attrs.get("pads_end", [])) or op.get_input_size() != 2
                or scales.get_type_name() != "Constant" or shape.rank.get_length() != 4
                or not shape[1].is_static):
            continue
        factors = np.ravel(scales.get_data())
        if len(factors) != 4 or list(factors[:2]) != [1, 1] or any(f != int(f) or f < 1 for f in factors[2:]):
            continue
        kh, kw = int(factors[2]), int(factors[3])
        ones = ops.constant(np.ones((shape[1].get_length(), 1, 1, kh, kw), np.float32))
        deconv = ops.group_convolution_backprop_data(op.input_value(0), ones, [kh, kw], None, [0, 0], [0, 0],
                                                     [1, 1])
        _replace(op, deconv)
        done += 1
    model.validate_nodes_and_infer_types()
    return done


def weighted_scopes(model: str) -> tuple:
    """The node-name prefixes of `model`'s modules with weights of their own (torch's policy casts their
    inputs down to bf16 outside the islands)."""
    from hw2rt.models.registry import build_model

    with torch.device("meta"):
        net = build_model(model)
    return island_scopes(name for name, m in net.named_modules()
                         if next(m.parameters(recurse=False), None) is not None
                         or next(m.buffers(recurse=False), None) is not None)


def _scope(name: str, scopes: tuple) -> str | None:
    """The innermost of `scopes` that `name` is in, or None."""
    return max((s for s in scopes if name.startswith(s)), key=len, default=None)


def _cast_from_integers(op) -> bool:
    """A cast of integers to f32: torch's default dtype, fp32 whatever the policy."""
    return (op.get_type_name() == "Convert" and op.get_output_element_type(0) == _ov().Type.f32
            and not op.get_input_element_type(0).is_real())


def _promoted(model, scopes: tuple, weighted: tuple) -> set:
    """The nodes outside the islands that torch's bf16 policy runs in fp32, found as torch's type promotion
    finds them. A module with weights casts the float inputs it reads down to bf16, so inside one only what
    it computes from integers is fp32: a cast of integers (to torch's default dtype) and what reads that
    within the same module (the face UNet's sinusoidal embedding of the timestep `t`: left bf16, t = 999
    rounded to 1000 and every phase with it). Outside every module with weights (sums, activations,
    concatenations, reshapes) an op with an fp32 float input is fp32 (an island's output, the network's
    input). A ResBlock's residual sum of an island convolution is one; left bf16, the plugin also fused it
    into the fp32 convolution and lost the output's shape (the face UNet's eps came back [0, 3, 0, 0],
    OpenVINO 2026.4)."""
    f32 = _ov().Type.f32
    fp32, promoted = set(), set()
    for op in model.get_ordered_ops():
        kind, name = op.get_type_name(), op.get_friendly_name()
        if kind == "Parameter" or _in_island(name, scopes):
            fp32.add(name)
            continue
        if kind in ("Constant", "Result"):
            continue
        module = _scope(name, weighted)
        if _cast_from_integers(op) or any(
                v.get_element_type() == f32 and v.get_node().get_friendly_name() in fp32
                and (module is None or v.get_node().get_friendly_name() in promoted
                     and _scope(v.get_node().get_friendly_name(), weighted) == module)
                for v in op.input_values()):
            fp32.add(name)
            promoted.add(name)
    return promoted


def mark_islands(model, name: str, islands, workdir: Path, core):
    """`model` (the graph of network `name`) with every node of the module `islands`, and those torch's policy
    promotes to fp32 beside them, marked to stay fp32 under a bf16 inference precision (see the module
    docstring), read back through `core` (the process's OpenVINO Core); returns (the marked model, how many
    nodes were marked)."""
    ov = _ov()
    scopes = island_scopes(islands)
    if not scopes:
        return model, 0
    weighted = weighted_scopes(name)
    _matmuls_as_convolutions(model, scopes)
    promoted = _promoted(model, scopes, weighted)
    kept = lambda node: _in_island(node, scopes) or node in promoted
    if _silus_as_tanh(model, kept) + _upsamplings_as_deconvolutions(model, kept):
        promoted = _promoted(model, scopes, weighted)  # with the rewrites' new nodes
    _reshape_trailing_unsqueezes(model, kept)
    xml, binary = workdir / "islands.xml", workdir / "islands.bin"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    tree = ET.parse(xml)
    marked = 0
    for layer in tree.getroot().iter("layer"):
        if layer.get("type") in ("Parameter", "Result", "Const"):
            continue
        if not _in_island(layer.get("name", ""), scopes) and layer.get("name") not in promoted:
            continue
        rt = layer.find("rt_info")
        if rt is None:
            rt = ET.Element("rt_info")
            layer.insert(0, rt)
        ET.SubElement(rt, "attribute", KEEP_FP32)
        marked += 1
    tree.write(xml)
    return core.read_model(str(xml), str(binary)), marked


def island_precisions(engine) -> dict:
    """{original node name: the precision it ran in} for the island nodes of an OpenVinoEngine's runtime
    model (the exec graph OpenVINO reports), to prove the marks held."""
    scopes = island_scopes(engine.islands)
    out = {}
    for op in engine.compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        names = rt["originalLayersNames"].astype(str) if "originalLayersNames" in rt else ""
        for name in filter(None, names.split(",")):
            if _in_island(name, scopes):
                out[name] = rt["runtimePrecision"].astype(str)
    return out
