"""`evaluate`, `calibrate` and `acquire` as a careless or hostile user runs them (issue 22): no
writes through links, one line per error, nothing half-written, integrity state kept honest.

On the toy files (tests/toy_model.py) and the shipped CNN, a few passes each: seconds."""

import csv
import io
import json
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mcdrop import cli
from mcdrop.runtime.session import MCSession
from conftest import ROOT
from toy_model import build_toy_model

CNN = ROOT / "models" / "cnn.onnx"
HOSTILE = ["=cmd|'/c calc'!A1", "+1", "-2", "@SUM(A1:A2)", "\x1b[31mred"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def one_line_error(result, code=2) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def softmax(tmp_path_factory):
    """The toy softmax file (labels cat, dog, bird) and 30 labelled inputs."""
    folder = tmp_path_factory.mktemp("softmax")
    path = build_toy_model(folder / "softmax.onnx", "softmax")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = MCSession(path, seed=0).predict(x, dropout=False).mean.argmax(-1)
    np.savez(folder / "data.npz", x=x, y=y)
    return {"model": path, "folder": folder, "x": x, "y": y, "data": folder / "data.npz"}


# evaluate --report ------------------------------------------------------------------------------

def test_report_refuses_a_symlinked_folder_before_running_and_writes_nothing(softmax, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (tmp_path / "report").symlink_to(precious)
    message = one_line_error(invoke("evaluate", softmax["model"], softmax["data"], "--report", tmp_path / "report"))
    assert "symbolic link" in message and "report" in message
    assert list(precious.iterdir()) == []


def test_report_refuses_a_symlinked_file_inside_and_writes_no_other(softmax, tmp_path):
    report, victim = tmp_path / "report", tmp_path / "victim.txt"
    report.mkdir()
    victim.write_text("keep me")
    (report / "report.md").symlink_to(victim)
    message = one_line_error(invoke("evaluate", softmax["model"], softmax["data"], "--report", report))
    assert "report.md" in message and "symbolic link" in message
    assert victim.read_text() == "keep me" and sorted(p.name for p in report.iterdir()) == ["report.md"]


def test_report_without_matplotlib_writes_json_and_markdown_with_one_warning(softmax, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = invoke("evaluate", softmax["model"], softmax["data"], "--passes", 3, "--seed", 0,
                    "--report", tmp_path / "report")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "matplotlib" in warnings[0] and "evaluate" in warnings[0]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["report.json", "report.md"]
    assert json.loads((tmp_path / "report" / "report.json").read_text())["count"] == 30
    assert ".png" not in (tmp_path / "report" / "report.md").read_text()


def test_missing_matplotlib_is_known_before_the_evaluation(softmax, tmp_path, monkeypatch):
    """The warning comes before any input is read or run: a bad data file still fails after it."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = invoke("evaluate", softmax["model"], tmp_path / "missing.npz", "--report", tmp_path / "report")
    lines = result.output.splitlines()
    assert lines[0].startswith("warning: ") and "matplotlib" in lines[0] and lines[-1].startswith("error: ")


# evaluate / calibrate on odd data ----------------------------------------------------------------

@pytest.mark.parametrize("command", ["evaluate", "calibrate"])
def test_zero_inputs_are_one_line(softmax, tmp_path, command):
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64))
    extra = ["-o", tmp_path / "out.onnx"] if command == "calibrate" else []
    done = invoke(command, softmax["model"], tmp_path / "empty.npz", *extra)
    assert "holds no labelled inputs" in one_line_error(done)
    assert not (tmp_path / "out.onnx").exists()


def test_string_labels_map_through_the_files_labels(softmax, tmp_path):
    names = np.array(["cat", "dog", "bird"])[softmax["y"]]
    np.savez(tmp_path / "named.npz", x=softmax["x"], y=names)
    by_name = invoke("evaluate", softmax["model"], tmp_path / "named.npz", "--passes", 3, "--seed", 0, "--json")
    by_index = invoke("evaluate", softmax["model"], softmax["data"], "--passes", 3, "--seed", 0, "--json")
    assert by_name.exit_code == 0, by_name.output
    assert json.loads(by_name.stdout)["mc"] == json.loads(by_index.stdout)["mc"]
    assert json.loads(by_name.stdout)["deterministic"]["accuracy"] == 1.0  # the targets are its classes


@pytest.mark.parametrize("command", ["evaluate", "calibrate"])
def test_an_unknown_string_label_is_refused_by_name(softmax, tmp_path, command):
    names = np.array(["cat", "dog", "bird"], dtype="U10")[softmax["y"]]
    names[7] = "=horse"
    np.savez(tmp_path / "named.npz", x=softmax["x"], y=names)
    extra = ["-o", tmp_path / "out.onnx"] if command == "calibrate" else []
    message = one_line_error(invoke(command, softmax["model"], tmp_path / "named.npz", *extra))
    assert "'=horse' is not one of the model's labels (cat, dog, bird)" in message


def test_calibrate_takes_string_labels(softmax, tmp_path):
    names = np.array(["cat", "dog", "bird"])[softmax["y"]]
    np.savez(tmp_path / "named.npz", x=softmax["x"], y=names)
    result = invoke("calibrate", softmax["model"], tmp_path / "named.npz", "-o", tmp_path / "out.onnx", "--passes", 4)
    assert result.exit_code == 0, result.output
    assert MCSession(tmp_path / "out.onnx").info.model_outputs[0].calibration["fitted_on"]["count"] == 30


@pytest.fixture
def class_folders(tmp_path):
    """Two classes of 2 x 3 grey images, one file in class 1 corrupt."""
    from conftest import GRAYSCALE_PREPROCESSING

    model = build_toy_model(tmp_path / "gray.onnx", "softmax", example_shape=(2, 3, 1),
                            preprocessing=GRAYSCALE_PREPROCESSING)
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "classes" / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (2, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "classes" / label / f"{i}.png")
    (tmp_path / "classes" / "dog" / "broken.png").write_bytes(b"not a png")
    return model, tmp_path / "classes"


def test_evaluate_stops_at_a_corrupt_image_by_default_and_says_how_to_skip(class_folders):
    model, folder = class_folders
    message = one_line_error(invoke("evaluate", model, folder, "--passes", 2))
    assert "broken.png" in message and "--on-error skip" in message


def test_evaluate_on_error_skip_leaves_it_out_and_reports_it(class_folders, tmp_path):
    model, folder = class_folders
    result = invoke("evaluate", model, folder, "--passes", 2, "--seed", 0, "--on-error", "skip", "--json",
                    "--report", tmp_path / "report")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["count"] == 6
    assert [item["input"] for item in report["skipped"]] == [str(folder / "dog" / "broken.png")]
    assert json.loads((tmp_path / "report" / "report.json").read_text())["skipped"] == report["skipped"]
    assert "broken.png" in (tmp_path / "report" / "report.md").read_text()
    summary = invoke("evaluate", model, folder, "--passes", 2, "--seed", 0, "--on-error", "skip")
    assert "skipped 1 inputs that could not be read" in summary.stdout
    assert "warning: skipped:" in summary.output and "broken.png" in summary.output


def test_evaluate_refuses_an_unknown_on_error(softmax):
    assert "--on-error 'report'" in one_line_error(invoke("evaluate", softmax["model"], softmax["data"],
                                                          "--on-error", "report"))


# calibrate: integrity and what it prints --------------------------------------------------------

def _tampered(softmax, path):
    """The toy file with one weight changed after sealing: valid ONNX, checksum mismatch."""
    import onnx

    proto = onnx.load(softmax["model"])
    weights = next(init for init in proto.graph.initializer if init.name.endswith("W1") or "W1" in init.name)
    values = onnx.numpy_helper.to_array(weights).copy()
    values.flat[0] += 1.0
    weights.CopyFrom(onnx.numpy_helper.from_array(values, weights.name))
    path.write_bytes(proto.SerializeToString())
    return path


def test_calibrate_refuses_a_tampered_file_naming_the_users_path(softmax, tmp_path):
    tampered = _tampered(softmax, tmp_path / "tampered.onnx")
    message = one_line_error(invoke("calibrate", tampered, softmax["data"], "-o", tmp_path / "out.onnx"))
    assert f"{tampered}: was modified after export" in message and "mcdrop-calibrate" not in message
    assert not (tmp_path / "out.onnx").exists()


def test_calibrate_no_verify_on_a_tampered_file_writes_an_unsealed_file(softmax, tmp_path):
    from mcdrop.runtime.errors import ModelFileError

    tampered, out = _tampered(softmax, tmp_path / "tampered.onnx"), tmp_path / "out.onnx"
    result = invoke("calibrate", tampered, softmax["data"], "-o", out, "--passes", 4, "--no-verify")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and str(tampered) in warning[0] and "--no-verify" in warning[0]
    with pytest.raises(ModelFileError, match="no integrity checksum"):
        MCSession(out)  # verification on: refused
    assert MCSession(out, verify=False).info.model_outputs[0].calibration is not None
    np.save(tmp_path / "x.npy", softmax["x"][:2])
    assert "no integrity checksum" in one_line_error(invoke("infer", tmp_path / "x.npy", "--model", out))


def test_calibrate_no_verify_on_a_sound_file_keeps_it_sealed(softmax, tmp_path):
    out = tmp_path / "out.onnx"
    result = invoke("calibrate", softmax["model"], softmax["data"], "-o", out, "--passes", 4, "--no-verify")
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    MCSession(out)  # verifies


def test_calibrate_prints_the_rule_with_four_significant_digits(softmax, tmp_path):
    import re

    result = invoke("calibrate", softmax["model"], softmax["data"], "-o", tmp_path / "out.onnx", "--passes", 4,
                    "--target-coverage", 0.8)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("UNCERTAIN if"))
    number = re.search(r"> (\S+)", line).group(1)
    assert len(number.replace("0.", "").lstrip("0").split("e")[0].replace(".", "")) <= 4, line
    stored = MCSession(tmp_path / "out.onnx").info.model_outputs[0].calibration["uncertain_rule"]
    assert float(number) == pytest.approx(float(stored.split("> ")[1]), rel=1e-3)


# acquire: memory bound, CSV cells, what reproduces a ranking ------------------------------------

def test_acquire_refuses_a_huge_num_samples_up_front_in_one_line(tmp_path):
    np.save(tmp_path / "pool.npy", np.zeros((4, 28, 28, 1), np.float32))
    message = one_line_error(invoke("acquire", tmp_path / "pool.npy", "--model", CNN, "--strategy", "batchbald",
                                    "--k", 2, "--num-samples", 10**12))
    assert "over --max-memory-mb 2048" in message and "raise --max-memory-mb" in message


def test_acquire_max_memory_mb_bounds_the_kept_samples_and_can_be_raised(tmp_path):
    np.save(tmp_path / "pool.npy", np.zeros((6, 28, 28, 1), np.float32))
    args = ["acquire", tmp_path / "pool.npy", "--model", CNN, "--strategy", "batchbald", "--k", 2, "--passes", 3,
            "--num-samples", 100]
    assert "over --max-memory-mb 1" in one_line_error(invoke(*args, "--max-memory-mb", 1))
    assert invoke(*args, "--max-memory-mb", 512).exit_code == 0
    assert "--max-memory-mb must be a positive finite number" in one_line_error(invoke(*args, "--max-memory-mb", 0))


def test_batchbald_and_acquire_check_memory_before_allocating():
    from mcdrop.acquire import acquisition as A
    from mcdrop.runtime.errors import InputError

    x = np.full((4, 5, 3), 1 / 3)
    with pytest.raises(InputError, match="max-memory-mb"):
        A.batchbald(x, 2, num_samples=10**12, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="max-memory-mb"):
        A.acquire(lambda piece: np.full((4, len(piece), 3), 1 / 3), np.zeros((5, 2)), 2, "batchbald",
                  num_samples=10**12, rng=np.random.default_rng(0))
    # Within the bound the estimate is not in the way.
    assert len(A.batchbald(x, 2, num_samples=1000, rng=np.random.default_rng(0))[0]) == 2


@pytest.mark.parametrize("passes, classes", [(20, 10), (5, 100)])
def test_batchbald_memory_estimate_bounds_the_traced_peak(passes, classes):
    """The sampled estimator (exact_limit=1), whose arrays grow with --num-samples."""
    import tracemalloc

    from mcdrop.acquire import acquisition as A

    x = np.random.default_rng(0).dirichlet(np.full(classes, 0.5), size=(passes, 40)).astype(np.float32)
    tracemalloc.start()
    try:
        A.batchbald(x, 3, num_samples=5_000, rng=np.random.default_rng(0), exact_limit=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = A.batchbald_bytes(passes, 40, classes, 5_000, samples_kept=False)
    assert peak <= estimate < 4 * peak + 2**27  # an upper bound, not a wild one


def test_acquisition_csv_neutralises_hostile_ids_and_carries_how_to_reproduce(tmp_path):
    from mcdrop.acquire.acquisition import Acquisition

    chosen = Acquisition("bald", np.arange(len(HOSTILE)), np.linspace(1, -1, len(HOSTILE)), 20, 7, HOSTILE)
    chosen.write(tmp_path / "ranking.csv")
    text = (tmp_path / "ranking.csv").read_text()
    assert "\x1b" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["id"] for row in rows] == ["'=cmd|'/c calc'!A1", "'+1", "'-2", "'@SUM(A1:A2)", "\\x1b[31mred"]
    for row in rows:  # no cell of ours starts a formula; the numbers stay numbers
        assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in row.values())
        assert (row["strategy"], row["passes"], row["mask_seed"]) == ("bald", "20", "7")
    assert float(rows[-1]["score"]) == -1.0
    chosen.write(tmp_path / "ranking.json")
    written = json.loads((tmp_path / "ranking.json").read_text())
    assert [row["id"] for row in written["rows"]] == HOSTILE  # JSON keeps the names as they are
    assert (written["strategy"], written["passes"], written["mask_seed"]) == ("bald", 20, 7)


def test_acquire_cli_csv_from_hostile_file_names(tmp_path, monkeypatch):
    """Files named like formulas, given relative to the working folder (the ids are the names as typed)."""
    rng = np.random.default_rng(0)
    names = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM.png", "\x1b[31m.png", "plain.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ranking.csv"
    result = invoke("acquire", "--model", CNN, "--k", len(names), "--passes", 4, "--mask-seed", 5, "--out", out,
                    "--", *names)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert "\x1b" not in text and len(rows) == len(names)
    assert sorted(row["id"] for row in rows) == sorted(["'=HYPERLINK(1).png", "'+1.png", "'-2.png", "'@SUM.png",
                                                        "\\x1b[31m.png", "plain.png"])
    assert all((row["strategy"], row["passes"], row["mask_seed"]) == ("bald", "4", "5") for row in rows)


@pytest.mark.parametrize("text, safe", [
    ("=cmd|'/c calc'!A1", "'=cmd|'/c calc'!A1"), ("+1", "'+1"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\x1b[31m", "\\x1b[31m"), ("\tx", "'\\x09x"), ("\rx", "'\\x0dx"), ("a\nb\x7f\x85", "a\\x0ab\\x7f\\x85"),
    ("digit_3.png", "digit_3.png"), ("é 3-1=2", "é 3-1=2"), ("", ""),
])
def test_csv_safe_cell(text, safe):
    from mcdrop.runtime.safe_files import csv_safe_cell

    assert csv_safe_cell(text) == safe


def test_evaluate_shows_the_calibrated_rule_rounded(tmp_path):
    stored = MCSession(ROOT / "models" / "cnn_calibrated.onnx").info.model_outputs[0].calibration["uncertain_rule"]
    measure, op, value = stored.split(" ")  # one condition: the measure calibrate chose
    shown = f"{measure} {op} {float(value):.4g}"
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 28, 28, 1), np.float32), y=np.arange(4))
    result = invoke("evaluate", ROOT / "models" / "cnn_calibrated.onnx", tmp_path / "data.npz", "--passes", 2,
                    "--report", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert f"UNCERTAIN (calibrated: {shown})" in result.stdout
    assert f"`{shown}`" in (tmp_path / "report" / "report.md").read_text()


def test_binary_targets_by_name_or_bool_and_text_refused_for_other_heads(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    flags = np.arange(20) % 2 == 0
    np.savez(tmp_path / "names.npz", x=x, y=np.where(flags, "yes", "no"))
    np.savez(tmp_path / "bool.npz", x=x, y=flags)
    np.savez(tmp_path / "ints.npz", x=x, y=flags.astype(np.int64))
    binary = build_toy_model(tmp_path / "binary.onnx", "binary")  # labels no, yes
    reports = [invoke("evaluate", binary, tmp_path / name, "--passes", 2, "--seed", 0, "--json")
               for name in ("names.npz", "bool.npz", "ints.npz")]
    assert all(r.exit_code == 0 for r in reports), [r.output for r in reports]
    by_name, by_bool, by_int = (json.loads(r.stdout)["mc"] for r in reports)
    assert by_name == by_bool == by_int
    regression = build_toy_model(tmp_path / "regression.onnx", "regression")
    assert "label names (shape [n]) are for softmax, logits and binary heads" in one_line_error(
        invoke("evaluate", regression, tmp_path / "names.npz"))


def test_an_unknown_label_of_any_length_is_one_short_line(softmax, tmp_path):
    names = np.array(["cat", "dog", "bird"], dtype="U5000")[softmax["y"]]
    names[0] = "x" * 5000
    np.savez(tmp_path / "named.npz", x=softmax["x"], y=names)
    message = one_line_error(invoke("evaluate", softmax["model"], tmp_path / "named.npz"))
    assert f"'{'x' * 60}...' is not one of the model's labels" in message and len(message) < 400
