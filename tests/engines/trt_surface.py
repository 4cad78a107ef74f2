"""The real TensorRT Python API, read off the official bindings wheels on a machine without TensorRT.

`make setup` downloads the pinned `tensorrt-cu12-bindings` (10.x) and `tensorrt-cu13-bindings` (11.x) wheels
into .venv/trt-wheels (`pip download --no-deps`). Their extension module links libnvinfer, libnvonnxparser
and libnvinfer_plugin and needs only a few C entry points at import, so stand-in libraries of those names,
compiled here with gcc, let a subprocess import it: every class, method, property and enum member is then
there to read, with the pybind11 signatures in the docstrings. Nothing that needs the real libraries
(building, running) works, and nothing here pretends it does.

`surface(major)` is that reading as plain data:
    {"version": "11.4.0.106", "attrs": {name: entry}}
    entry: {"kind": "class", "bases": [...], "doc_buffer": bool, "ivars": {name: type},
            "members": {name: entry}}  -- also for enums, with "enum": {member: int value}
         | {"kind": "method" | "function", "overloads": [{"params": [param], "returns": type}]}
         | {"kind": "property", "readonly": bool, "type": type or None}
         | {"kind": "enum_value", "enum": qualname, "name": member}
         | {"kind": "value", "type": type name}
    param: {"name": str, "type": type, "default": bool}; type: a normalised annotation ("int", "str",
    "Dims", "list[Dims]", "ILogger.Severity", "object", ...).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".venv" / "trt-wheels"
PACKAGES = {10: "tensorrt_cu12_bindings", 11: "tensorrt_cu13_bindings"}

# The C entry points the extension module resolves at load time, per library (nm -D --undefined-only).
STUBS = {
    "nvinfer": ["createInferBuilder_INTERNAL", "createInferRuntime_INTERNAL", "createInferRefitter_INTERNAL",
                "getPluginRegistry", "getBuilderPluginRegistry"],
    "nvonnxparser": ["createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL",
                     "getNvOnnxParserVersion"],
    "nvinfer_plugin": ["initLibNvInferPlugins"],
}


def wheel(major: int) -> Path | None:
    found = sorted(WHEELS.glob(f"{PACKAGES[major]}-{major}.*.whl"))
    return found[-1] if found else None


def missing_reason(major: int) -> str | None:
    """Why the surface of `major` cannot be read here (None: it can)."""
    if shutil.which("gcc") is None:
        return "no C compiler (gcc) to build the stand-in TensorRT libraries"
    if wheel(major) is None:
        return f"no {PACKAGES[major]} wheel in {WHEELS} (make setup downloads it)"
    return None


# Runs in the subprocess that imports the real extension module: reads every attribute into JSON.
DUMP = r'''
import importlib.util, inspect, json, re, sys

spec = importlib.util.spec_from_file_location("tensorrt", sys.argv[1])
trt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trt)

def norm(t):
    t = t.strip()
    for a, b in (("typing.SupportsInt", "int"), ("typing.SupportsFloat", "float"), ("tensorrt.", ""),
                 ("collections.abc.Buffer", "buffer"), ("typing_extensions.Buffer", "buffer"),
                 ("typing.", ""), ("List[", "list[")):
        t = t.replace(a, b)
    return t if re.fullmatch(r"[\w.\[\], ]+", t) else "object"

def split_top(s):
    parts, depth, cur, quote = [], 0, "", None
    for ch in s:
        if quote:
            cur += ch
            quote = None if ch == quote else quote
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]

def parse_sig(line, name):
    m = re.match(r"^" + re.escape(name) + r"\((.*)\)\s*->\s*(.+)$", line.strip())
    if not m:
        return None
    params = []
    for p in split_top(m.group(1)):
        if p.startswith("*"):
            return None  # the (*args, **kwargs) header of an overloaded function
        pname, _, rest = p.partition(":")
        ptype, eq, _ = rest.partition("=")
        params.append({"name": pname.strip(), "type": norm(ptype) if ptype else "object",
                       "default": bool(eq)})
    return {"params": params, "returns": norm(m.group(2))}

def overloads(fn, name):
    doc = (getattr(fn, "__doc__", None) or "").strip()
    if not doc:
        return []
    lines = doc.splitlines()
    first = parse_sig(lines[0], name)
    if first is not None:
        return [first]
    sigs = []
    for line in lines:
        m = re.match(r"^\d+\.\s+(.*)$", line)
        if m:
            sig = parse_sig(m.group(1), name)
            if sig is not None:
                sigs.append(sig)
    return sigs

def ivars(cls):
    out = {}
    for m in re.finditer(r":ivar (\w+): (?::class:`([\w.]+)`)?", cls.__doc__ or ""):
        out[m.group(1)] = norm(m.group(2)) if m.group(2) else None
    return out

def is_enum(cls):
    return isinstance(getattr(cls, "__members__", None), dict)

def read_class(cls):
    bases = [b.__qualname__ for b in cls.__mro__[1:] if b.__module__ == "tensorrt"]
    entry = {"kind": "class", "bases": bases,
             "doc_buffer": "buffer protocol" in (cls.__doc__ or ""), "ivars": ivars(cls), "members": {}}
    if is_enum(cls):
        entry["enum"] = {name: int(member) for name, member in cls.__members__.items()}
    init = inspect.getattr_static(cls, "__init__", None)
    doc = (getattr(init, "__doc__", "") or "") if init is not None else ""
    if "tensorrt" in doc and "Initialize self" not in doc:
        entry["members"]["__init__"] = {"kind": "method", "overloads": overloads(init, "__init__")}
    for name in dir(cls):
        if name.startswith("__") or name.startswith("_pybind11"):
            continue
        try:
            raw = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        value = getattr(cls, name)
        if isinstance(raw, property):
            entry["members"][name] = {"kind": "property", "readonly": raw.fset is None,
                                      "type": entry["ivars"].get(name)}
        elif inspect.isclass(value) and value.__module__ == "tensorrt":
            if value.__qualname__.startswith(cls.__qualname__ + "."):
                entry["members"][name] = read_class(value)
        elif is_enum(type(value)) and type(value).__module__ == "tensorrt":
            member = value.name if isinstance(value.name, str) else str(value).rpartition(".")[2]
            entry["members"][name] = {"kind": "enum_value", "enum": type(value).__qualname__, "name": member}
        elif callable(value):
            entry["members"][name] = {"kind": "method", "overloads": overloads(value, name)}
        else:
            entry["members"][name] = {"kind": "value", "type": type(value).__name__}
    return entry

attrs = {}
for name in dir(trt):
    if name.startswith("_"):
        continue
    value = getattr(trt, name)
    if inspect.isclass(value) and value.__module__ == "tensorrt" and "." not in value.__qualname__:
        attrs[name] = read_class(value)
    elif inspect.isclass(value):
        attrs[name] = {"kind": "value", "type": "type"}
    elif callable(value):
        attrs[name] = {"kind": "function", "overloads": overloads(value, name)}
    else:
        attrs[name] = {"kind": "value", "type": type(value).__name__}
print(json.dumps(attrs))
'''


def _compile_stubs(lib_dir: Path, major: int):
    lib_dir.mkdir(parents=True, exist_ok=True)
    for lib, symbols in STUBS.items():
        source = lib_dir / f"{lib}.c"
        source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib_dir / f"lib{lib}.so.{major}"), str(source)],
                       check=True, capture_output=True)


@functools.cache
def surface(major: int) -> dict:
    """The real API of TensorRT `major` (see the module docstring)."""
    path = wheel(major)
    version = path.name.split("-")[1]
    with tempfile.TemporaryDirectory(prefix=f"hw2rt-trt{major}-") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(path) as z:
            z.extractall(tmp / "wheel")
        _compile_stubs(tmp / "lib", major)
        so = next((tmp / "wheel").rglob("tensorrt*.so"))
        env = {**os.environ, "LD_LIBRARY_PATH": str(tmp / "lib")}
        r = subprocess.run([sys.executable, "-c", DUMP, str(so)], capture_output=True, text=True, env=env,
                           timeout=120, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"reading the TensorRT {version} bindings failed: {r.stderr[-2000:]}")
    return {"version": version, "major": major, "attrs": json.loads(r.stdout)}
