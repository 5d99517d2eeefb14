"""load_inputs: images of every format with the model's preprocessing, folders, globs, arrays."""

import numpy as np
import pytest
from PIL import Image

from runtime.errors import InputError
from runtime.inputs import load_inputs
from runtime.session import MCSession


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
    with pytest.raises(InputError, match="different shapes"):
        load_inputs([str(tmp_path / "wrong.npy"), str(tmp_path / "white.png")], gray_info)


def test_file_errors_name_the_path(tmp_path, gray_info, toy_model_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "corrupt.npy").write_bytes(b"not numpy at all")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "many.npz", a=np.zeros(1), b=np.zeros(1))
    np.save(tmp_path / "scalar.npy", np.float32(3))
    cases = {"missing.png": "no such file", "corrupt.png": "cannot read image", "empty.png": "empty file",
             "empty.npy": "empty file", "corrupt.npy": "cannot read array", "objects.npy": "cannot read array",
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
