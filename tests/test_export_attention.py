"""Attention dropout kept live (export/attention.py: MultiHeadAttention, GroupQueryAttention,
Attention, AdditiveAttention): parity with Keras for the attention zoo (tests/zoo.py), the choice of layers by the attention layer's name, and the
attention masks' independence across heads and passes and their place in the shared mask set;
and TimeDistributed(Dropout), one mask per timestep as Keras draws it."""

import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers

pytest.importorskip("tf2onnx")

from conftest import ROOT  # noqa: E402
from parity import assert_parity, random_node_outputs  # noqa: E402
from zoo import ATTENTION_ZOO, KERAS_HUB_ZOO, text_transformer_encoder  # noqa: E402
from mcdrop.export import export_model  # noqa: E402
from mcdrop.export.attention import is_attention  # noqa: E402
from mcdrop.export.validate import validation_inputs  # noqa: E402
from mcdrop.runtime.errors import ExportError  # noqa: E402

pytestmark = pytest.mark.slow


def kinds(result):
    return {layer["name"]: layer["kind"] for layer in result.metadata["stochastic_layers"]}


@pytest.mark.parametrize("name", sorted(ATTENTION_ZOO))
def test_attention_model_matches_keras(name, tmp_path):
    model, kwargs = ATTENTION_ZOO[name]()
    result = assert_parity(model, tmp_path, name, **kwargs)
    attention = [layer for layer in model.layers if is_attention(layer)]
    live = [layer.name for layer in attention if layer.dropout > 0]
    assert [n for n, kind in kinds(result).items() if kind.endswith("Attention dropout")] == live
    for layer in result.metadata["stochastic_layers"]:
        if layer["name"] in live:  # one [heads, query, key] mask per pass in the shared set ([query, key]: one head)
            heads = getattr(model.get_layer(layer["name"]), "num_query_heads", None) or \
                getattr(model.get_layer(layer["name"]), "num_heads", 1)
            assert layer["mask_shape"][0] == heads or len(layer["mask_shape"]) == 2
    wrapped = [layer.name for layer in model.layers if isinstance(layer, layers.TimeDistributed)
               and isinstance(layer.layer, layers.Dropout)]
    assert [n for n, kind in kinds(result).items() if kind == "TimeDistributed Dropout"] == wrapped


def test_mc_layers_picks_the_attention_dropout_alone_with_masks_per_head_and_pass(tmp_path):
    model, _ = text_transformer_encoder()
    result = assert_parity(model, tmp_path, mc_layers=["attention"])
    assert kinds(result) == {"attention": "MultiHeadAttention dropout"}
    x = validation_inputs(model, result.metadata, count=2, seed=1)
    (masks,) = random_node_outputs(result.proto, x, passes=4).values()
    masks = masks.reshape(4, 2, 2, 8, 8)  # [passes, batch, heads, query, key]
    kept = masks >= 0.1
    assert 0.8 < kept.mean() < 0.98  # about 1 - rate
    for a, b in ((kept[0, 0, 0], kept[0, 0, 1]), (kept[0, 0, 0], kept[1, 0, 0]), (kept[0, 0, 0], kept[0, 1, 0])):
        assert not np.array_equal(a, b)
    flat = masks.reshape(4 * 2 * 2, -1)
    assert abs(np.corrcoef(flat[0], flat[1])[0, 1]) < 0.5


def test_ignore_random_layers_leaves_the_attention_dropout_out(tmp_path):
    model, _ = text_transformer_encoder()
    model.save(tmp_path / "m.keras")
    report = export_model(tmp_path / "m.keras", tmp_path / "m.onnx", seed=0, ignore_random_layers=["attention"])
    names = [layer["name"] for layer in report.stochastic_layers]
    assert "attention" not in names and len(names) == 3


def attention_only(rate):
    keras.utils.set_random_seed(3)
    inp = keras.Input((5, 4))
    x = layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=rate, name="mha")(inp, inp)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling1D()(x)))


def test_rate_zero_attention_exports_deterministic_or_says_why_not(tmp_path):
    attention_only(0.0).save(tmp_path / "m.keras")
    with pytest.raises(ExportError, match="no active stochastic layer") as caught:
        export_model(tmp_path / "m.keras", tmp_path / "m.onnx")
    assert "\n" not in str(caught.value)
    report = export_model(tmp_path / "m.keras", tmp_path / "m.onnx", allow_deterministic=True)
    assert report.stochastic_layers == [] and (tmp_path / "m.onnx").exists()


def test_cli_exports_attention_dropout_live(tmp_path):
    attention_only(0.2).save(tmp_path / "m.keras")
    out = tmp_path / "m.onnx"
    done = subprocess.run([sys.executable, "cli.py", "export", tmp_path / "m.keras", "-o", out, "--no-validate"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "mha (MultiHeadAttention dropout 0.2)" in done.stdout


@pytest.mark.parametrize("name", sorted(KERAS_HUB_ZOO))
def test_keras_hub_backbone_matches_keras(name, tmp_path):
    """keras-hub's own layers hold their attention and Dropouts inside their call: each is reached
    there and kept live, with parity (assert_parity: deterministic, T=1000 in both mask modes,
    mask for mask); the model loads through `custom_objects="keras_hub"`."""
    pytest.importorskip("keras_hub")
    model, kwargs = KERAS_HUB_ZOO[name]()
    result = assert_parity(model, tmp_path, name, **kwargs)
    found = result.metadata["stochastic_layers"]
    attention = [layer for layer in found if layer["kind"] == "MultiHeadAttention dropout"]
    assert len(attention) == 2 and all(layer["mask_shape"][0] == 2 for layer in attention)  # 2 blocks, 2 heads
    # Each block's Dropouts (BERT: after attention and FFN; ViT: its MLP's one Dropout called twice too)
    assert [layer["kind"] for layer in found].count("Dropout") >= 5 and found[-1]["name"] == "head_dropout"
    assert result.metadata["masks"] is not None  # fixed lengths: a shareable mask set
