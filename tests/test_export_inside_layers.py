"""Noise layers called inside another layer's own call (a custom layer, TimeDistributed(LSTM),
keras-hub's blocks: tests/test_export_attention.py), stacked recurrent cells and ConvLSTM dropout
export live with parity against Keras (tests/parity.py); each call of an inner noise layer is a
random tensor of its own."""

import pytest

pytest.importorskip("tf2onnx")

from parity import assert_parity  # noqa: E402
from zoo import INSIDE_LAYERS_ZOO  # noqa: E402

pytestmark = pytest.mark.slow

EXPECTED = {
    "custom_layer_holding_dropout": [("inner_dropout", "Dropout")],
    # one LSTM call per outer step, each with its own input masks
    "time_distributed_lstm_dropout": [("lstm", "LSTM dropout")] * 3,
    "stacked_rnn_cells": [("stacked", f"StackedRNNCells {part}") for part in (
        "cell_0/dropout", "cell_0/recurrent_dropout", "cell_1/dropout", "cell_2/recurrent_dropout")],
    # 4 gate masks of a whole step input / state each
    "conv_lstm_2d_both_masks": [("clstm1d", "ConvLSTM1D dropout"), ("clstm2d", "ConvLSTM2D dropout"),
                                ("clstm2d", "ConvLSTM2D recurrent_dropout")],
}
MASK_SHAPES = {"stacked_rnn_cells": [[4, 3], [4, 5], [1, 5], [1, 3]],  # the GRU cell's input: the LSTM cell's 5 units
               "conv_lstm_2d_both_masks": [[4, 50, 1], [4, 5, 5, 2], [4, 3, 3, 3]]}


@pytest.mark.parametrize("name", sorted(INSIDE_LAYERS_ZOO))
def test_noise_inside_layers_matches_keras(name, tmp_path):
    model, kwargs = INSIDE_LAYERS_ZOO[name]()
    result = assert_parity(model, tmp_path, name, **kwargs)
    assert [(layer["name"], layer["kind"]) for layer in result.metadata["stochastic_layers"]] == EXPECTED[name]
    if name in MASK_SHAPES:  # per pass: [gates, *features]
        assert [layer["mask_shape"] for layer in result.metadata["stochastic_layers"]] == MASK_SHAPES[name]
