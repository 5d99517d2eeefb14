"""Recurrent dropout kept live: LSTM, GRU and SimpleRNN (also in keras.layers.RNN and Bidirectional).

Keras 3 draws an RNN's masks once per call, per sequence, and reuses them at every timestep
(keras/src/layers/rnn/dropout_rnn_cell.py): `cell.get_dropout_mask(step_input)` for the inputs
and `cell.get_recurrent_dropout_mask(state)` for the previous output, each cached on the cell
until the layer's call ends. With `recurrent_dropout > 0` (or `implementation=1`) the LSTM cell
draws 4 independent masks, one per gate, and the GRU cell 3; otherwise one mask shared by the
gates. A mask is `ones * (u >= rate) / (1 - rate)` for u uniform on [0, 1).

The exporter fills that cache with masks built from its own random tensors before calling the
layer with training=True, so the cell's own code applies them: the gate layout, go_backwards,
masking and return_sequences are Keras's by construction. Each mask kind is one random tensor of
shape [count, rows, features]; `rows` is T*B, so every pass of every sequence has its own masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import tensorflow as tf

from ..runtime.errors import ExportError

# Cells whose call reads the cached masks as shown above, alone or in keras.layers.StackedRNNCells
# (Keras fills and resets each stacked cell's cache, keras/src/layers/rnn/rnn.py), and ConvLSTMCell
# (ConvLSTM1D/2D/3D: its masks are a whole step input's and a whole state's shape, 4 of each);
# other cells (user cells) are refused by name by export/randomness.py when they would draw.
CELLS = ("LSTMCell", "GRUCell", "SimpleRNNCell", "ConvLSTMCell")


@dataclass(frozen=True)
class RecurrentDraw:
    """One random tensor of a recurrent layer call: the input or the recurrent masks of one cell."""

    cell: object
    mask: str  # "dropout" (the inputs) or "recurrent_dropout" (the previous output)
    direction: str  # "" for a plain RNN, "forward" or "backward" inside Bidirectional
    rate: float
    count: int  # masks drawn at once: 4 for an LSTM's gates, 3 for a GRU's, else 1
    stacked: str = ""  # "cell_<i>" for the i-th cell of a StackedRNNCells
    input_size: int | None = None  # a stacked cell's step input: the cell below's output; else the sequence's
    rnn: object = None  # the RNN layer that runs the cell (a ConvLSTM's state shape is its output's)

    @property
    def part(self) -> str:
        return "/".join(p for p in (self.direction, self.stacked, self.mask) if p)


def _cell_kind(cell):
    for cls in type(cell).__mro__:
        if cls.__name__ in CELLS and cls.__module__.startswith("keras"):
            return cls.__name__
    return None


def rnn_parts(layer):
    """[(direction, RNN layer)] for an RNN or a Bidirectional wrapper of one; [] for other layers."""
    import keras

    if isinstance(layer, keras.layers.Bidirectional):
        return [("forward", layer.forward_layer), ("backward", layer.backward_layer)]
    if isinstance(layer, keras.layers.RNN):
        return [("", layer)]
    return []


def cells_of(rnn) -> list:
    """The cells an RNN layer runs: a StackedRNNCells' own, in order, else its one cell."""
    import keras

    return list(rnn.cell.cells) if isinstance(rnn.cell, keras.layers.StackedRNNCells) else [rnn.cell]


def is_recurrent(layer) -> bool:
    """An RNN (or Bidirectional) whose every cell is one whose masks mcdrop can fill."""
    parts = rnn_parts(layer)
    return bool(parts) and all(_cell_kind(cell) is not None for _, rnn in parts for cell in cells_of(rnn))


def recurrent_kind(layer) -> str:
    """'LSTM', 'GRU', 'SimpleRNN', 'StackedRNNCells' (or 'Bidirectional LSTM'...): what the
    export report shows."""
    rnn = rnn_parts(layer)[0][1]
    cells = cells_of(rnn)
    kind = "StackedRNNCells" if len(cells) > 1 or cells[0] is not rnn.cell else \
        type(rnn).__name__ if _cell_kind(cells[0]) == "ConvLSTMCell" else _cell_kind(cells[0])[: -len("Cell")]
    return f"Bidirectional {kind}" if rnn_parts(layer)[0][0] else kind


def _output_size(cell) -> int:
    size = getattr(cell, "output_size", None) or cell.state_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def recurrent_draws(layer) -> List[RecurrentDraw]:
    """The random tensors a call of this layer reads, in a fixed order. Keras applies a mask only
    for 0 < rate < 1 (a rate of 1 drops nothing there), so only those get a draw."""
    draws = []
    for direction, rnn in rnn_parts(layer):
        cells = cells_of(rnn)
        stacked = cells[0] is not rnn.cell
        for i, cell in enumerate(cells):
            count = getattr(cell, "dropout_mask_count", None) or 1
            below = _output_size(cells[i - 1]) if i else None
            for mask in ("dropout", "recurrent_dropout"):
                rate = float(getattr(cell, mask))
                if 0.0 < rate < 1.0:
                    draws.append(RecurrentDraw(cell, mask, direction, rate, count, f"cell_{i}" if stacked else "",
                                               below, rnn))
    return draws


def draw_dims(draw: RecurrentDraw, sequences, rows) -> list:
    """[count, rows, *features] of one draw: the step input's features, or the state's units; a
    ConvLSTM's are a whole step input's [*spatial, channels] or state's [*spatial, filters]."""
    if _cell_kind(draw.cell) == "ConvLSTMCell":
        if draw.mask == "dropout":
            features = list(sequences.shape[2:])
        else:
            state = draw.rnn.compute_output_shape(tuple(sequences.shape))
            state = state[0] if isinstance(state, list) else state  # return_state: output first
            features = list(state[2:] if draw.rnn.return_sequences else state[1:])
    elif draw.mask == "dropout":
        features = [draw.input_size or sequences.shape[-1]]
    else:
        size = draw.cell.state_size
        features = [size[0] if isinstance(size, (list, tuple)) else size]
    if any(f is None for f in features):
        raise ExportError(f"layer '{draw.rnn.name}': its {draw.mask} masks need a known shape; build the model with "
                          "fixed sizes, or pass --ignore-random-layers " + draw.rnn.name)
    return [draw.count, rows, *map(int, features)]


def masks_from_uniform(u, rate, count):
    """Keras's `dropout(ones, rate)` on a uniform draw: (u >= rate) / (1 - rate); one tensor, or a
    list of `count` for cells that keep one mask per gate. `rate` may be a tensor (0 turns it off)."""
    masks = tf.cast(u >= rate, tf.float32) * (1.0 / (1.0 - rate))
    return [masks[i] for i in range(count)] if count > 1 else masks[0]


def call_with_masks(layer, args, kwargs, masks_by_draw):
    """layer(*args, training=True) with each cell's masks taken from `masks_by_draw`
    ([(RecurrentDraw, mask or list of masks)]) instead of drawn by Keras."""
    cells = []
    for draw, masks in masks_by_draw:
        setattr(draw.cell, "_dropout_mask" if draw.mask == "dropout" else "_recurrent_dropout_mask", masks)
        cells.append(draw.cell)
    try:
        return layer(*args, **{**kwargs, "training": True})
    finally:
        for cell in cells:  # Keras resets them at the end of a call; also after a failed one
            cell.reset_dropout_mask()
            cell.reset_recurrent_dropout_mask()


def keras_drawn_masks(layer, args):
    """Let Keras draw the masks of this call as its own call would (its seed generator, its
    shapes) and leave them cached for that call: returns one [count, rows, features] array per
    draw, in recurrent_draws order, of 1.0 kept / 0.0 dropped: the uniform-equivalent tensors the
    exported graph reads in place of its random nodes."""
    import keras

    sequences = args[0]
    rows = tf.shape(sequences)[0]
    out = []
    for draw in recurrent_draws(layer):
        dims = draw_dims(draw, sequences, rows)
        probe = keras.ops.ones(dims[1:])
        if draw.mask == "dropout":
            masks = draw.cell.get_dropout_mask(probe)
        else:
            masks = draw.cell.get_recurrent_dropout_mask(probe)
        stacked = tf.stack(masks if isinstance(masks, (list, tuple)) else [masks])
        out.append(tf.cast(stacked > 0, tf.float32).numpy())
    return out
