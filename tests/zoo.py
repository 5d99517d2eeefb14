"""Small Keras models covering every layer kind and model shape the exporter promises.

Each builder returns (model, export kwargs). Weights are seeded; BatchNorm gets non-trivial
moving statistics so a BatchNorm that wrongly ran on batch statistics would show.
"""

import keras
import numpy as np
from keras import layers


def _seeded():
    keras.utils.set_random_seed(1234)


def _randomise_batchnorm(model):
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers():
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.3, beta.shape),
                    rng.normal(0, 0.5, mean.shape),
                    rng.uniform(0.5, 2.0, var.shape),
                ]
            )
    return model


def sequential_mlp():
    _seeded()
    return keras.Sequential(
        [
            keras.Input((12,)),
            layers.Dense(16, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(16, activation="relu"),
            layers.Dropout(0.3),  # same shape as the first: masks must still differ
            layers.Dense(4, activation="softmax"),
        ]
    ), {}


def cnn2d_batchnorm_pooling():
    _seeded()
    inp = keras.Input((10, 10, 2))
    x = layers.Conv2D(6, 3, padding="same")(inp)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.SpatialDropout2D(0.3)(x)
    x = layers.Conv2D(4, 3, activation="relu")(x)
    x = layers.AveragePooling2D(2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.2)(x)
    out = layers.Dense(3, activation="softmax")(x)
    return _randomise_batchnorm(keras.Model(inp, out)), {}


def multi_branch():
    """Branch a is deterministic and joins the stochastic branch b at the Concatenate."""
    _seeded()
    inp = keras.Input((8,))
    a = layers.Dense(6, activation="tanh", name="deterministic_branch")(inp)
    b = layers.Dense(6, activation="relu")(inp)
    b = layers.Dropout(0.4)(b)
    x = layers.Concatenate()([a, b])
    out = layers.Dense(3, activation="softmax")(x)
    return keras.Model(inp, out), {}


def nested_models():
    _seeded()
    inner = keras.Sequential([keras.Input((8,)), layers.Dense(8, activation="relu"), layers.Dropout(0.3)], name="inner")
    inp = keras.Input((6,))
    x = layers.Dense(8)(inp)
    x = inner(x)
    x = layers.GaussianNoise(0.2)(x)
    out = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inp, out), {}


def training_true_recipe():
    """The common recipe: dropout called with training=True so it stays on at inference."""
    _seeded()
    inp = keras.Input((8,))
    x = layers.Dense(16, activation="relu")(inp)
    x = layers.BatchNormalization()(x, training=True)  # must still run in inference mode
    x = layers.Dropout(0.5)(x, training=True)
    out = layers.Dense(3, activation="softmax")(x)
    return _randomise_batchnorm(keras.Model(inp, out)), {}


def gaussian_and_alpha():
    _seeded()
    return keras.Sequential(
        [
            keras.Input((10,)),
            layers.Dense(12, activation="selu"),
            layers.AlphaDropout(0.2),
            layers.Dense(12, activation="relu"),
            layers.GaussianDropout(0.3),
            layers.GaussianNoise(0.5),
            layers.Dense(3, activation="softmax"),
        ]
    ), {}


def conv1d_spatial_lstm():
    _seeded()
    inp = keras.Input((12, 3))
    x = layers.Conv1D(8, 3, activation="relu")(inp)
    x = layers.SpatialDropout1D(0.3)(x)
    x = layers.MaxPooling1D()(x)
    x = layers.LSTM(6)(x)
    x = layers.Dropout(0.25)(x)
    out = layers.Dense(3, activation="softmax")(x)
    return keras.Model(inp, out), {}


def conv3d_spatial():
    _seeded()
    inp = keras.Input((4, 6, 6, 1))
    x = layers.Conv3D(4, 3, activation="relu")(inp)
    x = layers.SpatialDropout3D(0.3)(x)
    x = layers.GlobalAveragePooling3D()(x)
    out = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inp, out), {}


def stochastic_depth():
    """A residual block dropped per sample: Dropout with noise_shape=(None, 1, 1)."""
    _seeded()
    inp = keras.Input((5, 4))
    branch = layers.Dense(4, activation="relu")(inp)
    branch = layers.Dropout(0.3, noise_shape=(None, 1, 1))(branch)
    x = layers.Add()([inp, branch])
    x = layers.GlobalAveragePooling1D()(x)
    out = layers.Dense(3, activation="softmax")(x)
    return keras.Model(inp, out), {}


def shared_dropout_layer():
    """One Dropout layer called on two branches: two random nodes, independent masks."""
    _seeded()
    inp = keras.Input((6,))
    drop = layers.Dropout(0.3, name="shared_drop")
    a = drop(layers.Dense(8, activation="relu")(inp))
    b = drop(layers.Dense(8, activation="tanh")(inp))
    out = layers.Dense(3, activation="softmax")(layers.Concatenate()([a, b]))
    return keras.Model(inp, out), {}


def variable_length_sequence():
    """The time axis is left open (None): validation inputs must still get a size for it."""
    _seeded()
    inp = keras.Input((None, 3))
    x = layers.Conv1D(6, 3, activation="relu")(inp)
    x = layers.Dropout(0.3)(x)
    x = layers.GlobalMaxPooling1D()(x)
    out = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inp, out), {}


def binary_sigmoid():
    _seeded()
    return keras.Sequential(
        [keras.Input((6,)), layers.Dense(8, activation="relu"), layers.Dropout(0.3), layers.Dense(1, activation="sigmoid")]
    ), {}


def multilabel_sigmoid():
    _seeded()
    return keras.Sequential(
        [keras.Input((6,)), layers.Dense(8, activation="relu"), layers.Dropout(0.3), layers.Dense(4, activation="sigmoid")]
    ), {}


def logits_head():
    _seeded()
    return keras.Sequential([keras.Input((6,)), layers.Dense(8, activation="relu"), layers.Dropout(0.3), layers.Dense(5)]), {
        "head": "logits"
    }


def regression_head():
    _seeded()
    return keras.Sequential([keras.Input((6,)), layers.Dense(8, activation="relu"), layers.Dropout(0.3), layers.Dense(2)]), {
        "head": "regression"
    }


def separate_softmax_activation():
    _seeded()
    return keras.Sequential(
        [keras.Input((6,)), layers.Dense(8, activation="relu"), layers.Dropout(0.3), layers.Dense(3), layers.Activation("softmax")]
    ), {}


def normalization_adapted_and_given():
    """Normalization keeps its statistics as plain tensors, which tf2onnx once left as graph
    inputs nobody could feed: one adapted on data, one given mean and variance."""
    _seeded()
    adapted = layers.Normalization()
    adapted.adapt(np.random.default_rng(3).normal(2.0, 3.0, (256, 6)).astype("float32"))
    inp = keras.Input((6,))
    x = adapted(inp)
    x = layers.Dense(8, activation="relu")(x)
    x = layers.Normalization(mean=[0.5] * 8, variance=[2.0] * 8)(x)
    x = layers.Dropout(0.3)(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


def _sequence_classifier(rnn, steps=6, features=3, classes=3):
    _seeded()
    inp = keras.Input((steps, features))
    return keras.Model(inp, layers.Dense(classes, activation="softmax")(rnn(inp)))


def lstm_recurrent_dropout_only():
    """The acceptance case: the model's only randomness is recurrent_dropout (4 gate masks)."""
    return _sequence_classifier(layers.LSTM(5, recurrent_dropout=0.3)), {}


def lstm_input_dropout_fused_gates():
    """dropout alone: Keras's fused implementation, one input mask shared by the 4 gates."""
    return _sequence_classifier(layers.LSTM(5, dropout=0.3)), {}


def gru_both_masks_backwards():
    return _sequence_classifier(layers.GRU(5, dropout=0.2, recurrent_dropout=0.3, go_backwards=True)), {}


def simple_rnn_both_masks():
    return _sequence_classifier(layers.SimpleRNN(5, dropout=0.2, recurrent_dropout=0.3)), {}


def bidirectional_lstm_sequences():
    """Four draws (input and recurrent, each direction), then a Dropout on the sequence."""
    _seeded()
    inp = keras.Input((6, 3))
    x = layers.Bidirectional(layers.LSTM(4, dropout=0.2, recurrent_dropout=0.3, return_sequences=True))(inp)
    x = layers.GlobalAveragePooling1D()(layers.Dropout(0.2)(x))
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


def masked_gru_cell_stack():
    """Padded sequences (Embedding's mask, tiled with the passes) into keras.layers.RNN(GRUCell),
    then a second recurrent layer: the masks of each reach the right rows."""
    _seeded()
    inp = keras.Input((7,))
    x = layers.Embedding(10, 4, mask_zero=True)(inp)
    x = layers.RNN(layers.GRUCell(5, dropout=0.25, recurrent_dropout=0.25), return_sequences=True)(x)
    x = layers.LSTM(4, recurrent_dropout=0.2)(x)
    return keras.Model(inp, layers.Dense(2, activation="softmax")(x)), {}


def two_inputs_two_outputs():
    """An image and a vector in; a softmax and a regression out, each with its own head and
    measures. Only the regression's path meets the GaussianNoise."""
    _seeded()
    image, meta = keras.Input((6, 6, 1), name="image"), keras.Input((3,), name="meta")
    x = layers.Flatten()(layers.SpatialDropout2D(0.2)(layers.Conv2D(4, 3, activation="relu")(image)))
    m = layers.Dense(4, activation="relu")(meta)
    x = layers.Dropout(0.3)(layers.Concatenate()([x, m]))
    digit = layers.Dense(3, activation="softmax", name="digit")(x)
    size = layers.Dense(2, name="size")(layers.GaussianNoise(0.3)(m))
    return keras.Model([image, meta], [digit, size]), {"head": "size=regression"}


def zero_padding_before_max_pool():
    """ZeroPadding2D then MaxPooling2D on values that go negative (ResNet50V2's stem): onnxruntime's
    Pad_Fusion would pool the border over -inf instead of the zeros (export/workarounds.py)."""
    _seeded()
    inp = keras.Input((8, 8, 2))
    x = layers.Conv2D(4, 3, padding="same", bias_initializer=keras.initializers.Constant(-0.5))(inp)
    x = layers.MaxPooling2D(3, strides=2)(layers.ZeroPadding2D(1)(x))
    x = layers.Dropout(0.3)(layers.Flatten()(x))
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


def convnext_stochastic_depth():
    """ConvNeXt's own StochasticDepth (per-sample DropPath on a residual branch, drawn from
    Keras's global seed generator) kept live; its LayerScale is plain arithmetic."""
    from keras.src.applications.convnext import LayerScale, StochasticDepth

    _seeded()
    inp = keras.Input((5, 4))
    branch = LayerScale(0.5, 4)(layers.Dense(4, activation="gelu")(inp))
    x = layers.Add()([inp, StochasticDepth(0.3)(branch)])
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


def grouped_convolutions_exact_gelu():
    """Convolutions Keras's TF backend compiles with XLA (groups > 1: depthwise, grouped with a
    stride, grouped with dilation, causal 1-D depthwise) and exact GELU (Keras's default), which
    tf2onnx cannot convert as Keras traces them (export/convertible_ops.py)."""
    _seeded()
    image, sequence = keras.Input((9, 9, 4), name="image"), keras.Input((7, 4), name="sequence")
    x = layers.Activation("gelu")(layers.Conv2D(4, 3, padding="same", groups=4)(image))
    x = layers.Conv2D(8, 3, strides=2, groups=4, activation="relu")(x)
    x = layers.Conv2D(8, 3, dilation_rate=2, padding="same", groups=2)(x)
    x = layers.Dropout(0.3)(layers.Flatten()(x))
    y = layers.Flatten()(layers.SpatialDropout1D(0.2)(layers.Conv1D(4, 3, padding="causal", groups=4)(sequence)))
    out = layers.Dense(3, activation="softmax")(layers.Concatenate()([x, y]))
    return keras.Model([image, sequence], out), {}


ZOO = {
    f.__name__: f
    for f in (
        sequential_mlp,
        cnn2d_batchnorm_pooling,
        multi_branch,
        nested_models,
        training_true_recipe,
        gaussian_and_alpha,
        conv1d_spatial_lstm,
        conv3d_spatial,
        stochastic_depth,
        shared_dropout_layer,
        variable_length_sequence,
        binary_sigmoid,
        multilabel_sigmoid,
        logits_head,
        regression_head,
        separate_softmax_activation,
        normalization_adapted_and_given,
        lstm_recurrent_dropout_only,
        lstm_input_dropout_fused_gates,
        gru_both_masks_backwards,
        simple_rnn_both_masks,
        bidirectional_lstm_sequences,
        masked_gru_cell_stack,
        two_inputs_two_outputs,
        zero_padding_before_max_pool,
        convnext_stochastic_depth,
        grouped_convolutions_exact_gelu,
    )
}


def _encoder_block(x, heads=2, key_dim=8, rate=0.1, name=None, **attention_kwargs):
    """One post-norm Transformer encoder block as Keras's tutorials write it."""
    width = x.shape[-1]
    attended = layers.MultiHeadAttention(num_heads=heads, key_dim=key_dim, dropout=rate, name=name)(
        x, x, **attention_kwargs)
    x = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([x, layers.Dropout(0.1)(attended)]))
    ffn = layers.Dense(width, activation="gelu")(layers.Dense(2 * width, activation="gelu")(x))
    return layers.LayerNormalization(epsilon=1e-6)(layers.Add()([x, layers.Dropout(0.1)(ffn)]))


def text_transformer_encoder():
    """Int token ids (0 pads: Embedding's mask_zero reaches the attention as its query, key and
    value masks), one encoder block with attention dropout, mean over time, softmax."""
    _seeded()
    inp = keras.Input((8,), dtype="int32")
    x = layers.Embedding(20, 16, mask_zero=True)(inp)
    x = _encoder_block(x, name="attention")
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(layers.Dropout(0.1)(x))), {}


def causal_decoder_block():
    """use_causal_mask=True: each position attends to itself and the past only."""
    _seeded()
    inp = keras.Input((6, 4))
    x = layers.Dense(8)(inp)
    x = _encoder_block(x, rate=0.2, use_causal_mask=True)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


def cross_attention_two_inputs():
    """Queries from one input attend to another of a different length, with an explicit
    attention_mask input (1 attends, 0 does not) and the scores returned too."""
    _seeded()
    queries, context = keras.Input((4, 6), name="queries"), keras.Input((7, 5), name="context")
    allowed = keras.Input((4, 7), name="allowed")
    attended, _scores = layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.2, name="cross")(
        queries, context, attention_mask=allowed, return_attention_scores=True)
    x = layers.LayerNormalization()(layers.Add()([queries, attended]))
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model([queries, context, allowed], layers.Dense(3, activation="softmax")(x)), {}


@keras.saving.register_keras_serializable(package="zoo")
class PositionEmbedding(layers.Layer):
    """A learned position embedding added to the patches, as ViT tutorials write it."""

    def build(self, input_shape):
        self.positions = self.add_weight(shape=tuple(input_shape[1:]), initializer="random_normal", name="positions")

    def call(self, x):
        return x + self.positions


def tiny_vit():
    """Strided Conv2D patches, a position embedding, one encoder block, a Dropout head."""
    _seeded()
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 4, strides=4)(inp)
    x = PositionEmbedding()(layers.Reshape((4, 8))(x))
    x = _encoder_block(x, rate=0.1, name="vit_attention")
    x = layers.Dropout(0.2)(layers.GlobalAveragePooling1D()(x))
    # The position embedding is code of this module, trusted here (a user would pass --custom-objects).
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {"trust_model_code": True}


def attention_without_dropout():
    """MultiHeadAttention(dropout=0) still holds an inner Dropout, never called: deterministic."""
    _seeded()
    inp = keras.Input((5, 4))
    x = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="plain_attention")(inp, inp)
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


def dot_and_additive_attention():
    """keras.layers.Attention (causal) and AdditiveAttention with dropout, over padded tokens."""
    _seeded()
    inp = keras.Input((6,), dtype="int32")
    x = layers.Embedding(12, 8, mask_zero=True)(inp)
    dot = layers.Attention(dropout=0.2, use_scale=True, name="dot")([x, x], use_causal_mask=True)
    additive = layers.AdditiveAttention(dropout=0.3, name="additive")([x, x])
    x = layers.GlobalAveragePooling1D()(layers.Add()([dot, additive]))
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


def grouped_query_attention():
    """GroupQueryAttention: 4 query heads share 2 key/value heads; its dropout is per query head."""
    _seeded()
    inp = keras.Input((5, 8))
    x = layers.GroupQueryAttention(head_dim=4, num_query_heads=4, num_key_value_heads=2, dropout=0.2,
                                     name="gqa")(inp, inp)
    x = layers.GlobalAveragePooling1D()(layers.Add()([inp, x]))
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


def attention_called_twice():
    """One attention layer called twice: two calls, two independent draws."""
    _seeded()
    inp = keras.Input((4, 4))
    shared = layers.MultiHeadAttention(2, 2, dropout=0.3, name="called_twice")
    x = shared(shared(inp, inp), inp)
    return keras.Model(inp, layers.Dense(2, activation="softmax")(layers.Flatten()(x))), {}


def time_distributed_dropout_gru():
    """TimeDistributed(Dense) and TimeDistributed(Dropout) before a GRU: Keras draws one mask per
    timestep; with noise_shape=(None, 1) a whole step's features drop together."""
    _seeded()
    inp = keras.Input((5, 4))
    x = layers.TimeDistributed(layers.Dense(6, activation="relu"))(inp)
    x = layers.TimeDistributed(layers.Dropout(0.3), name="step_dropout")(x)
    x = layers.TimeDistributed(layers.Dropout(0.2, noise_shape=(None, 1)), name="step_drop_all")(x)
    x = layers.GRU(5)(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


def normalisations_around_attention():
    """The layers around attention blocks: EinsumDense, GroupNormalization, UnitNormalization,
    swish, then self-attention with dropout."""
    _seeded()
    inp = keras.Input((6, 8))
    x = layers.EinsumDense("btc,cd->btd", output_shape=(None, 8), bias_axes="d")(inp)
    x = layers.Activation("swish")(layers.GroupNormalization(groups=2)(x))
    x = layers.UnitNormalization()(x)
    x = layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.2, name="norm_attention")(x, x)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling1D()(x))), {}


# Attention and TimeDistributed models: tests/test_export_attention.py runs them.
ATTENTION_ZOO = {
    f.__name__: f
    for f in (
        text_transformer_encoder,
        causal_decoder_block,
        cross_attention_two_inputs,
        tiny_vit,
        attention_without_dropout,
        time_distributed_dropout_gru,
        dot_and_additive_attention,
        grouped_query_attention,
        attention_called_twice,
        normalisations_around_attention,
    )
}


def _rescaled(model, stddev=0.3):
    """keras-hub's BERT initialiser (stddev 0.02) leaves every softmax near uniform; wider weights
    make the dropout's effect, and so the statistical checks, count."""
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if weight.path.endswith(("kernel", "embeddings")):
            weight.assign(rng.normal(0, stddev, weight.shape).astype("float32"))
    return model


def keras_hub_bert_classifier():
    """A 2-layer keras_hub BertBackbone (vocabulary 30, width 8) called on the model's own
    token_ids / segment_ids / padding_mask inputs (fixed length 6, so the mask set is shareable),
    its pooled output through Dropout into a softmax. The backbone's TransformerEncoders hold
    their MultiHeadAttention and Dropouts inside their own call."""
    import keras_hub

    _seeded()
    backbone = keras_hub.models.BertBackbone(vocabulary_size=30, num_layers=2, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, dropout=0.1, max_sequence_length=8)
    inputs = {name: keras.Input((6,), dtype="int32", name=name) for name in ("token_ids", "segment_ids", "padding_mask")}
    pooled = backbone(inputs)["pooled_output"]
    out = layers.Dense(3, activation="softmax")(layers.Dropout(0.2, name="head_dropout")(pooled))
    return _rescaled(keras.Model(inputs, out)), {"custom_objects": "keras_hub"}


def keras_hub_vit_classifier():
    """A 2-layer keras_hub ViTBackbone on 8x8 images (4x4 patches, a class token), dropout and
    attention dropout on; its class token through Dropout into a softmax. Its MLP blocks call
    one Dropout twice, and its encoder nests the blocks: layers inside layers."""
    import keras_hub

    _seeded()
    backbone = keras_hub.models.ViTBackbone(image_shape=(8, 8, 1), patch_size=4, num_layers=2, num_heads=2,
                                            hidden_dim=8, mlp_dim=16, dropout_rate=0.1, attention_dropout=0.1)
    images = keras.Input((8, 8, 1), name="images")
    tokens = backbone(images)
    out = layers.Dense(3, activation="softmax")(layers.Dropout(0.2, name="head_dropout")(tokens[:, 0, :]))
    return keras.Model(images, out), {"custom_objects": "keras_hub"}


# keras-hub backbones built from their constructors (no weights downloaded).
KERAS_HUB_ZOO = {f.__name__: f for f in (keras_hub_bert_classifier, keras_hub_vit_classifier)}


@keras.saving.register_keras_serializable(package="zoo")
class DenseWithDropout(layers.Layer):
    """A custom layer calling a Dropout of its own inside its call, as user code often does."""

    def __init__(self, units=6, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense, self.drop = layers.Dense(units, activation="relu"), layers.Dropout(0.3, name="inner_dropout")

    def call(self, x, training=None):
        return self.drop(self.dense(x), training=training)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def custom_layer_holding_dropout():
    _seeded()
    inp = keras.Input((5,))
    x = DenseWithDropout(name="custom_block")(inp)
    # The layer is code of this module, trusted here (a user would pass --custom-objects).
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {"trust_model_code": True}


def time_distributed_lstm_dropout():
    """TimeDistributed(LSTM(dropout)): Keras calls the LSTM once per outer step, each call
    drawing its own input masks."""
    _seeded()
    inp = keras.Input((3, 4, 2))
    x = layers.TimeDistributed(layers.LSTM(3, dropout=0.2), name="td_lstm")(inp)
    return keras.Model(inp, layers.Dense(2, activation="softmax")(layers.Flatten()(x))), {}


def stacked_rnn_cells():
    """keras.layers.RNN(StackedRNNCells): an LSTM cell with both masks, a GRU cell with input
    dropout (its input is the LSTM cell's output), a SimpleRNN cell with recurrent dropout."""
    _seeded()
    inp = keras.Input((6, 3))
    cells = layers.StackedRNNCells([layers.LSTMCell(5, dropout=0.2, recurrent_dropout=0.3),
                                    layers.GRUCell(4, dropout=0.25), layers.SimpleRNNCell(3, recurrent_dropout=0.2)])
    x = layers.RNN(cells, name="stacked")(inp)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


# Noise layers reached inside other layers' calls, and stacked recurrent cells:
# tests/test_export_inside_layers.py runs them.
INSIDE_LAYERS_ZOO = {f.__name__: f for f in (custom_layer_holding_dropout, time_distributed_lstm_dropout,
                                             stacked_rnn_cells)}


def conv_lstm_2d_both_masks():
    """ConvLSTM2D with dropout and recurrent_dropout: 4 masks of a whole step input [5, 5, 2] and 4
    of a whole state [3, 3, 3] ('valid' 3x3 kernels), per sequence and pass; then a ConvLSTM1D
    returning sequences with input dropout only."""
    _seeded()
    inp = keras.Input((4, 5, 5, 2))
    x = layers.ConvLSTM2D(3, 3, dropout=0.2, recurrent_dropout=0.3, name="clstm2d")(inp)
    y = layers.ConvLSTM1D(2, 2, padding="same", dropout=0.25, return_sequences=True, name="clstm1d")(
        layers.Reshape((4, 50, 1))(inp))
    x = layers.Concatenate()([layers.Flatten()(x), layers.Flatten()(y)])
    return keras.Model(inp, layers.Dense(3, activation="softmax")(x)), {}


INSIDE_LAYERS_ZOO[conv_lstm_2d_both_masks.__name__] = conv_lstm_2d_both_masks
