"""While the export traces the model, two Keras TensorFlow-backend calls emit ops tf2onnx converts.

- Grouped convolutions (groups > 1, e.g. ConvNeXt's depthwise 7x7): Keras runs them inside a
  nested `tf.function(jit_compile=True)` (keras/src/backend/tensorflow/nn.py, conv), which
  tf2onnx leaves as a StatefulPartitionedCall with only a warning. Traced instead as a depthwise
  conv (groups == channels, 2-D channels-last), TF's grouped Conv op (tf2onnx writes ONNX Conv
  with its group count), or for 3-D one conv per group, concatenated (tf2onnx reads no group count
  from 3-D convs). Keras also compiles channels-first 3-D convs that way; they take the plain path.
- Exact GELU (`approximate=False`, ConvNeXt's): tf.nn.gelu writes it with Erfc, which tf2onnx
  1.17 has no handler for; 0.5 x (1 + erf(x / sqrt 2)) is the same function (9.5e-7 apart at
  most in float32 over [-20, 20]).

Eager calls (the Keras reference the parity checks compare against) always take Keras's own code,
and nothing on the model changes; the module's functions are restored on exit.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

_SQRT_HALF = 0.7071067811865476


def _as_list(value, rank):
    return [value] * rank if isinstance(value, int) else list(value)


def _convertible_conv(original):
    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        from keras.src.backend import standardize_data_format

        fmt = standardize_data_format(data_format)
        rank = len(inputs.shape) - 2
        channels = inputs.shape[-1] if fmt == "channels_last" else inputs.shape[1]
        grouped = channels != kernel.shape[-2]
        # Keras's own test for its nested jit_compile function: grouped convs, and NCDHW convs.
        if tf.executing_eagerly() or not (grouped or (fmt == "channels_first" and rank == 3)):
            return original(inputs, kernel, strides, padding, data_format, dilation_rate)
        strides, dilations = _as_list(strides, rank), _as_list(dilation_rate, rank)
        if (grouped and rank == 2 and fmt == "channels_last" and kernel.shape[-2] == 1
                and not (max(strides) > 1 and max(dilations) > 1)):
            # groups == channels: a depthwise conv. Keras's kernel [kh, kw, 1, C*m] is depthwise's
            # [kh, kw, C, m]; output channel c*m + k in both.
            depthwise = tf.reshape(kernel, [kernel.shape[0], kernel.shape[1], channels, kernel.shape[-1] // channels])
            return tf.nn.depthwise_conv2d(inputs, depthwise, [1, *strides, 1], padding.upper(), dilations=dilations)
        spatial = "DHW"[3 - rank:]
        tf_format = f"N{spatial}C" if fmt == "channels_last" else f"NC{spatial}"

        def plain(x, k):
            return tf.nn.convolution(x, k, strides, padding.upper(), data_format=tf_format, dilations=dilations)

        if grouped and rank == 3:
            axis = -1 if fmt == "channels_last" else 1
            groups = channels // kernel.shape[-2]
            pieces = zip(tf.split(inputs, groups, axis=axis), tf.split(kernel, groups, axis=-1))
            return tf.concat([plain(x, k) for x, k in pieces], axis)
        # TF cannot run a grouped Conv2D on CPU, but the export only traces it.
        return plain(inputs, kernel)

    return conv


def _convertible_gelu(original):
    def gelu(x, approximate=True):
        if approximate or tf.executing_eagerly():
            return original(x, approximate)
        x = tf.convert_to_tensor(x)
        return 0.5 * x * (1.0 + tf.math.erf(x * tf.cast(_SQRT_HALF, x.dtype)))

    return gelu


@contextlib.contextmanager
def convertible_ops():
    """Within the block, traced grouped convs and exact GELU emit ops tf2onnx converts.

    The swap is process-wide while it lasts: another thread tracing Keras convs at that moment
    would get it too (eager calls are never affected)."""
    from keras.src.backend.tensorflow import nn as backend_nn

    conv, gelu = backend_nn.conv, backend_nn.gelu
    backend_nn.conv, backend_nn.gelu = _convertible_conv(conv), _convertible_gelu(gelu)
    try:
        yield
    finally:
        backend_nn.conv, backend_nn.gelu = conv, gelu
