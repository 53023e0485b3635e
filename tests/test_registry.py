from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mobilevit_torch
from mobilevit_torch import UnknownModelError, create_model, list_models, register_model
from tests.conftest import REPO


def test_list_models() -> None:
    assert list_models() == ["mobilevit_s", "mobilevit_xs", "mobilevit_xxs"]
    assert list_models("*xs") == ["mobilevit_xs", "mobilevit_xxs"]
    assert list_models("resnet*") == []


def test_public_names_resolve_and_the_registry_has_the_builtin_models_however_imported() -> None:
    for name in mobilevit_torch.__all__:  # imported on first use
        assert getattr(mobilevit_torch, name) is not None
    code = "from mobilevit_torch.registry import list_models; print(list_models())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['mobilevit_s', 'mobilevit_xs', 'mobilevit_xxs']"


def test_register_refuses_duplicates() -> None:
    def mobilevit_xxs() -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        register_model(mobilevit_xxs)


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(UnknownModelError, match="mobilevit_xxs") as err:
        create_model("mobilevit_xxx")
    assert "Did you mean" in str(err.value)


@pytest.mark.parametrize(
    "name", ["MobileViT_XXS", "mobilevit-xxs", "xxs", "timm/mobilevit_xxs", "mobilevit_xxs.cvnets_in1k"]
)
def test_near_names_suggest_the_variant_they_name_first(name: str) -> None:
    with pytest.raises(UnknownModelError, match=rf"unknown model '{name}'\. Did you mean 'mobilevit_xxs'"):
        create_model(name)


def test_unknown_keyword_raises_with_suggestion() -> None:
    with pytest.raises(TypeError, match="drop_rat.*did you mean 'drop_rate'"):
        create_model("mobilevit_xxs", drop_rat=0.2)


def test_drop_path_rate_is_an_argument_not_a_typo_of_drop_rate() -> None:
    """It used to be refused as "'drop_path_rate' (did you mean 'drop_rate'?)"."""
    model = create_model("mobilevit_xxs", drop_path_rate=0.1)
    assert model.model_args == {"num_classes": 1000, "drop_path_rate": 0.1}
    with pytest.raises(TypeError, match="drop_path_rat'.*did you mean 'drop_path_rate'"):
        create_model("mobilevit_xxs", drop_path_rat=0.1)


def test_kwargs_reach_the_model() -> None:
    model = create_model("mobilevit_xxs", num_classes=7, drop_rate=0.3)
    assert model.classifier.out_features == 7
    assert model.head_drop.p == 0.3
    assert model.model_args == {"num_classes": 7, "drop_rate": 0.3}

    from mobilevit_torch.layers.attention import MultiHeadAttention
    from mobilevit_torch.layers.mlp import Mlp

    rates = create_model("mobilevit_xxs", dropout=0.15, attn_drop=0.25, ffn_drop=0.35)
    attention = [m for m in rates.modules() if isinstance(m, MultiHeadAttention)]
    mlps = [m for m in rates.modules() if isinstance(m, Mlp)]
    assert len(attention) == len(mlps) == 9  # 2 + 4 + 3 transformer layers
    assert {m.attn_drop for m in attention} == {0.25} and {m.proj_drop.p for m in attention} == {0.15}
    assert {m.drop1.p for m in mlps} == {0.35} and {m.drop2.p for m in mlps} == {0.15}


def test_forward_returns_plain_tensor() -> None:
    out = create_model("mobilevit_xxs", num_classes=3).eval()(torch.randn(1, 3, 64, 64))
    assert type(out) is torch.Tensor and out.shape == (1, 3)


def test_each_model_carries_preprocessing() -> None:
    for name in list_models():
        pre = create_model(name).preprocessing
        assert isinstance(pre, mobilevit_torch.Preprocessing)
        assert pre.input_size == 256 and pre.resize_size == 284


@pytest.mark.parametrize("name", [None, 123, ["mobilevit_xxs"]])
def test_name_that_is_not_a_string_is_a_clear_type_error(name: object) -> None:
    with pytest.raises(TypeError, match="a model name is a string such as 'mobilevit_xxs'"):
        create_model(name)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="shell-style pattern"):
        list_models(None)  # type: ignore[arg-type]
