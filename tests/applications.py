"""Keras Applications families as a user deploys them for MC dropout: the family's convolutional
base (weights=None: nothing can be downloaded here), average pooling, Dropout, a softmax head.

Freshly initialised bases give a flat head (the same output for every input), so BatchNorm gets
moving statistics and scales drawn near their defaults, as a trained network's would be, enough
for inputs to matter without the activations blowing up through 50+ layers.
"""

import keras
import numpy as np
from keras import layers

SIZE = 32  # the smallest input every family below accepts; the tests stay fast on 2 cores
CLASSES = 5
FAMILIES = ("MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0", "EfficientNetV2B0",
            "DenseNet121", "ResNet50V2", "NASNetMobile", "ConvNeXtTiny")


def application_model(family: str):
    keras.utils.set_random_seed(0)
    base = getattr(keras.applications, family)(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3),
                                               pooling="avg")
    _trained_like_batchnorm(base)
    _trained_like_layer_scale(base)
    inp = keras.Input((SIZE, SIZE, 3))
    x = layers.Dropout(0.3, name="head_dropout")(base(inp))
    return keras.Model(inp, layers.Dense(CLASSES, activation="softmax", name="head")(x), name=f"{family.lower()}_mc")


def _trained_like_batchnorm(model):
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers():
        if isinstance(layer, layers.BatchNormalization):
            weights = layer.get_weights()
            shape = weights[-1].shape
            moments = [rng.normal(0, 0.1, shape), rng.uniform(0.8, 1.2, shape)]
            affine = [rng.uniform(0.8, 1.2, shape), rng.normal(0, 0.1, shape)][:len(weights) - 2]
            layer.set_weights(affine + moments)


def _trained_like_layer_scale(model):
    """ConvNeXt's LayerScale starts at 1e-6, which mutes every block; trained ones sit near 0.1-1."""
    rng = np.random.default_rng(1)
    for layer in model._flatten_layers():
        if type(layer).__name__ == "LayerScale":
            layer.set_weights([rng.uniform(0.3, 0.7, w.shape) for w in layer.get_weights()])
