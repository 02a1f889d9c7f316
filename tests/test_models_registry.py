"""Your own models on the same footing: ``@register_model`` and ``load_models_from`` (a file or a module)."""

from __future__ import annotations

import sys

import pytest

from jaxcnn import models
from jaxcnn.models import registry
from jaxcnn.summary import summary

USER_FILE = '''
from jaxcnn import BatchNorm, Conv, Dense, GlobalAvgPool, ReLU, Sequential, scale_width
from jaxcnn.core import Layer
import jaxcnn.models


@jaxcnn.models.register_model(input_shape=(32, 32, 3), num_classes=10)
def {name}(num_classes: int, width: float = 1.0, depth: int = 2, **options) -> Layer:
    """My net: depth conv-BN-ReLU blocks, GAP, dense.

    More text that is not the description.
    """
    if depth < 1:
        raise ValueError(f"{name} depth={{depth}}: depth must be >= 1")
    blocks = [layer for _ in range(depth) for layer in (Conv(16, 3, use_bias=False), BatchNorm(), ReLU())]
    return scale_width(Sequential([*blocks, GlobalAvgPool(), Dense(num_classes, keep_width=True)]), width)
'''


@pytest.fixture
def clean_registry():
    """Whatever a test registers or loads is gone afterwards."""
    before, loaded, path = dict(models.REGISTRY), dict(registry._LOADED), list(sys.path)
    mods = set(sys.modules)
    yield
    models.REGISTRY.clear()
    models.REGISTRY.update(before)
    registry._LOADED.clear()
    registry._LOADED.update(loaded)
    sys.path[:] = path
    for name in set(sys.modules) - mods:
        del sys.modules[name]


def test_decorator_registers_by_function_name_and_docstring(clean_registry):
    @models.register_model(input_shape=(28, 28, 1), num_classes=7, small={"depth": 1})
    def tiny_user_net(num_classes: int, width: float = 1.0, depth: int = 2, act: str = "relu"):
        """Tiny net for the test.

        Not the description."""
        from jaxcnn import Dense, Flatten, Sequential

        return Sequential([Flatten(), Dense(num_classes)])

    assert tiny_user_net.__name__ == "tiny_user_net"  # returned unchanged
    e = models.entry("tiny_user_net")
    assert (e.input_shape, e.num_classes, e.description, e.small) == ((28, 28, 1), 7, "Tiny net for the test.",
                                                                      {"depth": 1})
    assert models.builder_options("tiny_user_net") == ["depth", "act"]
    assert models.parse_option("tiny_user_net", "depth", "3") == 3
    assert summary(models.get("tiny_user_net/2"), (28, 28, 1)).totals.output_shape == [7]

    models.register_model(lambda num_classes, width=1.0: tiny_user_net(num_classes), input_shape=(4, 4, 1),
                          num_classes=2, name="renamed_user_net", description="given")
    assert models.entry("renamed_user_net").description == "given"
    with pytest.raises(ValueError, match="'tiny_user_net' is already registered"):
        models.register_model(input_shape=(8, 8, 1), num_classes=2)(tiny_user_net)
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive ints"):
        models.register_model(input_shape=(0, 8), num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        models.register_model(input_shape=(8, 8, 1), num_classes=0)


def test_load_models_from_a_file(tmp_path, clean_registry):
    path = tmp_path / "my_models.py"
    path.write_text(USER_FILE.format(name="my_file_net"))
    sys_path = list(sys.path)
    assert models.load_models_from(str(path)) == ["my_file_net"]
    assert sys.path == sys_path  # imported from its path, nothing left on sys.path
    e = models.entry("my_file_net")
    assert e.description == "My net: depth conv-BN-ReLU blocks, GAP, dense."
    assert models.builder_options("my_file_net") == ["depth"]
    t = summary(models.get("my_file_net", depth=3), e.input_shape).totals
    assert t.learnable_params == (3 * 3 * 3 * 16 + 2 * 16) + 2 * (9 * 16 * 16 + 2 * 16) + (16 * 10 + 10)
    assert models.load_models_from(str(path)) == ["my_file_net"]  # a second load is a no-op, not a duplicate
    with pytest.raises(ValueError, match="my_file_net depth=0: depth must be >= 1"):
        models.get("my_file_net", depth=0)


def test_load_models_from_a_module_name(tmp_path, monkeypatch, clean_registry):
    pkg = tmp_path / "userpkg_families_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_FILE.format(name="my_module_net"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert models.load_models_from("userpkg_families_test.nets") == ["my_module_net"]
    assert "my_module_net" in models.names()
    with pytest.raises(ValueError) as info:
        models.load_models_from("userpkg_families_test.missing")
    assert str(info.value).startswith("cannot load models from userpkg_families_test.missing: ModuleNotFoundError")


@pytest.mark.parametrize("body,problem", [
    ("def broken(:\n", "SyntaxError"),
    ("import not_a_module_anywhere_xyz\n", "ModuleNotFoundError: No module named 'not_a_module_anywhere_xyz'"),
    ("x = 1\nraise RuntimeError('boom\\nsecond line')\n", "RuntimeError: boom"),
    ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
])
def test_load_models_from_a_failing_file_is_one_line_naming_it(tmp_path, clean_registry, body, problem):
    path = tmp_path / "bad_models.py"
    path.write_text(body)
    before = dict(models.REGISTRY)
    with pytest.raises(ValueError) as info:
        models.load_models_from(str(path))
    text = str(info.value)
    assert text.startswith(f"cannot load models from {path}") and problem in text
    assert "\n" not in text
    assert models.REGISTRY == before
    assert not [m for m in sys.modules if m.startswith("jaxcnn_user_models_bad_models")]


def test_load_models_from_a_file_with_a_taken_name_registers_nothing(tmp_path, clean_registry):
    path = tmp_path / "dupes.py"
    path.write_text(USER_FILE.format(name="fresh_user_net") + USER_FILE.format(name="resnet_cifar"))
    before = dict(models.REGISTRY)
    with pytest.raises(ValueError) as info:
        models.load_models_from(str(path))
    assert str(info.value).startswith(f"cannot load models from {path} (line ")
    assert "model 'resnet_cifar' is already registered" in str(info.value)
    assert models.REGISTRY == before  # not even the first, fresh name stays
    with pytest.raises(ValueError, match="no such file"):
        models.load_models_from(str(tmp_path / "absent.py"))
    with pytest.raises(ValueError, match="takes a Python file or a module name"):
        models.load_models_from("")


def test_readme_registration_example_runs(clean_registry):
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("Your own model registers the same way", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    assert models.entry("mynet").description == "My net: depth conv-BN-ReLU blocks, GAP, dense."
    assert summary(models.get("mynet/2", depth=4), (32, 32, 3)).totals.output_shape == [10]
