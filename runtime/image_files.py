"""Image files decoded into model inputs, preprocessed as the file's metadata says. Decoders are
restricted to the documented formats (a file named .png is never handed to another Pillow plugin)
and an image's pixel count is checked before it is decoded (runtime/limits.py: image_pixels)."""

import os
import struct
import warnings
from collections import Counter
from typing import Optional

import numpy as np

from .errors import InputError, first_line
from .limits import Limits
from .format.metadata import ModelInfo, Preprocessing
from .safe_files import open_regular


def _image_formats() -> dict:
    """Extension -> Pillow decoder, the same set by name and in folders."""
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF",
               ".tif": "TIFF", ".tiff": "TIFF"}
    try:
        from PIL import features  # Pillow may be built without libwebp

        if features.check("webp"):
            formats[".webp"] = "WEBP"
    except ImportError:
        pass
    return formats


IMAGE_FORMATS = _image_formats()
IMAGE_EXTENSIONS = tuple(IMAGE_FORMATS)
DECODERS = sorted(set(IMAGE_FORMATS.values()))
UNIFORM = 0.5  # pixel levels: an image whose values all lie within this span shows nothing
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16-bit PNG / TIFF
RESIZES_NAMED = 3  # image sizes a resize warning lists; the rest are counted


def _resize_note(resized: Counter, pre: Preprocessing) -> str:
    """'resized 3 images to the model's 28x28 (width x height): 2 from 640x480, 1 from 32x32'."""
    shown = resized.most_common(RESIZES_NAMED if len(resized) > RESIZES_NAMED + 1 else None)
    sizes = [f"{count} from {width}x{height}" for (width, height), count in shown]
    total = sum(resized.values())
    if len(shown) < len(resized):
        sizes.append(f"{total - sum(count for _, count in shown)} from {len(resized) - len(shown)} other sizes")
    return (f"resized {total} image{'s' * (total != 1)} to the model's {pre.width}x{pre.height} "
            f"(width x height): {', '.join(sizes)}")


def _load_image(path: str, info: ModelInfo, limits: Limits, resized: Optional[Counter] = None) -> np.ndarray:
    """One model input from an image file; its size is counted in `resized` when it differs
    from the model's."""
    from PIL import Image, UnidentifiedImageError  # only image inputs need Pillow

    pre = info.preprocessing
    if pre is None:
        raise InputError(f"{path}: this model has no image preprocessing in its metadata; "
                         "pass preprocessed arrays (.npy / .npz)")
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise InputError(f"{path}: empty file")
        try:
            # Pillow warns about large images; the image_pixels check below decides instead, and
            # the CLI prints one line per problem.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(f, formats=DECODERS) as image:
                    image.seek(0)  # first frame of an animation
                    _check_pixels(path, image, limits)
                    _decode(path, image)
                    size = image.size
                    pixels = _pixels(path, image, pre)
        except Image.DecompressionBombError:
            raise InputError(_bomb_message(path, limits)) from None
        except UnidentifiedImageError:
            raise InputError(f"{path}: cannot read image (not a {', '.join(DECODERS)} file)") from None
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, MemoryError) as err:
            raise InputError(f"{path}: cannot read image ({first_line(err)})") from None
    x = _to_model_input(path, pixels, pre, info)
    if resized is not None and size != (pre.width, pre.height):
        resized[size] += 1
    return x


def _bomb_message(path: str, limits: Limits) -> str:
    # Pillow refuses images over twice its MAX_IMAGE_PIXELS in Image.open, before our own check
    # can see the size; such an image is over the default image_pixels limit too.
    from PIL import Image

    bound = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    over_ours = f"over the image_pixels limit ({limits.image_pixels:,}) and " \
        if limits.image_pixels < bound else ""
    return (f"{path}: image of more than {bound:,} pixels is {over_ours}over Pillow's decompression-bomb "
            "bound, which no --limit raises")


def _check_pixels(path: str, image, limits: Limits) -> None:
    # Image.open has read only the header: nothing is decoded yet.
    width, height = image.size
    if width * height > limits.image_pixels:
        raise InputError(f"{path}: image of {width}x{height} = {width * height:,} pixels is over the "
                         f"image_pixels limit ({limits.image_pixels:,}); raise it with "
                         "--limit image_pixels=N if you trust it")


def _decode(path: str, image) -> None:
    """Decode the frame now: on a corrupt file Pillow's decoders raise errors of many types
    (TypeError from a garbled TIFF tag, ...); whatever they raise here is the file's fault."""
    from PIL import Image

    from .providers import quiet_stderr

    try:
        if image.format == "TIFF":  # libtiff prints its warnings on a corrupt file straight to fd 2
            with quiet_stderr():
                image.load()
        else:
            image.load()
    except (Image.DecompressionBombError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - one line for the user, never a traceback
        raise InputError(f"{path}: cannot read image ({first_line(err)})") from None


def _pixels(path: str, image, pre: Preprocessing) -> np.ndarray:
    """The image at the model's size, as float32 pixel values 0..255 (HxW grey or HxWx3 RGB)."""
    if image.mode == "F" or image.mode in WIDE_MODES:
        return _wide_pixels(path, image, pre)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        image = _composite(path, image, pre.background)
    return _eight_bit_pixels(image, pre)


def _eight_bit_pixels(image, pre: Preprocessing) -> np.ndarray:
    from PIL import Image

    image = image.convert("L" if pre.color_mode == "grayscale" else "RGB")
    if image.size != (pre.width, pre.height):
        # Pillow's filters widen their support when shrinking, so this also antialiases.
        image = image.resize((pre.width, pre.height), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32)


def _composite(path: str, image, background: float):
    """An image with alpha (or a transparent colour) flattened onto the background grey, in
    8 bits like the rest of the image: the grey is rounded to a whole level."""
    from PIL import Image

    rgba = image.convert("RGBA")  # also applies a palette's or a colour key's transparency
    grey = int(round(background))
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (grey, grey, grey, 255)), rgba).convert("RGB")
    low, high = rgba.getchannel("A").getextrema()
    if low != high and all(lo == hi for lo, hi in flat.getextrema()):
        _refuse_alpha_only(path, background)
    return flat


def _refuse_alpha_only(path: str, background: float) -> None:
    raise InputError(f"{path}: the picture is only in the alpha (transparency) channel: composited "
                     f"on the model's background grey {background:g} it is one flat colour; "
                     "save it with the picture in its colour channels")


def _wide_pixels(path: str, image, pre: Preprocessing) -> np.ndarray:
    """16-bit and float images, kept in float: scaled to 0..255, composited, resized."""
    values = np.asarray(image)
    if image.mode == "F":
        grey = _float_levels(path, values)
    else:
        grey = _sixteen_bit_levels(path, values)
    transparent = image.info.get("transparency")
    if isinstance(transparent, (int, float)):  # a 16-bit PNG's colour key
        opaque = values != transparent
        flat = np.where(opaque, grey, np.float32(pre.background)).astype(np.float32)
        if not opaque.all() and opaque.any() and np.ptp(flat) < UNIFORM:
            _refuse_alpha_only(path, pre.background)
        grey = flat
    grey = _resize_float(grey, pre)
    return grey if pre.color_mode == "grayscale" else np.repeat(grey[..., None], 3, axis=2)


def _sixteen_bit_levels(path: str, values: np.ndarray) -> np.ndarray:
    wide = values.dtype.kind != "u" or values.dtype.itemsize > 2  # mode "I": 32-bit, may hold anything
    if wide and values.size and (values.min() < 0 or values.max() > 65535):
        raise InputError(f"{path}: integer image values span {values.min()}..{values.max()}; mcdrop "
                         "reads integer images as 16-bit (0..65535)")
    return values.astype(np.float32) * np.float32(255 / 65535)


def _float_levels(path: str, values: np.ndarray) -> np.ndarray:
    """[0, 1] is read as intensities, [0, 255] as pixel values; anything else is ambiguous."""
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise InputError(f"{path}: float image holds NaN or infinite values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0 and high <= 1:
        return values * np.float32(255)
    if low >= 0 and high <= 255:
        return values
    raise InputError(f"{path}: float image values span {low:g}..{high:g}; mcdrop reads float images "
                     "as intensities in [0, 1] or pixel values in [0, 255]")


def _resize_float(grey: np.ndarray, pre: Preprocessing) -> np.ndarray:
    from PIL import Image

    if grey.shape == (pre.height, pre.width):
        return grey
    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32))  # mode "F"
    resized = np.asarray(image.resize((pre.width, pre.height), Image.Resampling.LANCZOS))
    return np.clip(resized, 0, 255)  # Lanczos rings past the range; 8-bit resizing clips too


def _to_model_input(path: str, pixels: np.ndarray, pre: Preprocessing, info: ModelInfo) -> np.ndarray:
    """0..255 pixels (HxW grey or HxWx3 RGB, whichever path decoded them) -> one model input."""
    x = _normalize(pixels * np.float32(pre.scale) + np.float32(pre.offset), pre)
    example_shape = tuple(info.input_shape[1:])
    if x.ndim == 2 and len(example_shape) == 3:
        x = x[..., None]  # grayscale: the channel axis of NHWC
    if len(example_shape) == 1 and x.size == example_shape[0]:
        x = x.reshape(example_shape)  # a flat (MLP) input takes the pixels row by row
    if x.shape != example_shape:
        raise InputError(f"{path}: the image becomes shape {list(x.shape)} but the model expects "
                         f"{list(example_shape)}")
    return x


def _normalize(x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Channel order, then (x - mean[c]) / std[c] per channel, on the last (channel) axis, before
    a flat input is reshaped. Files without these fields skip both: their numbers stay as they were."""
    if pre.channel_order == "bgr":
        x = np.ascontiguousarray(x[..., ::-1])  # a reversed view would reach onnxruntime strided
    if pre.normalizes:
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return x
