"""Built-in models, user model factories, and the flat parameter layout."""

import sys
import textwrap

import pytest
import torch
from torch import nn

from ppaia.learning import MODELS, ModelError, ParamLayout


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        ("logistic", (1, 8, 8)),
        ("mlp(hidden=[16, 8])", (20,)),
        ("cnn", (1, 8, 8)),
        ("cnn(channels=[4])", (3, 32, 32)),
    ],
)
def test_builtin_models_produce_logits(spec, shape):
    model = MODELS.create(spec).build(shape, 10)
    assert model(torch.zeros(5, *shape)).shape == (5, 10)


def test_cnn_needs_images():
    with pytest.raises(ModelError, match="image"):
        MODELS.create("cnn").build((20,), 10)


def test_user_factory_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        from torch import nn
        def tiny(input_shape, n_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], n_classes))
        def no_arguments():
            return nn.Linear(4, 3)
        def not_a_module():
            return 42
    """)
    )
    monkeypatch.syspath_prepend(tmp_path)
    assert MODELS.create({"name": "import", "target": "my_models:tiny"}).build((6,), 3)(
        torch.zeros(2, 6)
    ).shape == (2, 3)
    assert isinstance(
        MODELS.create({"name": "import", "target": "my_models:no_arguments"}).build((4,), 3), nn.Linear
    )
    with pytest.raises(ModelError, match=r"not a torch\.nn\.Module"):
        MODELS.create({"name": "import", "target": "my_models:not_a_module"}).build((4,), 3)
    with pytest.raises(ModelError, match="cannot import"):
        MODELS.create({"name": "import", "target": "my_models:missing"}).build((4,), 3)
    sys.modules.pop("my_models", None)


def test_layout_round_trip():
    model = MODELS.create("mlp(hidden=[5])").build((3,), 2)
    layout = ParamLayout.of(model)
    assert layout.size == 3 * 5 + 5 + 5 * 2 + 2
    flat = torch.randn(layout.size)
    layout.load(model, flat)
    assert torch.equal(layout.flatten(model), flat)
    stacked = torch.randn(4, layout.size)
    pieces = layout.unflatten(stacked)
    assert [tuple(p.shape) for p in pieces.values()] == [(4, 5, 3), (4, 5), (4, 2, 5), (4, 2)]
    assert torch.equal(pieces["1.weight"][2].flatten(), stacked[2, :15])
