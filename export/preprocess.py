"""How an image becomes the model input: the pixel pipeline an export writes in the metadata.

Keras Applications models expect their own `preprocess_input`; mcdrop writes the matching
pipeline (docs/FORMAT.md) so that `infer image.png` feeds the numbers the model was trained on.
The mode comes from --preprocess, a custom --scale/--offset, what the model shows of itself (a
Keras Applications name, a leading Rescaling layer), or the default, and the report says which.
"""

from __future__ import annotations

import math
import re

from ..runtime.errors import ExportError

# Keras's `imagenet_utils.preprocess_input(x, mode=...)` for 0..255 RGB pixels, written as the
# metadata's pipeline: channel_order, then x = (pixel * scale + offset - mean[c]) / std[c]
# (docs/FORMAT.md). The one place these numbers live: the runtime reads them from each file.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # torch: on pixels / 255, R G B
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # caffe: on 0..255 pixels, B G R (after reordering)
PREPROCESS_MODES = {
    "tf": {"scale": 1 / 127.5, "offset": -1.0},  # [-1, 1]: MobileNet v1/v2, Inception, Xception, NASNet, ResNetV2
    "torch": {"scale": 1 / 255, "mean": IMAGENET_MEAN_RGB, "std": IMAGENET_STD_RGB},  # DenseNet
    "caffe": {"scale": 1.0, "channel_order": "bgr", "mean": CAFFE_MEAN_BGR},  # ResNet, VGG
    "raw": {"scale": 1.0},  # 0..255 as they are: models that rescale inside (EfficientNet, ConvNeXt, MobileNetV3)
    "unit": {"scale": 1 / 255},  # [0, 1]: mcdrop's default
}
# Keras Applications' model names (their `name=` defaults, lower-cased) -> the mode their own
# preprocess_input uses; those that build Rescaling/Normalization layers in take raw pixels.
KERAS_APPLICATION_MODES = (
    (r"mobilenet_[0-9.]+_[0-9]+|mobilenetv2_[0-9.]+_[0-9]+", "tf"),
    (r"inception_v3|inception_resnet_v2|xception|nasnet_(mobile|large)|resnet(50|101|152)v2", "tf"),
    (r"resnet(50|101|152)|vgg(16|19)", "caffe"),
    (r"densenet(121|169|201)", "torch"),
    (r"efficientnetb[0-7]|efficientnetv2-(b[0-3]|s|m|l)|convnext_(tiny|small|base|large|xlarge)", "raw"),
    (r"mobilenetv3(large|small)", "raw"),
)
DEFAULT_PREPROCESS = "unit"
UNKNOWN_PREPROCESS = "default, not known from the model: pass --preprocess if the model expects another"


def image_preprocessing(model, size=None, color_mode=None, scale=None, offset=None, preprocess=None):
    """How an image becomes the model input, and why: (metadata dict or None, reason).

    An input of shape (H, W, 1|3) is an image; a flat input needs --image-size. The pixel
    pipeline is `preprocess` (a PREPROCESS_MODES name), else a custom scale/offset, else what the
    model shows (a Keras Applications name, a leading Rescaling layer), else "unit" (x / 255).
    """
    if len(model.inputs) > 1:
        if any(v is not None for v in (size, preprocess, scale, offset)):
            raise ExportError("--preprocess/--scale/--offset/--image-size are for models with one image input; "
                              f"this one has {len(model.inputs)} inputs, fed as arrays by name")
        return None, f"{len(model.inputs)} inputs: pass preprocessed arrays by input name (.npz)"
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) == 3 and shape[-1] in (1, 3) and None not in shape[:2]:
        height, width = shape[0], shape[1]
        mode = "grayscale" if shape[-1] == 1 else "rgb"
    elif size:
        height, width = size
        mode = "rgb" if shape and shape[-1] == 3 else "grayscale"
    else:
        if preprocess is not None or scale is not None or offset is not None:
            raise ExportError(f"--preprocess/--scale/--offset are for images, and the model input {shape} is not "
                              "one; give --image-size HxW if it takes flattened images")
        return None, "the input is not an image: pass preprocessed arrays (.npy/.npz)"
    if size and (height, width) != tuple(size):
        raise ExportError(f"--image-size {size[0]}x{size[1]} does not match the model input {shape}")
    mode = color_mode or mode
    pixels = height * width * (1 if mode == "grayscale" else 3)
    if None not in shape and math.prod(shape) != pixels:
        raise ExportError(f"a {height}x{width} {mode} image has {pixels} values; the model input {shape} does not")
    pipeline, reason = _pixel_pipeline(model, mode, preprocess, scale, offset)
    return {"height": height, "width": width, "color_mode": mode, **pipeline}, reason


def check_preprocess_options(preprocess, scale=None, offset=None):
    """--preprocess names a known mode and is not mixed with --scale/--offset (a custom pipeline).
    Needs no TensorFlow: the CLI checks before loading it."""
    if preprocess is not None and preprocess not in PREPROCESS_MODES:
        raise ExportError(f"--preprocess {preprocess!r}: choose {', '.join(PREPROCESS_MODES)}")
    if preprocess is not None and (scale is not None or offset is not None):
        raise ExportError(f"--scale/--offset set a custom pipeline; leave them out with --preprocess {preprocess}")


def _pixel_pipeline(model, color_mode, preprocess, scale, offset):
    """(scale, offset, channel_order, mean, std and mode fields, why they were chosen)."""
    check_preprocess_options(preprocess, scale, offset)
    if preprocess is not None:
        if not _fits(preprocess, color_mode):
            raise ExportError(f"--preprocess {preprocess} works on the 3 channels of rgb images, not {color_mode}")
        return _pipeline_fields(preprocess), "given: --preprocess"
    if scale is not None or offset is not None:
        fields = {"scale": 1 / 255 if scale is None else scale, "offset": 0.0 if offset is None else offset}
        return _pipeline_fields("custom", fields), "given: --scale/--offset"
    mode, reason = _detected_mode(model, color_mode)
    return _pipeline_fields(mode), reason


def _pipeline_fields(mode, fields=None):
    """The metadata's pipeline fields, every one written out so that other readers need no defaults."""
    fields = PREPROCESS_MODES[mode] if fields is None else fields
    return {"scale": float(fields["scale"]), "offset": float(fields.get("offset", 0.0)),
            "channel_order": fields.get("channel_order", "rgb"), "mean": [float(m) for m in fields.get("mean", (0.0,))],
            "std": [float(s) for s in fields.get("std", (1.0,))], "mode": mode}


def _fits(mode, color_mode):
    """Per-channel modes need the three channels of an rgb image."""
    return color_mode == "rgb" or len(PREPROCESS_MODES[mode].get("mean", ())) <= 1


def _detected_mode(model, color_mode):
    """(mode, reason) from what the model shows of itself, else the default. A fine-tuned model
    often starts with its Keras Applications base as a nested model: its name counts too."""
    chain, first = _leading_models(model)
    for depth, inner in enumerate(chain):
        for pattern, mode in KERAS_APPLICATION_MODES:
            if re.fullmatch(pattern, inner.name.lower()) and _fits(mode, color_mode):
                whose = "the model's name" if depth == 0 else "the name of the model it starts with,"
                return mode, f"from {whose} '{inner.name}'"
    if type(first).__name__ == "Rescaling":
        return "raw", "the model's first layer is a Rescaling layer: it scales pixels itself"
    return DEFAULT_PREPROCESS, UNKNOWN_PREPROCESS


def _leading_models(model, max_depth=16):
    """([the model, the nested model it starts with, ...], the first layer that is no model)."""
    from .trace import sub_model

    chain, first = [model], _first_layer(model)
    while first is not None and sub_model(first) is not None and len(chain) < max_depth:
        chain.append(first)
        first = _first_layer(first)
    return chain, first


def _first_layer(model):
    from .trace import sub_model

    graph = sub_model(model)
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.is_input and node.operation:
                return node.operation
    return None
