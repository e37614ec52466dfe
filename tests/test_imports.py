"""The package is a stack: each module imports only modules below it (STYLE.md, habit 10).

Every `from . import x` / `from .x import y` / `import vaelab.x` in every module, at the top or
inside a function, is read from the source; an import of a module on the same or a higher layer,
or of a module missing from the stack, fails the test. No cycle can exist in such a stack.
"""

import ast
from pathlib import Path

import vaelab

PACKAGE = Path(vaelab.__file__).parent

# Bottom to top. Modules on one layer do not import each other.
LAYERS = [
    {"version", "config", "device", "linear", "progress", "distributed", "executors", "objectives"},
    {"models", "runfiles"},
    {"sources"},
    {"data"},
    {"checkpoint"},
    {"training", "likelihood", "classifier"},
    {"evaluate"},
    {"api"},
    {"figures", "table", "explorer"},
    {"discussion"},
    {"report"},
    {"reproduce"},
    {"cli"},
    {"__main__", "__init__"},
]
LAYER = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# models uses objectives' likelihood means and Gaussian densities (the prior p(z)); sources (your own
# images) writes its cache with runfiles' atomic_write, and data dispatches to sources.


def package_imports(path: Path) -> set[str]:
    """Names of the vaelab modules that the module at `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "vaelab":
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "vaelab" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_every_module_is_on_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules - set(LAYER) == set(), "add new modules to LAYERS"
    assert set(LAYER) - modules == set(), "LAYERS names a module that does not exist"


def test_imports_only_point_down():
    upward = []
    for path in sorted(PACKAGE.glob("*.py")):
        me = path.stem
        for other in package_imports(path):
            if other not in LAYER or LAYER[other] >= LAYER[me]:
                upward.append(f"{me} (layer {LAYER[me]}) imports {other} (layer {LAYER.get(other, '?')})")
    assert upward == []


def test_the_check_itself_sees_function_level_and_absolute_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import vaelab.report\nfrom vaelab import cli\n\ndef f():\n    from .training import train\n"
                      "    from . import api, figures\n")
    assert package_imports(source) == {"report", "cli", "training", "api", "figures"}


def test_public_api_is_listed_and_documented():
    for name in vaelab.__all__:
        obj = getattr(vaelab, name)
        if name != "__version__":
            assert (obj.__doc__ or "").strip(), f"vaelab.{name} has no docstring"
    assert {"RunConfig", "train", "resume", "load_run", "load_mnist", "Run"} <= set(vaelab.__all__)
    assert callable(vaelab.train) and vaelab.train.__module__ == "vaelab.training"
