"""hw2rt's TensorRT code against the real TensorRT 10.x and 11.x Python API (tests/engines/trt_surface.py):
every name it uses exists, every call binds to a real signature (the strict fake raises otherwise), and the
version differences are handled."""
import ast
from pathlib import Path

import pytest

from tests.engines.trt_fake import make_tensorrt
from tests.engines.trt_surface import missing_reason, surface

TRT_PY = Path(__file__).resolve().parents[2] / "hw2rt" / "engines" / "trt.py"
MAJORS = (10, 11)
# The variables of trt.py that hold TensorRT objects (their attribute names must be real members).
HOLDERS = {"builder", "network", "parser", "config", "profile", "ctx", "self._engine", "self._context",
           "self._runtime"}


@pytest.fixture(scope="module", params=MAJORS, ids=["trt10", "trt11"])
def api(request):
    reason = missing_reason(request.param)
    if reason is not None and "gcc" in reason:
        pytest.skip(reason)
    assert reason is None, reason  # the wheels are part of `make setup`: missing ones are a failure
    return surface(request.param)


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _root(node) -> str | None:
    """The holder an attribute chain starts from (through calls and subscripts), or None."""
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        dotted = _dotted(node)
        if dotted in HOLDERS:
            return dotted
        node = node.func if isinstance(node, ast.Call) else node.value
    dotted = _dotted(node)
    return dotted if dotted in HOLDERS else None


def uses():
    """What trt.py reads off TensorRT: `trt.X.Y` chains, getattr(trt.X, "NAME", default) names, and the member
    names used on the objects it holds."""
    tree = ast.parse(TRT_PY.read_text())
    chains, optional, members = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.startswith("trt.") and not dotted.startswith("trt.__"):
                chains.add(dotted.removeprefix("trt."))
            root = _root(node.value)
            if root is not None and _dotted(node) not in HOLDERS:
                members.add(node.attr)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                and len(node.args) == 3 and isinstance(node.args[1], ast.Constant)):
            base = _dotted(node.args[0])
            if base and base.startswith("trt."):
                optional.add((base.removeprefix("trt."), node.args[1].value))
    # a chain's prefixes are chains too: keep the longest
    chains = {c for c in chains if not any(o.startswith(c + ".") for o in chains)}
    return chains, optional, members


def _lookup(attrs: dict, dotted: str):
    entry = {"kind": "class", "members": attrs}
    for part in dotted.split("."):
        entry = entry["members"].get(part) if entry and entry.get("kind") == "class" else None
    return entry


def test_every_module_attribute_and_enum_member_hw2rt_names_exists(api):
    chains, _, _ = uses()
    assert {"Logger.WARNING", "Logger.VERBOSE", "MemoryPoolType.WORKSPACE", "TensorIOMode.INPUT"} <= chains
    missing = [c for c in sorted(chains) if _lookup(api["attrs"], c) is None]
    assert not missing, f"TensorRT {api['version']} has no {missing}"


def test_names_read_with_a_default_exist_in_some_release():
    _, optional, _ = uses()
    assert ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED") in optional
    for base, name in optional:
        found = [m for m in MAJORS if _lookup(surface(m)["attrs"], f"{base}.{name}") is not None]
        assert found or base == "DataType", f"{base}.{name} exists in no TensorRT release"


def test_every_member_used_on_a_tensorrt_object_is_a_real_member(api):
    _, _, members = uses()
    real = set()

    def collect(entries):
        for name, entry in entries.items():
            real.add(name)
            if entry["kind"] == "class":
                collect(entry["members"])

    collect(api["attrs"])
    assert not sorted(members - real), f"not in TensorRT {api['version']}: {sorted(members - real)}"
    assert {"create_network", "execute_async_v3", "set_tensor_address", "num_io_tensors"} <= members


def test_the_version_differences_are_the_ones_hw2rt_handles():
    t10, t11 = (surface(m)["attrs"] for m in MAJORS)
    flags10 = t10["NetworkDefinitionCreationFlag"]["enum"]
    flags11 = t11["NetworkDefinitionCreationFlag"]["enum"]
    assert "EXPLICIT_BATCH" in flags10 and "EXPLICIT_BATCH" not in flags11
    assert "FP16" in t10["BuilderFlag"]["enum"] and "FP16" not in t11["BuilderFlag"]["enum"]
    assert flags10["STRONGLY_TYPED"] != flags11["STRONGLY_TYPED"]  # hence 1 << int(flag), never a literal
    # hw2rt asks for neither removed flag: precision lives in the graph, networks are explicit-batch already.
    source = TRT_PY.read_text()
    assert "EXPLICIT_BATCH" not in source and "BuilderFlag" not in source


def test_the_fake_refuses_what_the_real_bindings_refuse(api):
    trt = make_tensorrt(api)
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    with pytest.raises(AttributeError, match="create_netwrk"):
        builder.create_netwrk(0)  # a misspelled method
    with pytest.raises(TypeError, match="incompatible function arguments"):
        builder.create_network(0, 1)  # one argument too many
    with pytest.raises(TypeError, match="incompatible function arguments"):
        builder.create_network(flag=0)  # a keyword the real signature does not have
    with pytest.raises(TypeError, match="incompatible function arguments"):
        trt.OnnxParser(builder.create_network(0), "not a logger")  # a plain type checked
    with pytest.raises(AttributeError, match="max_workspace_size"):
        builder.create_builder_config().max_workspace_size = 1 << 30  # removed in TensorRT 10
    with pytest.raises(TypeError, match="No constructor"):
        trt.ICudaEngine()
