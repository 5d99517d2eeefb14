"""load_inputs: images of every format with the model's preprocessing, folders, globs, arrays."""

import contextlib
import dataclasses
import os
import signal
import struct
import time
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, features
from toy_model import build_toy_model

from mcdrop.runtime.errors import InputError
from mcdrop.runtime.array_files import load_array
from mcdrop.runtime.input_files import load_inputs
from mcdrop.runtime.limits import Limits
from mcdrop.runtime.session import MCSession


@pytest.fixture(scope="module")
def gray_info(grayscale_model_path):
    return MCSession(grayscale_model_path).info  # 3 wide, 2 high, grayscale, scale 1/255


@pytest.fixture(scope="module")
def rgb_info(rgb_model_path):
    return MCSession(rgb_model_path).info  # 2 x 2 RGB, x = pixel / 127.5 - 1


@pytest.mark.parametrize("extension", ["png", "jpg", "jpeg", "bmp", "gif"])
def test_each_image_format_is_decoded_and_preprocessed(tmp_path, gray_info, extension):
    path = tmp_path / f"gray.{extension}"
    Image.new("L", (12, 8), 100).save(path)  # resized to 3 x 2
    names, x = load_inputs([str(path)], gray_info)
    assert names == [str(path)]
    assert x.shape == (1, 2, 3, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x, 100 / 255, atol=2 / 255)  # JPEG may move a level


def test_rgb_image_gets_scale_and_offset(tmp_path, rgb_info):
    path = tmp_path / "red.png"
    Image.new("RGB", (2, 2), (255, 0, 51)).save(path)
    _, x = load_inputs([str(path)], rgb_info)
    assert x.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(x[0, 0, 0], [1.0, -1.0, 51 / 127.5 - 1], atol=1e-6)


def test_color_image_for_a_grayscale_model_is_converted(tmp_path, gray_info):
    path = tmp_path / "color.png"
    Image.new("RGBA", (3, 2), (200, 200, 200, 255)).save(path)
    _, x = load_inputs([str(path)], gray_info)
    np.testing.assert_allclose(x, 200 / 255, atol=1e-6)


def test_animated_gif_gives_its_first_frame(tmp_path, gray_info):
    path = tmp_path / "anim.gif"
    first, second = Image.new("L", (3, 2), 50), Image.new("L", (3, 2), 200)
    first.save(path, save_all=True, append_images=[second])
    _, x = load_inputs([str(path)], gray_info)
    np.testing.assert_allclose(x, 50 / 255, atol=1e-6)


def test_folder_and_glob_are_expanded_sorted(tmp_path, gray_info):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, value in [("b.png", 20), ("a.png", 10), ("c.bmp", 30)]:
        Image.new("L", (3, 2), value).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    names, x = load_inputs([str(folder)], gray_info)
    assert [n.rsplit("/", 1)[-1] for n in names] == ["a.png", "b.png", "c.bmp"]
    np.testing.assert_allclose(x[:, 0, 0, 0], np.array([10, 20, 30]) / 255, atol=1e-6)
    names, _ = load_inputs([str(folder / "*.png")], gray_info)
    assert [n.rsplit("/", 1)[-1] for n in names] == ["a.png", "b.png"]
    with pytest.raises(InputError, match="no file matches"):
        load_inputs([str(folder / "*.jpeg")], gray_info)


def test_arrays_are_taken_as_preprocessed_batches(tmp_path, gray_info):
    batch = np.random.default_rng(0).random((4, 2, 3, 1)).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    np.savez(tmp_path / "one.npz", anything=batch[:2])
    np.savez(tmp_path / "named.npz", x=batch[:1], y=np.zeros(3))
    np.savez(tmp_path / "input.npz", input=batch[:1], labels=np.zeros(1))
    names, x = load_inputs([str(tmp_path / f) for f in ("batch.npy", "one.npz", "named.npz", "input.npz")],
                           gray_info)
    assert x.shape == (8, 2, 3, 1)
    assert names[0].endswith("batch.npy[0]") and names[4].endswith("one.npz[0]")
    np.testing.assert_array_equal(x[:4], batch)


def test_arrays_and_images_stack_when_shapes_agree(tmp_path, gray_info):
    np.save(tmp_path / "batch.npy", np.zeros((2, 2, 3, 1), dtype=np.float32))
    Image.new("L", (3, 2), 255).save(tmp_path / "white.png")
    names, x = load_inputs([str(tmp_path / "batch.npy"), str(tmp_path / "white.png")], gray_info)
    assert x.shape == (3, 2, 3, 1) and len(names) == 3
    np.testing.assert_allclose(x[2], 1.0)
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5)))
    with pytest.raises(InputError, match=r"wrong.npy: holds shape \[2, 5\], the model expects "
                                         r"\[batch, 2, 3, 1\]"):
        load_inputs([str(tmp_path / "white.png"), str(tmp_path / "wrong.npy")], gray_info)


def test_arrays_of_different_sizes_do_not_form_a_batch(tmp_path, gray_info):
    open_info = dataclasses.replace(gray_info, input_shape=(None, None, None, 1))  # sizes left open
    np.save(tmp_path / "a.npy", np.zeros((1, 4, 4, 1), dtype=np.float32))
    np.save(tmp_path / "b.npy", np.zeros((1, 5, 5, 1), dtype=np.float32))
    with pytest.raises(InputError, match="b.npy: .*different shapes"):
        load_inputs([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], open_info)


def test_file_errors_name_the_path(tmp_path, gray_info, toy_model_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "corrupt.npy").write_bytes(b"not numpy at all")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "many.npz", a=np.zeros(1), b=np.zeros(1))
    np.save(tmp_path / "scalar.npy", np.float32(3))
    cases = {"missing.png": "no such file", "corrupt.png": "cannot read image", "empty.png": "empty file",
             "empty.npy": "empty file", "corrupt.npy": "cannot read array",
             "objects.npy": "cannot read array of dtype object",
             "many.npz": "'x' or 'input'", "scalar.npy": "single number"}
    for name, message in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(InputError, match=message) as caught:
            load_inputs([path], gray_info)
        assert path in str(caught.value) and "\n" not in str(caught.value)
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(InputError, match="no images"):
        load_inputs([str(tmp_path / "empty_folder")], gray_info)
    Image.new("L", (3, 2)).save(tmp_path / "ok.png")
    with pytest.raises(InputError, match="no image preprocessing"):
        load_inputs([str(tmp_path / "ok.png")], MCSession(toy_model_path).info)


# Decoded right: 16-bit, float, alpha --------------------------------------------------------------

def with_background(info, grey):
    return dataclasses.replace(info, preprocessing=dataclasses.replace(info.preprocessing, background=grey))


@pytest.mark.parametrize("extension", ["png", "tif"])
def test_sixteen_bit_image_is_scaled_by_its_range(tmp_path, gray_info, rgb_info, extension):
    path = tmp_path / f"deep.{extension}"
    Image.fromarray(np.full((8, 12), 30000, dtype=np.uint16)).save(path)  # mid grey, not 0 or 255
    assert Image.open(path).mode.startswith("I;16")
    _, x = load_inputs([str(path)], gray_info)
    np.testing.assert_allclose(x, 30000 / 65535, atol=1e-4)
    _, x = load_inputs([str(path)], rgb_info)  # grey -> RGB, then x = pixel / 127.5 - 1
    np.testing.assert_allclose(x, 30000 / 65535 * 2 - 1, atol=1e-4)


@pytest.mark.parametrize("values, expected", [(0.25, 0.25), (1.0, 1.0), (100.0, 100 / 255), (255.0, 1.0)])
def test_float_tiff_in_unit_or_pixel_range(tmp_path, gray_info, values, expected):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((8, 12), values, dtype=np.float32)).save(path)
    assert Image.open(path).mode == "F"
    _, x = load_inputs([str(path)], gray_info)
    np.testing.assert_allclose(x, expected, atol=1e-5)


@pytest.mark.parametrize("bad, message", [(300.0, r"span 0\.\.300"), (-1.0, r"span -1\.\.0"),
                                          (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")])
def test_float_tiff_out_of_range_is_refused(tmp_path, gray_info, bad, message):
    values = np.zeros((2, 3), dtype=np.float32)
    values[0, 0] = bad
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(InputError, match=message) as caught:
        load_inputs([str(path)], gray_info)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def half_transparent(tmp_path):
    """Left column transparent red, the rest opaque grey 100."""
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)
    pixels[...] = (100, 100, 100, 255)
    pixels[:, 0] = (255, 0, 0, 0)
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, "RGBA").save(path)
    return path


@pytest.mark.parametrize("grey", [0, 255])
def test_alpha_is_composited_on_the_background(tmp_path, gray_info, grey):
    _, x = load_inputs([str(half_transparent(tmp_path))], with_background(gray_info, grey))
    np.testing.assert_allclose(x[0, :, 0, 0], grey / 255, atol=1e-6)
    np.testing.assert_allclose(x[0, :, 1:, 0], 100 / 255, atol=1e-6)


def test_background_is_read_from_the_model_metadata(tmp_path, gray_info):
    preprocessing = {**gray_info.metadata["preprocessing"], "background": 255}
    model = build_toy_model(tmp_path / "white_background.onnx", "softmax", example_shape=(2, 3, 1),
                            preprocessing=preprocessing)
    info = MCSession(model).info
    assert info.preprocessing.background == 255
    _, x = load_inputs([str(half_transparent(tmp_path))], info)
    np.testing.assert_allclose(x[0, :, 0, 0], 1.0, atol=1e-6)


def test_transparent_palette_and_colour_key_are_composited(tmp_path, gray_info):
    gif = Image.new("P", (3, 2), 1)
    gif.putpalette([0, 0, 0, 100, 100, 100] + [0] * 762)
    gif.putpixel((0, 0), 0)
    gif.save(tmp_path / "key.gif", transparency=0)
    grey = Image.new("L", (3, 2), 100)
    grey.putpixel((0, 0), 7)
    grey.save(tmp_path / "key.png", transparency=7)
    white = with_background(gray_info, 255)
    _, x = load_inputs([str(tmp_path / "key.gif"), str(tmp_path / "key.png")], white)
    np.testing.assert_allclose(x[:, 0, 0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[:, 1, 1, 0], 100 / 255, atol=1e-6)


def test_picture_only_in_alpha_is_refused(tmp_path, gray_info):
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)  # black ink: the digit is drawn in alpha only
    pixels[0, 1, 3] = pixels[1, 2, 3] = 255
    path = tmp_path / "ink.png"
    Image.fromarray(pixels, "RGBA").save(path)
    with pytest.raises(InputError, match="only in the alpha .* background grey 0") as caught:
        load_inputs([str(path)], gray_info)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
    _, x = load_inputs([str(path)], with_background(gray_info, 255))  # on white the ink shows
    assert x[0, 0, 1, 0] == 0 and x[0, 0, 0, 0] == 1


# Formats: one set, by name and in folders -------------------------------------------------------

def test_tiff_and_webp_by_name_and_in_folders(tmp_path, gray_info):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (3, 2), 10).save(folder / "a.tif")
    Image.new("L", (3, 2), 20).save(folder / "b.tiff")
    webp = features.check("webp")
    if webp:
        Image.new("L", (3, 2), 30).save(folder / "c.webp", lossless=True)
    names, x = load_inputs([str(folder)], gray_info)
    assert [n.rsplit("/", 1)[-1] for n in names] == ["a.tif", "b.tiff"] + (["c.webp"] if webp else [])
    np.testing.assert_allclose(x[:, 0, 0, 0], np.array([10, 20, 30][:len(names)]) / 255, atol=1e-6)
    names, _ = load_inputs([str(folder / "b.tiff")], gray_info)
    assert names == [str(folder / "b.tiff")]


@pytest.mark.parametrize("name", ["picture.psd", "table.csv", "no_extension"])
def test_unsupported_extension_is_refused(tmp_path, gray_info, name):
    path = tmp_path / name
    Image.new("L", (3, 2)).save(path, format="PNG")  # readable content: the name decides
    with pytest.raises(InputError, match=r"unsupported file type .*\.png.*\.tiff.*\.npz") as caught:
        load_inputs([str(path)], gray_info)
    assert str(caught.value).startswith(str(path))


def test_png_name_with_other_content(tmp_path, gray_info):
    Image.new("L", (3, 2), 60).save(tmp_path / "really_gif.png", format="GIF")
    _, x = load_inputs([str(tmp_path / "really_gif.png")], gray_info)  # a supported decoder: fine
    np.testing.assert_allclose(x, 60 / 255, atol=1e-6)
    Image.new("L", (3, 2), 60).save(tmp_path / "really_ppm.png", format="PPM")  # Pillow reads PPM
    with pytest.raises(InputError, match="really_ppm.png: cannot read image .not a BMP, GIF, JPEG, PNG"):
        load_inputs([str(tmp_path / "really_ppm.png")], gray_info)


# Bounded: bombs are refused before they are decoded or inflated ---------------------------------

def write_bilevel_png(path, width, height):
    """A valid all-black 1-bit PNG, built without holding its pixels (a few KiB on disk)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"\0" * (1 + (width + 7) // 8) * 500
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(rows) for _ in range(height // 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side, message", [(20_000, "over the image_pixels limit .40,000,000. and over Pillow"),
                                           (10_000, "over the image_pixels limit")])  # Pillow only warns
def test_decompression_bomb_png_is_refused_before_decoding(tmp_path, gray_info, side, message):
    path = tmp_path / "bomb.png"
    write_bilevel_png(path, side, side)
    assert path.stat().st_size < 200_000
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        start = time.perf_counter()
        with pytest.raises(InputError, match=message) as caught:
            load_inputs([str(path)], gray_info)
        assert time.perf_counter() - start < 1.0
    assert caught_warnings == []  # Pillow's DecompressionBombWarning is not printed
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_image_pixels_limit_can_be_lowered_and_raised(tmp_path, gray_info):
    Image.new("L", (12, 8), 100).save(tmp_path / "small.png")
    with pytest.raises(InputError, match=r"12x8 = 96 pixels is over the image_pixels limit \(95\)"):
        load_inputs([str(tmp_path / "small.png")], gray_info, Limits(image_pixels=95))
    _, x = load_inputs([str(tmp_path / "small.png")], gray_info, Limits(image_pixels=96))
    assert x.shape == (1, 2, 3, 1)


def write_npy_header(path, shape, descr="<f4"):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})


def test_npy_header_declaring_huge_shape_is_refused(tmp_path, gray_info):
    write_npy_header(tmp_path / "huge.npy", (10**13, 2, 3, 1))
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"huge.npy: .* MiB of data is over the input_mb limit \(1024 MiB\)"):
        load_inputs([str(tmp_path / "huge.npy")], gray_info)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(InputError, match="over the input_mb limit"):
        load_array(tmp_path / "huge.npy")


def test_truncated_and_non_numeric_npy_are_refused(tmp_path, gray_info):
    write_npy_header(tmp_path / "short.npy", (100, 2, 3, 1))  # declares 2,400 bytes, holds none
    with pytest.raises(InputError, match=r"short.npy: cannot read array \(truncated: .* 2,400 bytes"):
        load_inputs([str(tmp_path / "short.npy")], gray_info)
    for name, descr in [("strings.npy", "<U3"), ("complex.npy", "<c8"), ("records.npy", [("a", "<f4")])]:
        write_npy_header(tmp_path / name, (1, 2, 3, 1), descr)
        with pytest.raises(InputError, match=f"{name}: cannot read array of dtype .*real numbers"):
            load_inputs([str(tmp_path / name)], gray_info)


def test_npy_in_other_byte_orders_and_layouts_loads(tmp_path, gray_info):
    batch = np.arange(12, dtype=">f4").reshape(2, 2, 3, 1)
    np.save(tmp_path / "big_endian.npy", batch)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(batch.astype("<f8")))
    _, x = load_inputs([str(tmp_path / "big_endian.npy"), str(tmp_path / "fortran.npy")], gray_info)
    np.testing.assert_array_equal(x, np.concatenate([batch, batch]).astype(np.float64))
    np.testing.assert_array_equal(load_array(tmp_path / "fortran.npy"), batch)


def write_zeros_npz(path, rows, key="x"):
    """An .npz deflate bomb: rows * 24 bytes of zeros compressed, written in 1 MiB chunks."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open(f"{key}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (rows, 2, 3, 1)})
        left, zeros = rows * 24, bytes(2**20)
        while left:
            member.write(zeros[:min(left, len(zeros))])
            left -= min(left, len(zeros))


@pytest.fixture
def inflated_bytes(monkeypatch):
    """Counts the bytes read out of zip members (what inflating produced)."""
    counted = [0]
    original = zipfile.ZipExtFile.read

    def read(self, n=-1):
        data = original(self, n)
        counted[0] += len(data)
        return data
    monkeypatch.setattr(zipfile.ZipExtFile, "read", read)
    return counted


def test_npz_deflate_bomb_is_refused_before_inflating(tmp_path, gray_info, inflated_bytes):
    path = tmp_path / "bomb.npz"
    write_zeros_npz(path, 1_400_000)  # 34 MB of zeros in ~35 KB
    assert path.stat().st_size < 200_000
    with pytest.raises(InputError, match=r"bomb.npz.* MiB of data is over the input_mb limit \(16 MiB\)"):
        load_inputs([str(path)], gray_info, Limits(input_mb=16))
    assert inflated_bytes[0] == 0
    assert load_inputs([str(path)], gray_info, Limits(input_mb=40))[1].shape == (1_400_000, 2, 3, 1)


def test_npz_member_header_is_checked_before_its_data(tmp_path, gray_info, inflated_bytes):
    with zipfile.ZipFile(tmp_path / "liar.npz", "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("x.npy", "w") as member:  # a small member whose header declares 10^13 rows
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (10**13, 2, 3, 1)})
    with pytest.raises(InputError, match="liar.npz: .* over the input_mb limit"):
        load_inputs([str(tmp_path / "liar.npz")], gray_info)
    assert inflated_bytes[0] < 1000  # the header only
    np.savez_compressed(tmp_path / "cut.npz", x=np.ones((100, 2, 3, 1), dtype=np.float32))
    data = (tmp_path / "cut.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="cut.npz: cannot read array"):
        load_inputs([str(tmp_path / "cut.npz")], gray_info)


def test_total_of_all_inputs_is_bounded(tmp_path, gray_info):
    for name, rows in [("a.npy", 26_000), ("b.npy", 26_000), ("c.npy", 10_000)]:  # 0.6, 0.6, 0.2 MiB
        np.save(tmp_path / name, np.zeros((rows, 2, 3, 1), dtype=np.float32))
    paths = [str(tmp_path / name) for name in ("a.npy", "b.npy", "c.npy")]
    limits = Limits(input_mb=1)
    with pytest.raises(InputError, match=r"b.npy: 0.6 MiB of data takes the inputs over the input_mb limit "
                                         r"\(1 MiB, 0.6 MiB before it\)"):
        load_inputs(paths, gray_info, limits)
    failures = []
    names, x = load_inputs(paths, gray_info, limits, failures)  # the one that passes it is skipped
    assert len(x) == 36_000 and names[-1] == f"{paths[2]}[9999]"
    assert [path for path, _ in failures] == [paths[1]]


# Only regular files -----------------------------------------------------------------------------

@contextlib.contextmanager
def deadline(seconds):
    """Fail instead of hanging forever if a read blocks."""
    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_devices_are_refused_at_once(tmp_path, gray_info):
    os.mkfifo(tmp_path / "pipe.png")
    os.mkfifo(tmp_path / "pipe.npy")
    os.symlink("/dev/zero", tmp_path / "zero.npz")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    for name in ("pipe.png", "pipe.npy", "zero.npz", "zero.jpg"):
        with deadline(5), pytest.raises(InputError, match="not a regular file") as caught:
            load_inputs([str(tmp_path / name)], gray_info)
        assert str(caught.value).startswith(str(tmp_path / name))
    with deadline(5), pytest.raises(InputError, match="/dev/zero: unsupported file type"):
        load_inputs(["/dev/zero"], gray_info)
    with deadline(5), pytest.raises(InputError, match="not a regular file"):
        load_array(tmp_path / "pipe.npy")


# failures=[]: every bad input named, the good ones kept ------------------------------------------

def test_failures_collects_every_bad_input_and_keeps_the_good(tmp_path, gray_info):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("L", (3, 2), 10).save(folder / "a_good.png")
    Image.new("L", (6, 4), 20).save(folder / "c_good.jpg")
    (folder / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "d_empty.gif").write_bytes(b"")
    data = (folder / "a_good.png").read_bytes()
    (folder / "e_truncated.bmp").write_bytes(data[:40])
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "f_pipe.tif")
    (folder / "g_folder.png").mkdir()
    (folder / "notes.txt").write_text("not an input")
    (tmp_path / "empty_folder").mkdir()
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5), dtype=np.float32))
    np.save(tmp_path / "good.npy", np.full((2, 2, 3, 1), 0.5, dtype=np.float32))
    (tmp_path / "table.csv").write_text("1,2,3")
    paths = [str(folder), str(tmp_path / "missing.png"), str(tmp_path / "none*.png"),
             str(tmp_path / "empty_folder"), str(tmp_path / "wrong.npy"), str(tmp_path / "good.npy"),
             str(tmp_path / "table.csv")]
    failures = []
    with deadline(10):
        names, x = load_inputs(paths, gray_info, failures=failures)
    assert names == [str(folder / "a_good.png"), str(folder / "c_good.jpg"),
                     f"{tmp_path / 'good.npy'}[0]", f"{tmp_path / 'good.npy'}[1]"]
    np.testing.assert_allclose(x[:, 0, 0, 0], [10 / 255, 20 / 255, 0.5, 0.5], atol=2 / 255)
    bad = [str(folder / name) for name in ("b_corrupt.png", "d_empty.gif", "e_truncated.bmp")]
    bad += [str(folder / "f_pipe.tif")] if hasattr(os, "mkfifo") else []
    bad += [str(folder / "g_folder.png")] + paths[1:5] + [paths[6]]
    assert sorted(path for path, _ in failures) == sorted(bad)
    for path, message in failures:
        assert message.startswith(path) and "\n" not in message
    with pytest.raises(InputError, match=r"b_corrupt.png: cannot read image"):
        load_inputs([str(folder)], gray_info)  # without failures: the first bad input raises
    with pytest.raises(InputError, match=r"none\*.png: no file matches"):
        load_inputs(paths, gray_info)  # paths are expanded before any file is read


def test_failures_with_nothing_good_gives_no_batch(tmp_path, gray_info):
    failures = []
    names, x = load_inputs([str(tmp_path / "missing.png")], gray_info, failures=failures)
    assert names == [] and x is None
    assert failures == [(str(tmp_path / "missing.png"), f"{tmp_path / 'missing.png'}: no such file")]


def test_resized_images_are_told_once_per_call(tmp_path, gray_info):
    for name, size in (("a.png", (6, 4)), ("b.png", (3, 2)), ("c.png", (6, 4)), ("d.tif", (12, 8))):
        Image.new("L", size, 90).save(tmp_path / name)
    Image.fromarray(np.full((5, 7), 0.5, np.float32)).save(tmp_path / "e.tif")  # float: its own resize path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names, x = load_inputs([str(tmp_path)], gray_info)
    assert len(names) == 5 and x.shape == (5, 2, 3, 1)
    assert [str(w.message) for w in caught] == [
        "resized 4 images to the model's 3x2 (width x height): 2 from 6x4, 1 from 12x8, 1 from 7x5"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_inputs([str(tmp_path / "b.png")], gray_info)  # the model's size: nothing to tell


def test_many_sizes_are_summed_up(tmp_path, gray_info):
    for width in range(4, 10):
        Image.new("L", (width, 2), 90).save(tmp_path / f"w{width}.png")
    with pytest.warns(UserWarning) as caught:
        load_inputs([str(tmp_path)], gray_info)
    assert len(caught) == 1
    assert str(caught[0].message).endswith(": 1 from 4x2, 1 from 5x2, 1 from 6x2, 3 from 3 other sizes")
