"""`evaluate --shift`: standard corruptions of image inputs at five severities (after Hendrycks and
Dietterich 2019, ImageNet-C: Gaussian noise, Gaussian blur, contrast, rotation, JPEG).

Each corruption takes pixels as float [H, W] or [H, W, C] in 0..255 and a severity 0..5 (0 gives
the pixels back unchanged) and returns the same shape in 0..255; numpy and Pillow only. The
parameters per severity are in SEVERITIES (docs/DESIGN.md: evaluate under shift, where they come
from). `shift_batch` maps a batch of model inputs to pixels through the file's image preprocessing,
corrupts them and maps them back.
"""

from __future__ import annotations

import io
import math
from typing import Callable, Dict, Optional

import numpy as np

from ..runtime.errors import InputError

LEVELS = 5
# Per severity 1..5. Noise: standard deviation as a share of 255 (ImageNet-C's). Blur: the Gaussian's
# sigma as a share of the image's shorter side (ImageNet-C's 1..6 pixels at 224 are too mild for small
# images). Contrast: the factor the distance to the image's mean is scaled by (ImageNet-C's). Rotation:
# degrees. JPEG: Pillow's quality (ImageNet-C's).
SEVERITIES = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (0.02, 0.03, 0.045, 0.06, 0.08),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "rotation": (10.0, 20.0, 30.0, 45.0, 60.0),
    "jpeg": (25, 18, 15, 10, 7),
}


def _check(pixels, severity: int) -> np.ndarray:
    if not isinstance(severity, (int, np.integer)) or isinstance(severity, bool) or not 0 <= severity <= LEVELS:
        raise InputError(f"severity must be an integer in 0..{LEVELS}, got {severity!r}")
    array = np.asarray(pixels, np.float64)
    if array.ndim not in (2, 3):
        raise InputError(f"pixels must be [H, W] or [H, W, C], got shape {array.shape}")
    return array


def gaussian_noise(pixels, severity: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Pixels plus normal noise of standard deviation SEVERITIES[..] * 255, clipped to 0..255."""
    x = _check(pixels, severity)
    if severity == 0:
        return x
    rng = rng if rng is not None else np.random.default_rng(0)
    return np.clip(x + rng.normal(0.0, SEVERITIES["gaussian_noise"][severity - 1] * 255, x.shape), 0, 255)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of `sigma` pixels over +-ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(pixels, severity: int) -> np.ndarray:
    """Separable Gaussian blur, sigma = SEVERITIES[..] * min(H, W) pixels, edges reflected."""
    x = _check(pixels, severity)
    if severity == 0:
        return x
    kernel = gaussian_kernel(SEVERITIES["gaussian_blur"][severity - 1] * min(x.shape[:2]))
    radius = len(kernel) // 2
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="symmetric" if radius >= x.shape[axis] else "reflect")
        x = sum(w * np.take(padded, np.arange(i, i + x.shape[axis]), axis=axis) for i, w in enumerate(kernel))
    return x


def contrast(pixels, severity: int) -> np.ndarray:
    """(pixels - mean) * c + mean, the mean over the whole image: the mean stays, the spread shrinks by c."""
    x = _check(pixels, severity)
    if severity == 0:
        return x
    mean = x.mean()
    return (x - mean) * SEVERITIES["contrast"][severity - 1] + mean


def _per_channel(x: np.ndarray, change: Callable) -> np.ndarray:
    """`change` (a Pillow "F" image -> image) applied to each channel of x."""
    from PIL import Image

    planes = x[..., None] if x.ndim == 2 else x
    out = np.stack([np.asarray(change(Image.fromarray(planes[..., c].astype(np.float32), mode="F")), np.float64)
                    for c in range(planes.shape[-1])], axis=-1)
    return out[..., 0] if x.ndim == 2 else out


def rotation(pixels, severity: int) -> np.ndarray:
    """Rotated SEVERITIES[..] degrees counter-clockwise about the centre (bilinear), corners black."""
    x = _check(pixels, severity)
    if severity == 0:
        return x
    from PIL import Image

    angle = SEVERITIES["rotation"][severity - 1]
    return np.clip(_per_channel(x, lambda image: image.rotate(angle, resample=Image.BILINEAR, fillcolor=0.0)), 0, 255)


def jpeg(pixels, severity: int) -> np.ndarray:
    """Saved as JPEG at quality SEVERITIES[..] by Pillow and read back (8-bit grey or RGB)."""
    x = _check(pixels, severity)
    if severity == 0:
        return x
    from PIL import Image

    channels = 1 if x.ndim == 2 else x.shape[-1]
    if channels not in (1, 3):
        raise InputError(f"JPEG holds 1 or 3 channels, not {channels}")
    eight_bit = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(eight_bit[..., 0] if x.ndim == 3 and channels == 1 else eight_bit).save(
        buffer, format="JPEG", quality=int(SEVERITIES["jpeg"][severity - 1]))
    back = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float64)
    return back.reshape(x.shape)


CORRUPTIONS: Dict[str, Callable] = {"gaussian_noise": gaussian_noise, "gaussian_blur": gaussian_blur,
                                    "contrast": contrast, "rotation": rotation, "jpeg": jpeg}


def shift_batch(x: np.ndarray, info, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """A batch of model inputs [n, ...] corrupted in pixel space: undo the file's image preprocessing
    (runtime/image_files.py), corrupt each image, redo it. Noise is drawn from `seed` and the severity."""
    pre = info.preprocessing
    if pre is None:
        raise InputError("--shift corrupts images: this model has no image preprocessing in its metadata")
    x = np.asarray(x)
    shape = (pre.height, pre.width) if pre.color_mode == "grayscale" else (pre.height, pre.width, 3)
    if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise InputError(f"--shift: inputs of shape {list(x.shape[1:])} are no {pre.height}x{pre.width} "
                         f"{pre.color_mode} images")
    mean, std = np.asarray(pre.mean, np.float64), np.asarray(pre.std, np.float64)
    pixels = x.reshape((len(x),) + shape).astype(np.float64)
    pixels = (pixels * std + mean - pre.offset) / pre.scale
    if pre.channel_order == "bgr":
        pixels = pixels[..., ::-1]
    rng = np.random.default_rng([seed, severity, list(CORRUPTIONS).index(corruption)])
    change = CORRUPTIONS[corruption]
    out = np.stack([change(image, severity, rng) if corruption == "gaussian_noise" else change(image, severity)
                    for image in pixels])
    if pre.channel_order == "bgr":
        out = out[..., ::-1]
    out = ((out * pre.scale + pre.offset) - mean) / std
    return out.reshape(x.shape).astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)
