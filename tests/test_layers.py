"""The dependency direction of DESIGN.md, read off the imports: data/ at the bottom, training and
evaluate apart."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hw2rt"


def imports(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("hw2rt")}


def test_training_and_evaluate_do_not_import_each_other():
    for path in (PKG / "training").glob("*.py"):
        assert not any(n.startswith("hw2rt.evaluate") for n in imports(path)), path
    assert not any(n.startswith("hw2rt.training") for n in imports(PKG / "evaluate.py"))


def test_data_is_the_bottom_layer():
    allowed = ("hw2rt.data", "hw2rt.io", "hw2rt.errors")
    for path in (PKG / "data").glob("*.py"):
        assert all(n.startswith(allowed) for n in imports(path)), (path, imports(path))


def _module_graph() -> dict:
    """{hw2rt module: the hw2rt modules it imports}, function-level imports included: a lazy import is a
    dependency too (`from pkg.mod import x`: an edge to pkg.mod; `from pkg import mod`: to pkg and
    pkg.mod)."""
    modules = {}
    for path in PKG.rglob("*.py"):
        name = ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                edges |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_no_import_circles():
    """No module of hw2rt reaches itself through its imports (issue 31: export/onnx_export.py and the
    int8/fp8 exporters imported each other; the dispatch by precision now sits above them)."""
    graph = _module_graph()
    assert graph["hw2rt.export.int8"] >= {"hw2rt.export.onnx_export"}  # the graph is read, not empty
    circles = []
    for start in graph:
        seen, todo = set(), [(start, (start,))]
        while todo:
            node, path = todo.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join((*path, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    todo.append((nxt, (*path, nxt)))
    assert not circles, circles[:3]
