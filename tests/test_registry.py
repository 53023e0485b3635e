from __future__ import annotations

import pytest
import torch

import mobilevit_torch
from mobilevit_torch import UnknownModelError, create_model, list_models, register_model


def test_list_models() -> None:
    assert list_models() == ["mobilevit_s", "mobilevit_xs", "mobilevit_xxs"]
    assert list_models("*xs") == ["mobilevit_xs", "mobilevit_xxs"]
    assert list_models("resnet*") == []


def test_register_refuses_duplicates() -> None:
    def mobilevit_xxs() -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        register_model(mobilevit_xxs)


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(UnknownModelError, match="mobilevit_xxs") as err:
        create_model("mobilevit_xxx")
    assert "Did you mean" in str(err.value)


def test_unknown_keyword_raises_with_suggestion() -> None:
    with pytest.raises(TypeError, match="drop_rat.*did you mean 'drop_rate'"):
        create_model("mobilevit_xxs", drop_rat=0.2)


def test_kwargs_reach_the_model() -> None:
    model = create_model("mobilevit_xxs", num_classes=7, drop_rate=0.3)
    assert model.classifier.out_features == 7
    assert model.head_drop.p == 0.3
    assert model.model_args == {"num_classes": 7, "drop_rate": 0.3}


def test_forward_returns_plain_tensor() -> None:
    out = create_model("mobilevit_xxs", num_classes=3).eval()(torch.randn(1, 3, 64, 64))
    assert type(out) is torch.Tensor and out.shape == (1, 3)


def test_each_model_carries_preprocessing() -> None:
    for name in list_models():
        pre = create_model(name).preprocessing
        assert isinstance(pre, mobilevit_torch.Preprocessing)
        assert pre.input_size == 256 and pre.resize_size == 284
