"""`evaluate --shift` and `evaluate --seeds` (evaluate/shift.py, evaluation.shift_report, seed_spread):
each corruption against a reference (identity at severity 0, degradation that grows with severity,
known pixel statistics), and the report on a toy image model."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mcdrop.evaluate import shift as S
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.session import MCSession
from cli_runs import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent



def picture(shape=(32, 32)):
    """A bright square on a grey gradient: edges and smooth parts, in 0..255."""
    h, w = shape[:2]
    image = np.tile(np.linspace(40, 120, w), (h, 1))
    image[h // 4:h // 2, w // 4:w // 2] = 230
    return image if len(shape) == 2 else np.stack([image, image[::-1], image[:, ::-1]], axis=-1)


@pytest.mark.parametrize("shape", [(32, 32), (24, 20, 3)])
def test_severity_zero_is_identity_and_damage_grows_with_severity(shape):
    image = picture(shape)
    for name, corrupt in S.CORRUPTIONS.items():
        np.testing.assert_array_equal(corrupt(image, 0), image)
        damage = [np.abs(corrupt(image, s) - image).mean() for s in range(S.LEVELS + 1)]
        assert all(b > a for a, b in zip(damage, damage[1:])), (name, damage)
        out = corrupt(image, S.LEVELS)
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255, name


def test_gaussian_noise_has_the_severity_standard_deviation():
    grey = np.full((128, 128), 128.0)  # mid-grey: no clipping at severity 1
    noisy = S.gaussian_noise(grey, 1, np.random.default_rng(3))
    assert abs((noisy - grey).std() / (S.SEVERITIES["gaussian_noise"][0] * 255) - 1) < 0.03
    assert abs((noisy - grey).mean()) < 1.0


def test_contrast_keeps_the_mean_and_scales_the_spread():
    image = picture()
    for severity in range(1, S.LEVELS + 1):
        out = S.contrast(image, severity)
        assert out.mean() == pytest.approx(image.mean(), rel=1e-12)
        assert out.std() == pytest.approx(image.std() * S.SEVERITIES["contrast"][severity - 1], rel=1e-12)


def test_gaussian_blur_spreads_a_point_by_sigma():
    """A point in the middle becomes a normalised Gaussian: mass 1, variance sigma^2 on each axis."""
    point = np.zeros((41, 41))
    point[20, 20] = 1.0
    for severity in range(1, S.LEVELS + 1):
        out = S.gaussian_blur(point, severity)
        sigma = S.SEVERITIES["gaussian_blur"][severity - 1] * 41
        t = np.arange(41) - 20
        assert out.sum() == pytest.approx(1.0, abs=1e-9)
        assert (out.sum(1) * t ** 2).sum() == pytest.approx(sigma ** 2, rel=0.05)
    np.testing.assert_allclose(S.gaussian_blur(np.full((9, 7), 77.0), 5), 77.0)  # flat stays flat


def test_rotation_moves_a_dot_by_the_angle():
    """A dot right of the centre lands where a counter-clockwise rotation puts it (rows grow downwards)."""
    image = np.zeros((41, 41))
    image[19:22, 31:34] = 255.0  # centred at (row 20, column 32): 12 pixels right of the centre (20, 20)
    for severity in range(1, S.LEVELS + 1):
        out = S.rotation(image, severity)
        angle = np.radians(S.SEVERITIES["rotation"][severity - 1])
        rows, cols = np.indices(out.shape)
        centroid = np.array([(rows * out).sum(), (cols * out).sum()]) / out.sum()
        np.testing.assert_allclose(centroid, [20 - 12 * np.sin(angle), 20 + 12 * np.cos(angle)], atol=0.5)


def test_jpeg_is_eight_bit_and_lower_quality_loses_more():
    image = picture()
    errors = [np.abs(S.jpeg(image, s) - image).mean() for s in range(1, S.LEVELS + 1)]
    assert errors[-1] > 2 * errors[0]
    out = S.jpeg(image, 1)
    np.testing.assert_array_equal(out, np.rint(out))


def test_bad_severity_or_shape_is_refused():
    for bad in (-1, 6, 2.5, True):
        with pytest.raises(InputError, match="severity"):
            S.contrast(picture(), bad)
    with pytest.raises(InputError, match="pixels"):
        S.contrast(np.zeros(5), 1)


def test_shift_batch_goes_through_the_files_preprocessing(rgb_model_path, toy_model_path):
    """Pixels from model inputs and back: severity 0 gives the inputs back, contrast keeps each image's
    mean in pixels, i.e. after the file's scale and offset."""
    info = MCSession(rgb_model_path).info
    x = np.random.default_rng(0).uniform(-1, 1, (6, 2, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(S.shift_batch(x, info, "contrast", 0), x, atol=1e-6)
    out = S.shift_batch(x, info, "contrast", 3)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-5)
    assert out.dtype == np.float32 and out.shape == x.shape
    with pytest.raises(InputError, match="no image preprocessing"):
        S.shift_batch(np.zeros((2, 4), np.float32), MCSession(toy_model_path).info, "jpeg", 1)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shift")
    rng = np.random.default_rng(1)
    np.savez(folder / "data.npz", x=rng.uniform(-1, 1, (16, 2, 2, 3)).astype(np.float32), y=rng.integers(0, 3, 16))
    np.save(folder / "ood.npy", rng.uniform(-1, 1, (8, 2, 2, 3)).astype(np.float32))
    return folder


def test_evaluate_shift_reports_every_corruption_and_severity(rgb_model_path, images, tmp_path):
    done = run_cli("evaluate", rgb_model_path, images / "data.npz", "--passes", 3, "--seed", 0, "--shift",
                   "--json", "--report", tmp_path / "report")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    shift = report["shift"]
    assert shift["severities"] == list(range(6))
    for mode in ("mc", "deterministic"):
        assert list(shift[mode]) == list(S.CORRUPTIONS)
        for rows in shift[mode].values():
            assert len(rows) == 6
            # severity 0 is the evaluation's own clean set, MC included (the toy's masks are independent:
            # predicted again, its figures would differ)
            assert rows[0]["accuracy"] == pytest.approx(report[mode]["accuracy"])
            assert rows[0]["ece"] == pytest.approx(report[mode]["ece"])
            assert rows[0]["nll"] == pytest.approx(report[mode]["nll"])
            for row in rows[1:]:
                assert set(row["error_auroc"]) == set(report[mode]["error_auroc"]) == set(row["shift_auroc"])
                assert {"accuracy", "nll", "ece"} <= set(row)
    assert (tmp_path / "report" / "shift.png").stat().st_size > 0
    assert "## Under shift" in (tmp_path / "report" / "report.md").read_text()


def test_evaluate_seeds_gives_mean_and_std_over_mask_seeds(tmp_path):
    """On the shipped CNN (shared masks: a mask seed per run), 20 digits and 9 OOD inputs."""
    sys.path.insert(0, str(ROOT / "models"))
    import build_models

    images, labels = build_models.digits_28x28()
    np.savez(tmp_path / "digits.npz", x=build_models.to_input(images[:20], False), y=labels[:20])
    np.save(tmp_path / "ood.npy", build_models.to_input(build_models.ood_images(9), False))
    done = run_cli("evaluate", ROOT / "models" / "cnn.onnx", tmp_path / "digits.npz", "--ood", tmp_path / "ood.npy",
                   "--passes", 4, "--seed", 5, "--seeds", 3, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    spread = report["seed_spread"]
    assert spread["mask_seeds"] == [5, 6, 7] and len(spread["runs"]) == 3
    assert spread["runs"][0]["accuracy"] == pytest.approx(report["mc"]["accuracy"])  # the run's own mask seed
    assert spread["runs"][0]["ood_auroc one_minus_confidence"] == pytest.approx(
        report["mc"]["ood_auroc"]["one_minus_confidence"])
    for key in ("nll", "ece", "ood_auroc predictive_entropy", "ood_auroc mutual_information"):
        values = [run[key] for run in spread["runs"]]
        assert spread["mean"][key] == pytest.approx(np.mean(values))
        assert spread["std"][key] == pytest.approx(np.std(values, ddof=1))
    assert len({run["nll"] for run in spread["runs"]}) > 1  # the seeds drew different masks


def test_evaluate_shift_and_seeds_refuse_bad_input(toy_model_path, rgb_model_path, images, tmp_path):
    np.savez(tmp_path / "flat.npz", x=np.zeros((4, 4), np.float32), y=np.zeros(4, int))
    for args, words in (((toy_model_path, tmp_path / "flat.npz", "--shift"), "no image preprocessing"),
                        ((rgb_model_path, images / "data.npz", "--seeds", 0), "--seeds"),
                        ((rgb_model_path, images / "data.npz", "--seeds", 2), "masks are independent")):
        done = run_cli("evaluate", *args, "--passes", 2)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: ") and words in done.stderr, done.stderr
