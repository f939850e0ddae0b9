"""The import graph follows the layers of docs/architecture.md: no module imports upwards;
and no test module imports another.

Modules are parsed with ``ast``, never imported, so the check costs no JAX start-up and sees
imports inside functions too.
"""

import ast
import pathlib
import re

from tests import processes

ROOT = pathlib.Path(processes.ROOT)
ENTRY_POINT = "__main__"


def read_layers(doc: pathlib.Path) -> dict[str, int]:
  """{module prefix: layer} from the rows of the layer table (`| N | `name`, ... |`)."""
  layers = {}
  for number, cell in re.findall(r"^\| (\d+) \| ([^|]+) \|", doc.read_text(), re.M):
    for name in re.findall(r"`(ccnet_jax[\w.]*)`", cell):
      layers[name] = int(number)
  return layers


def module_name(path: pathlib.Path, package_root: pathlib.Path) -> str:
  parts = path.relative_to(package_root.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, layers: dict[str, int]) -> int:
  """The layer of the longest listed prefix; ``__main__`` modules sit above every layer."""
  if module.rsplit(".", 1)[-1] == ENTRY_POINT:
    return max(layers.values()) + 1
  prefixes = [p for p in layers if module == p or module.startswith(p + ".")]
  if not prefixes:
    raise AssertionError(f"{module} has no layer: add its package to docs/architecture.md")
  return layers[max(prefixes, key=len)]


def package_of(module: str) -> str:
  return ".".join(module.split(".")[:2])


def imported_modules(tree: ast.Module, module: str, is_package: bool) -> set[str]:
  """Project modules named by the imports in ``tree``: ``from a import b`` runs a and a.b."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
        base = ".".join(anchor + ([base] if base else []))
      found.add(base)
      found.update(f"{base}.{alias.name}" for alias in node.names)
  return {name for name in found if name.split(".")[0] == "ccnet_jax"}


def upward_imports(package_root: pathlib.Path, layers: dict[str, int]) -> list[str]:
  """'importer -> imported' for each import of a higher layer or of a peer package."""
  modules = {module_name(p, package_root): p for p in sorted(package_root.rglob("*.py"))}
  violations = []
  for module, path in modules.items():
    tree = ast.parse(path.read_text(), filename=str(path))
    own_layer = layer_of(module, layers)
    for target in imported_modules(tree, module, path.name == "__init__.py"):
      if target not in modules:  # `from pkg import name` where name is not a module.
        continue
      target_layer = layer_of(target, layers)
      # The root package and its layer-0 modules (errors, atomic, interrupts) are one package.
      same_package = package_of(target) == package_of(module) or own_layer == 0
      if target_layer > own_layer or (target_layer == own_layer and not same_package):
        violations.append(f"{module} (layer {own_layer}) -> {target} (layer {target_layer})")
  return violations


def test_every_package_of_ccnet_jax_has_a_layer():
  layers = read_layers(ROOT / "docs" / "architecture.md")
  assert layers["ccnet_jax.ops"] < layers["ccnet_jax.models"] < layers["ccnet_jax.evaluation"]
  for package in sorted((ROOT / "ccnet_jax").iterdir()):
    if package.is_dir() and (package / "__init__.py").exists():
      layer_of(f"ccnet_jax.{package.name}", layers)


def test_no_module_imports_a_higher_layer_or_a_peer_package():
  layers = read_layers(ROOT / "docs" / "architecture.md")
  assert upward_imports(ROOT / "ccnet_jax", layers) == []


def _write(root: pathlib.Path, relative: str, text: str) -> None:
  path = root / relative
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def test_planted_violations_are_reported(tmp_path):
  package = tmp_path / "ccnet_jax"
  layers = {
      "ccnet_jax": 0,
      "ccnet_jax.ops": 1,
      "ccnet_jax.models": 2,
      "ccnet_jax.data": 3,
      "ccnet_jax.training": 3,
      "ccnet_jax.training.trainer": 5,
  }
  _write(package, "__init__.py", "")
  _write(package, "ops/__init__.py", "")
  _write(package, "ops/resize.py", "def f():\n  from ccnet_jax.models import heads\n")
  _write(package, "models/__init__.py", "from . import heads\n")
  _write(package, "models/heads.py", "from ccnet_jax import ops\nfrom ..ops import resize\n")
  _write(package, "data/__init__.py", "")
  _write(package, "data/pipeline.py", "import ccnet_jax.training.step\n")
  _write(package, "training/__init__.py", "")
  _write(package, "training/step.py", "from ..models import heads\n")
  _write(package, "training/trainer.py", "from ccnet_jax.data import pipeline\n")
  _write(package, "training/__main__.py", "from ccnet_jax.training import trainer\n")

  assert sorted(upward_imports(package, layers)) == [
      "ccnet_jax.data.pipeline (layer 3) -> ccnet_jax.training.step (layer 3)",
      "ccnet_jax.ops.resize (layer 1) -> ccnet_jax.models (layer 2)",
      "ccnet_jax.ops.resize (layer 1) -> ccnet_jax.models.heads (layer 2)",
  ]


def imports_of_test_modules(tests_dir: pathlib.Path) -> list[str]:
  """'importer -> imported' for each test module that imports another: what tests share
  lives in helpers, conftest fixtures or the reference modules."""
  found = []
  for path in sorted(tests_dir.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
      names = []
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
      found += [f"{path.stem} -> {n}" for n in names if re.fullmatch(r"tests\.test_\w+", n)]
  return found


def test_no_test_module_imports_another(tmp_path):
  assert imports_of_test_modules(ROOT / "tests") == []
  _write(tmp_path, "test_a.py", "from tests.test_b import SHAPES\nfrom tests import helpers\n")
  _write(tmp_path, "test_c.py", "def f():\n  from tests import test_a\n")
  assert imports_of_test_modules(tmp_path) == ["test_a -> tests.test_b", "test_c -> tests.test_a"]
