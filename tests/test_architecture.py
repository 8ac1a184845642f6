"""The layout's rules, read from the source (see ARCHITECTURE.md): no import cycle between the
packages of protonet/, each package imports only what it may, the library never imports the command
layer, click lives only in the command layer, and no library code reads the environment."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "protonet"
COMMAND_LAYER = {"commands", "cli", "__main__"}
# unit -> the units it may import. A unit is a top-level subpackage of protonet or a top-level
# module; "protonet" is protonet/__init__.py.
MAY_IMPORT = {
    "errors": set(),
    "caffe_pb2": set(),
    "box": {"caffe_pb2", "errors"},
    "detection_decode": {"caffe_pb2", "errors", "box"},
    "devices": {"errors"},
    "sizes": {"errors"},
    "resources": {"errors"},
    "io": {"caffe_pb2", "errors"},
    "data": {"caffe_pb2", "errors", "sizes", "io"},
    "eval": {"caffe_pb2", "errors", "io", "box"},
    "layers": {"caffe_pb2", "errors", "sizes", "io", "box", "detection_decode", "data", "eval"},
    "net": {"caffe_pb2", "errors", "sizes", "io", "layers"},
    "solver": {"caffe_pb2", "errors", "sizes", "io", "box", "data", "eval", "layers", "net"},
    "spec": {"caffe_pb2", "errors", "io"},
    "compat": {"caffe_pb2", "errors", "io", "spec"},
    "export": {"caffe_pb2", "errors", "sizes", "io", "box", "detection_decode", "net"},
    "tools": {"caffe_pb2", "errors", "sizes", "io", "box", "detection_decode", "devices", "data", "eval", "layers",
              "net", "solver", "spec", "export", "resources"},
    "protonet": {"caffe_pb2", "errors", "spec", "net"},
    "commands": {"caffe_pb2", "errors", "sizes", "io", "box", "detection_decode", "devices", "data", "eval", "layers",
                 "net", "solver", "spec", "compat", "export", "tools", "resources"},
    "cli": {"errors", "commands", "protonet"},
    "__main__": {"cli"},
}


def _modules():
    """{dotted module name: path} of every module of protonet/."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("protonet",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def unit_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "protonet"


def _imported(module, path, node):
    """The protonet modules an Import/ImportFrom node names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:  # relative: resolve against this module's package
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    # `from protonet import box` imports the module protonet.box; `from x import name` imports x
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]


def imports(module, path):
    """(imported protonet module, line) for every import of the module, function-local ones included;
    protonet.cli's lazy command table ("module:attribute" strings) counts as imports too."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found += [(name, node.lineno) for name in _imported(module, path, node)]
        elif module == "protonet.cli" and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("protonet.") and ":" in node.value:
                found.append((node.value.split(":")[0], node.lineno))
    return [(name, line) for name, line in found if name == "protonet" or name.startswith("protonet.")]


def unit_graph():
    """{unit: {imported unit: 'module:line' of one import that makes the edge}}."""
    graph = {}
    for module, path in MODULES.items():
        for name, line in imports(module, path):
            a, b = unit_of(module), unit_of(name)
            if a != b:
                graph.setdefault(a, {}).setdefault(b, f"{module}:{line}")
    return graph


def find_cycle(graph):
    """One cycle as a list of units, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_cycle_between_packages():
    graph = unit_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + " (" + ", ".join(
        f"{a}->{b} at {graph[a][b]}" for a, b in zip(cycle, cycle[1:])) + ")"


def test_each_package_imports_only_what_it_may():
    graph = unit_graph()
    units = {unit_of(m) for m in MODULES}
    assert units <= set(MAY_IMPORT), f"units missing from MAY_IMPORT: {units - set(MAY_IMPORT)}"
    wrong = [f"{a} imports {b} ({where})" for a, edges in sorted(graph.items()) for b, where in sorted(edges.items())
             if b not in MAY_IMPORT[a]]
    assert not wrong, "; ".join(wrong)


def _library_modules():
    return [(m, p) for m, p in MODULES.items() if unit_of(m) not in COMMAND_LAYER]


def test_click_only_in_the_command_layer():
    users = [f"{m}:{line}" for m, p in _library_modules() for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, (ast.Import, ast.ImportFrom))
             for line, name in [(node.lineno, n.name if isinstance(node, ast.Import) else node.module)
                                for n in node.names]
             if name and name.split(".")[0] == "click"]
    assert not users, f"click imported outside protonet/commands: {users}"


ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_reads(path):
    """Lines that touch the process environment: os.environ..., os.getenv(...), from os import environ."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT and isinstance(node.value, ast.Name) \
                and node.value.id == "os":
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and any(a.name in ENVIRONMENT
                                                                               for a in node.names):
            lines.append(node.lineno)
    return lines


def test_no_environment_reads_in_library_code():
    found = [f"{m}:{line}" for m, p in _library_modules() for line in environment_reads(p)]
    assert not found, f"the environment is read outside protonet/commands: {found}"


def test_the_checks_see_what_they_look_for(tmp_path):
    # the rules above pass on the tree; here each check is shown a file that breaks it
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom os import getenv\nx = os.environ.get('A')\ndef f():\n    import click\n")
    assert environment_reads(bad) == [2, 3]
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ""}, "b": {}}) is None
    module = "protonet.io.describe"
    node = ast.parse("from protonet import box\nfrom ..net import Net\n").body
    assert _imported(module, PACKAGE / "io" / "describe.py", node[0]) == ["protonet.box"]
    assert _imported(module, PACKAGE / "io" / "describe.py", node[1]) == ["protonet.net"]


@pytest.mark.parametrize("unit", sorted(COMMAND_LAYER - {"__main__"}))
def test_the_library_never_imports_the_command_layer(unit):
    importers = [f"{m}:{line}" for m, p in _library_modules() for name, line in imports(m, p)
                 if unit_of(name) == unit]
    assert not importers, f"library modules import protonet.{unit}: {importers}"
