"""`python cli.py infer` and `info`: output formats, the npz contract, one-line errors."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mcdrop import cli
from conftest import ROOT
from toy_model import build_toy_model
from cli_runs import run_cli  # noqa: E402

runner = CliRunner()
X = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])



@pytest.fixture
def batch_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, X)
    return path


def test_contract_command_writes_mean_and_variance(toy_model_path, batch_npy, tmp_path):
    out = tmp_path / "r.npz"
    done = run_cli("infer", batch_npy, "--model", toy_model_path, "--passes", 12, "--seed", 3, "--out", out)
    assert done.returncode == 0, done.stderr
    with np.load(out) as saved:
        assert saved["mean"].shape == saved["variance"].shape == (3, 3)
        assert saved["samples"].shape == (12, 3, 3)
        assert list(saved["names"]) == [f"{batch_npy}[{i}]" for i in range(3)]
        first = saved["mean"]
    again = tmp_path / "again.npz"
    assert run_cli("infer", batch_npy, "--model", toy_model_path, "--passes", 12, "--seed", 3,
                   "--out", again).returncode == 0
    with np.load(again) as saved:
        np.testing.assert_array_equal(saved["mean"], first)
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*.tmp"))


def test_no_dropout_gives_the_deterministic_pass(toy_model_path, batch_npy, tmp_path):
    outs = [tmp_path / f"d{i}.npz" for i in range(2)]
    for out in outs:
        assert invoke("infer", batch_npy, "--model", toy_model_path, "--no-dropout", "--out", out).exit_code == 0
    with np.load(outs[0]) as a, np.load(outs[1]) as b:
        np.testing.assert_array_equal(a["mean"], b["mean"])
        np.testing.assert_array_equal(a["variance"], 0)
        assert a["samples"].shape[0] == 1


def test_table_output(toy_model_path, batch_npy):
    result = invoke("infer", batch_npy, "--model", toy_model_path, "--passes", 5)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "provider CPUExecutionProvider" in lines[0] and "passes 5" in lines[0]
    assert lines[1].split()[:5] == ["input", "label", "confidence", "std", "mutual_information"]
    assert len(lines) == 3 + len(X)  # model line, column names, a row each, the UNCERTAIN rule
    assert lines[2].split()[1] in ("cat", "dog", "bird")
    assert lines[-1] == "UNCERTAIN if mutual_information > 0.1 or confidence < 0.6 (default rule)"


def test_json_output_parses(toy_head_model, batch_npy):
    head, path = toy_head_model
    result = invoke("infer", batch_npy, "--model", path, "--passes", 4, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["passes"] == 4 and document["provider"] == "CPUExecutionProvider"
    assert [p["input"] for p in document["predictions"]] == [f"{batch_npy}[{i}]" for i in range(3)]
    assert document["predictions"][0]["head"] == head


def test_every_head_prints_a_table(toy_head_model, batch_npy):
    _, path = toy_head_model
    result = invoke("infer", batch_npy, "--model", path, "--passes", 4)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3 + len(X)
    assert result.stdout.splitlines()[-1].startswith("UNCERTAIN if ")


def test_json_and_csv_out_files(toy_model_path, batch_npy, tmp_path):
    assert invoke("infer", batch_npy, "--model", toy_model_path, "--out", tmp_path / "r.json").exit_code == 0
    document = json.loads((tmp_path / "r.json").read_text())
    assert len(document["predictions"]) == 3
    assert invoke("infer", batch_npy, "--model", toy_model_path, "--out", tmp_path / "r.csv").exit_code == 0
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 3
    assert {"input", "uncertain", "mean_0", "mutual_information", "confidence"} <= set(rows[0])


def test_images_through_the_cli(grayscale_model_path, tmp_path):
    for i in range(3):
        Image.new("L", (6, 4), 60 * i).save(tmp_path / f"img{i}.png")
    result = invoke("infer", tmp_path, "--model", grayscale_model_path, "--passes", 3, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["predictions"]) == 3
    # the model takes 3 x 2: one line for the run, not one per image
    assert result.stderr == "warning: resized 3 images to the model's 3x2 (width x height): 3 from 6x4\n"


def test_many_inputs_show_progress_on_stderr_only(toy_model_path, tmp_path):
    np.save(tmp_path / "many.npy", np.zeros((40, 4), dtype=np.float32))
    result = invoke("infer", tmp_path / "many.npy", "--model", toy_model_path, "--passes", 30,
                    "--max-chunk-mb", 0.0005, "--threads", 2, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["predictions"]) == 40


def test_raw_pixels_give_a_one_line_warning(grayscale_model_path, tmp_path):
    np.save(tmp_path / "raw.npy", np.full((1, 2, 3, 1), 200, dtype=np.uint8))
    result = invoke("infer", tmp_path / "raw.npy", "--model", grayscale_model_path, "--passes", 2)
    assert result.exit_code == 0
    assert result.stderr.strip() == ("warning: input looks like raw 0-255 pixels but the model expects [0,1] "
                                     "(scale 1/255)")


def test_info(toy_model_path):
    result = invoke("info", toy_model_path)
    assert result.exit_code == 0, result.output
    assert "softmax" in result.stdout and "dropout_0 (Dropout, rate 0.5)" in result.stdout
    document = json.loads(invoke("info", toy_model_path, "--json").stdout)
    assert document["inputs"] == {"input": [None, 4]}
    assert [layer["name"] for layer in document["stochastic_layers"]] == ["dropout_0", "dropout_1"]
    assert document["provider"] == "CPUExecutionProvider"


def test_help_is_quick_and_loads_no_runtime():
    script = ("import sys; sys.argv = ['cli.py', '--help']; from mcdrop import cli;"
              "assert 'onnxruntime' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "infer" in run_cli("--help").stdout


# Errors: one line on stderr, non-zero exit, nothing written -------------------------------------

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.png").write_bytes(b"")
    (folder / "empty.npy").write_bytes(b"")
    np.save(folder / "wrong_shape.npy", np.zeros((2, 5), dtype=np.float32))
    np.save(folder / "unbatched.npy", np.zeros(4, dtype=np.float32))
    np.save(folder / "strings.npy", np.array([["a", "b", "c", "d"]]))
    np.save(folder / "complex.npy", np.zeros((1, 4), dtype=np.complex64))
    np.save(folder / "nan.npy", np.array([[0, np.nan, 0, 0]], dtype=np.float32))
    np.save(folder / "inf.npy", np.array([[0, -np.inf, 0, 0]], dtype=np.float32))
    np.save(folder / "good.npy", X)
    (folder / "not_onnx.onnx").write_text("this is text")
    (folder / "empty.onnx").write_bytes(b"")
    build_toy_model(folder / "plain.onnx", with_metadata=False)
    return folder


# case: (input files in bad_files, model ("toy", "gray" or a file in bad_files), options, message)
ERROR_CASES = {
    "missing image": ("missing.png", "gray", [], "no such file"),
    "corrupt image": ("corrupt.png", "gray", [], "cannot read image"),
    "empty image": ("empty.png", "gray", [], "empty file"),
    "empty array": ("empty.npy", "toy", [], "empty file"),
    "wrong shape": ("wrong_shape.npy", "toy", [], "expects [batch, 4]"),
    "no batch axis": ("unbatched.npy", "toy", [], "add one"),
    "string array": ("strings.npy", "toy", [], "real numbers"),
    "complex array": ("complex.npy", "toy", [], "real numbers"),
    "nan": ("nan.npy", "toy", [], "NaN"),
    "inf": ("inf.npy", "toy", [], "infinite"),
    "not onnx": ("good.npy", "not_onnx.onnx", [], "not an ONNX file"),
    "empty model": ("good.npy", "empty.onnx", [], "empty file"),
    "missing model": ("good.npy", "nowhere.onnx", [], "no such model file"),
    "no metadata": ("good.npy", "plain.onnx", [], "not an mcdrop export"),
    "passes 0": ("good.npy", "toy", ["--passes", "0"], "--passes must be >= 1"),
    "threads 0": ("good.npy", "toy", ["--threads", "0"], "--threads must be >= 1"),
    "unknown device": ("good.npy", "toy", ["--device", "tpu"], "auto, cpu, cuda"),
    "bad threshold": ("good.npy", "toy", ["--threshold", "1.5"], "--threshold"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_line(case, bad_files, toy_model_path, grayscale_model_path, tmp_path):
    name, model, options, message = ERROR_CASES[case]
    model = {"toy": toy_model_path, "gray": grayscale_model_path}.get(model, bad_files / model)
    result = invoke("infer", bad_files / name, "--model", model, "--out", tmp_path / "result.npz", *options)
    assert_one_line_error(result, message)
    assert list(tmp_path.iterdir()) == []  # no result, no temporary file


def test_unknown_out_format_is_refused_first(bad_files, tmp_path):
    result = invoke("infer", bad_files / "missing.png", "--model", bad_files / "nowhere.onnx",
                    "--out", tmp_path / "result.txt")
    assert_one_line_error(result, "unknown format '.txt'")
    assert list(tmp_path.iterdir()) == []


def assert_one_line_error(result, message):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not an uncaught exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert result.stdout == ""


def test_errors_in_a_real_process_have_no_traceback(bad_files, toy_model_path, tmp_path):
    for args in (["infer", bad_files / "corrupt.png", "--model", toy_model_path],
                 ["infer", bad_files / "good.npy", "--model", bad_files / "not_onnx.onnx"],
                 ["info", bad_files / "plain.onnx"]):
        done = run_cli(*args, "--out", tmp_path / "r.npz") if args[0] == "infer" else run_cli(*args)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert list(tmp_path.iterdir()) == []


# CSV: text cells cannot become spreadsheet formulas or terminal escapes ------------------------

HOSTILE = ["=cmd|' calc'!A1", "+1", "-2", "@SUM(A1)", "\tTAB", "\x1b[31mred"]


def test_csv_neutralises_hostile_names_and_labels(tmp_path, monkeypatch):
    import toy_model

    monkeypatch.setitem(toy_model.LABELS, "softmax", ["=HYPERLINK(\"http://x\")", "-1+2", "\x1b[31mred"])
    model = build_toy_model(tmp_path / "hostile_labels.onnx", "softmax")
    monkeypatch.chdir(tmp_path)
    for name in HOSTILE:
        np.save(f"{name}.npy", X[:1])
    result = invoke("infer", "--model", model, "--top-k", 3, "--out", "r.csv", "--json", "--",
                    *[f"{name}.npy" for name in HOSTILE])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "r.csv").open(newline="")))
    assert [row["input"] for row in rows] == ["'=cmd|' calc'!A1.npy[0]", "'+1.npy[0]", "'-2.npy[0]",
                                              "'@SUM(A1).npy[0]", "'\\x09TAB.npy[0]", "\\x1b[31mred.npy[0]"]
    for row in rows:
        labels = [row[f"top_k_labels_{j}"] for j in range(3)]
        assert sorted(labels) == ["'-1+2", "'=HYPERLINK(\"http://x\")", "\\x1b[31mred"]
        assert row["label_name"] == labels[0]
        assert 0 < float(row["confidence"]) <= 1 and row["uncertain"] in ("True", "False")


def test_regression_has_mean_and_std_columns(tmp_path):
    model = build_toy_model(tmp_path / "regression.onnx", "regression")  # two output values
    np.save(tmp_path / "x.npy", X)
    result = invoke("infer", tmp_path / "x.npy", "--model", model, "--passes", 3, "--seed", 1,
                    "--out", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["input", "mean", "std"]  # not label / confidence
    document = json.loads(invoke("infer", tmp_path / "x.npy", "--model", model, "--passes", 3, "--seed", 1,
                                 "--json").stdout)
    for line, prediction in zip(lines[2:], document["predictions"]):
        cells = line.split()
        np.testing.assert_allclose([float(v) for v in cells[1:3]], prediction["mean"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose([float(v) for v in cells[3:5]], prediction["measures"]["std"], rtol=1e-2, atol=1e-4)
    rows = list(csv.DictReader((tmp_path / "r.csv").open(newline="")))
    assert list(rows[0]) == ["input", "uncertain", "mean_0", "mean_1", "variance_0", "variance_1", "std_0", "std_1",
                             "mean_se_0", "mean_se_1", "variance_se_0", "variance_se_1", "std_se_0", "std_se_1"]
    means = [float(row[key]) for row in rows for key in ("mean_0", "mean_1")]
    assert min(means) < 0  # a number, written as -1.2, never as the text '-1.2


# A careless user: each slip is one line, and nothing given is replaced ---------------------------

def test_a_folder_as_out_is_named_a_folder(toy_model_path, batch_npy, tmp_path):
    (tmp_path / "results").mkdir()
    assert_one_line_error(invoke("infer", batch_npy, "--model", toy_model_path, "--out", tmp_path / "results"),
                          "results: is a folder; give a file name ending in .json, .npz, .csv")


def test_out_naming_an_input_is_refused_and_the_input_kept(toy_model_path, tmp_path):
    batch = tmp_path / "batch.npz"
    np.savez(batch, x=X)
    before = batch.read_bytes()
    result = invoke("infer", batch, "--model", toy_model_path, "--out", tmp_path / "." / "batch.npz")
    assert_one_line_error(result, "is one of the inputs")
    assert batch.read_bytes() == before


@pytest.mark.parametrize("option", ["--seed", "--mask-seed"])
def test_a_seed_past_64_bits_is_one_line(toy_model_path, batch_npy, option):
    assert_one_line_error(invoke("infer", batch_npy, "--model", toy_model_path, option, 2**70),
                          f"{option} must be an integer from 0 to 2**64 - 1")
