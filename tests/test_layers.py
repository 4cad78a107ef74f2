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
