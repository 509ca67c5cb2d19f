"""Imports point down the layers: a model never imports the engine, the scheduler imports only math.

Every module of the installed package is parsed (not imported) and each `dspark_jax` import inside it,
at any depth, is checked against the layer table below.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
# Folder -> package, as pyproject.toml's [tool.setuptools.package-dir] installs them.
PACKAGES = {"dspark_jax": "dspark_jax", "models": "dspark_jax.models", "kernels": "dspark_jax.kernels",
            "train": "dspark_jax.train"}
# Lowest first; a module may import its own layer and the ones below. The first matching prefix decides.
LAYERS = (
    ("math and files", ("dspark_jax.kernels", "dspark_jax.atomic_file", "dspark_jax.command_names",
                        "dspark_jax.sampling", "dspark_jax.tree", "dspark_jax.calibration",
                        "dspark_jax.temperature_scaling", "dspark_jax.scheduler", "dspark_jax.acceptance")),
    ("models", ("dspark_jax.models",)),
    ("engine", ("dspark_jax.generate", "dspark_jax.target", "dspark_jax.proposers", "dspark_jax.speculative")),
    # the drafter-kind registry joins each kind's model, proposer and training objective
    ("training", ("dspark_jax.train", "dspark_jax.drafter_kinds")),
    ("applications", ("dspark_jax",)),
)


def layer(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer")


def modules():
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield from ([node.module] if node.module != "dspark_jax" else
                        [f"dspark_jax.{alias.name}" for alias in node.names])
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_imports_point_down():
    upward = []
    for module, path in modules():
        for imported in imports(path):
            if imported.startswith("dspark_jax") and layer(imported) > layer(module):
                upward.append(f"{module} ({LAYERS[layer(module)][0]}) imports {imported} "
                              f"({LAYERS[layer(imported)][0]})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("def f():\n    from dspark_jax.proposers.base import Draft\n")
    assert list(imports(model)) == ["dspark_jax.proposers.base"]
    assert layer("dspark_jax.proposers.base") > layer("dspark_jax.models.dspark")
