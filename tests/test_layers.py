"""The package imports downward only, in the data-flow order its folders show, and has no import cycle.

Every `import` counts, including those inside functions: a deferred import upward is still an upward dependency.
"""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "unimodal_jax"

# Lowest first. A part may import its own modules and any part of a lower layer, nothing else.
LAYERS = (
    ("__init__", "config", "extras"),  # defaults, constants, optional dependencies
    ("vq",),  # image tokenizers
    ("data",),  # vocabulary, records, the Grain pipeline
    ("model",),  # the transformer and its loss
    ("parallel",),  # mesh and shardings
    ("train",),  # the train loops, state, checkpoints, metrics, validation
    ("plan", "sample", "convert", "scaling", "launch", "ingest"),  # jobs built on training
    ("cli",),  # the command-line entry points
)
# Parts of one layer that build on each other, as (importer, imported).
SIDEWAYS = {("sample", "convert"), ("scaling", "launch"), ("scaling", "plan"), ("launch", "plan")}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
  """The package modules `name` imports (for `from pkg import x`: pkg.x when it is a module, else pkg)."""
  found = set()
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.split(".")[0] == "unimodal_jax")
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      if base.split(".")[0] != "unimodal_jax":
        continue
      for alias in node.names:
        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
  return {m for m in found if m != name}


def _part(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def _layer(part: str) -> int:
  for i, parts in enumerate(LAYERS):
    if part in parts:
      return i
  raise AssertionError(f"part {part!r} is in no layer of tests/test_layers.py LAYERS: place it there")


def _graph():
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_part_has_a_layer():
  for module in _graph():
    _layer(_part(module))


def upward_imports(graph) -> list[str]:
  found = []
  for module, imported in graph.items():
    for target in imported:
      a, b = _part(module), _part(target)
      if a != b and (a, b) not in SIDEWAYS and _layer(b) >= _layer(a):
        found.append(f"{module} imports {target} ({a} is not above {b})")
  return sorted(found)


def cycles(graph) -> list[str]:
  state, found = {}, []

  def visit(node, stack):
    state[node] = "open"
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        found.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
      elif nxt not in state and nxt in graph:
        visit(nxt, stack + [nxt])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  return found


def test_imports_go_downward_only():
  assert not upward_imports(_graph()), "\n".join(upward_imports(_graph()))


def test_no_import_cycles():
  assert not cycles(_graph()), "\n".join(cycles(_graph()))


def test_the_checks_see_an_upward_import_and_a_cycle():
  graph = _graph()
  graph["unimodal_jax.data.pipeline"] = graph["unimodal_jax.data.pipeline"] | {"unimodal_jax.train.loop"}
  assert "unimodal_jax.data.pipeline imports unimodal_jax.train.loop (data is not above train)" in \
      upward_imports(graph)
  graph["unimodal_jax.data.vocab"] = graph["unimodal_jax.data.vocab"] | {"unimodal_jax.data.pipeline"}
  assert any("unimodal_jax.data.pipeline" in c and "unimodal_jax.data.vocab" in c for c in cycles(graph))


def test_every_folder_of_modules_is_a_package():
  """find_packages skips a folder without __init__.py: a wheel would then lack its modules."""
  folders = {p.parent for p in PACKAGE.rglob("*.py")}
  missing = sorted(str(f.relative_to(PACKAGE.parent)) for f in folders if not (f / "__init__.py").exists())
  assert not missing, f"folders without __init__.py: {missing}"
