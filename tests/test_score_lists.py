"""`cli.py score` reading Parquet / CSV lists of image paths: paths stay inside the list's folder
unless --allow-paths-outside, error rows name the entry as listed (never where it was looked
for), a list's decoded size is held to the input_mb limit, and a list is streamed: planning a
million rows stays within a few MiB whatever the number of rows."""

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from mcdrop import cli
from mcdrop.score import checkpoint as checkpoints, image_lists
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.limits import Limits
from mcdrop.runtime.session import MCSession
from mcdrop.score.input_plan import plan_inputs
from conftest import ROOT

CNN = ROOT / "models" / "cnn.onnx"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def info():
    return MCSession(CNN).info


@pytest.fixture
def layout(tmp_path):
    """tmp/data/ holding the list's images (and a list's place), tmp/outside/ an image beside it."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "images").mkdir(parents=True)
    outside.mkdir()
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    for folder, name in ((data / "images", "a.png"), (data / "images", "b.png"), (outside, "secret.png")):
        Image.fromarray(pixels).save(folder / name)
    return data, outside


def write_list(path, rows, ids=None):
    columns = {"path": rows, **({"id": ids} if ids is not None else {})}
    if str(path).endswith(".csv"):
        lines = [",".join(columns)] + [",".join(values) for values in zip(*columns.values())]
        path.write_text("\n".join(lines) + "\n")
    else:
        pq.write_table(pa.table(columns), path)
    return path


def score(listed, out, *args):
    return invoke("score", listed, "--model", CNN, "--out", out, "--passes", 2, "--mask-seed", 1, *args)


def escapes(data, outside):
    """Ways out of data/: an absolute path, `..`, a link to a file, a link to a folder."""
    os.symlink(outside / "secret.png", data / "images" / "link.png")
    os.symlink(outside, data / "elsewhere")
    return {"absolute": str(outside / "secret.png"), "dotdot": "../outside/secret.png",
            "file link": "images/link.png", "folder link": "elsewhere/secret.png"}


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "file link", "folder link"])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_path_out_of_the_lists_folder_is_refused_in_one_line(layout, tmp_path, kind, suffix):
    data, outside = layout
    entry = escapes(data, outside)[kind]
    listed = write_list(data / f"list{suffix}", ["images/a.png", entry])
    out = tmp_path / "scores.parquet"
    result = score(listed, out)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {listed}: row 2: ") and "outside the list's folder" in line
    assert "--allow-paths-outside" in line and "Traceback" not in result.output
    assert not out.exists() and not checkpoints.checkpoint_folder(out).exists()

    allowed = score(listed, out, "--allow-paths-outside")
    assert allowed.exit_code == 0, allowed.output
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["images/a.png", entry]
    assert table.column("error").null_count == 2  # the outside image was read, as asked


def test_paths_that_stay_inside_are_read(layout, tmp_path):
    """An absolute path into the folder, `..` that comes back, a link that stays inside."""
    data, _ = layout
    os.symlink(data / "images" / "b.png", data / "images" / "inner.png")
    entries = [str(data / "images" / "a.png"), "images/../images/b.png", "./images/inner.png", "images//a.png"]
    listed = write_list(data / "list.csv", entries)
    out = tmp_path / "scores.parquet"
    result = score(listed, out)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == entries
    assert table.column("error").null_count == len(entries)
    # The list reached through a link to its folder: its paths are inside still (an absolute one
    # into the real folder too).
    os.symlink(data, tmp_path / "via")
    assert len(plan_inputs([str(tmp_path / "via" / "list.csv")], MCSession(CNN).info)) == len(entries)


def test_the_refusal_does_not_tell_whether_the_outside_file_exists(layout, info):
    data, outside = layout
    messages = []
    for name in ("secret.png", "missing.png"):
        listed = write_list(data / "list.csv", [f"../outside/{name}"])
        with pytest.raises(InputError) as refused:
            plan_inputs([str(listed)], info)
        messages.append(str(refused.value).replace(name, "NAME"))
    assert messages[0] == messages[1]


def test_error_rows_name_the_entry_as_listed_not_the_path_looked_up(layout, tmp_path):
    data, _ = layout
    (data / "images" / "torn.png").write_bytes(b"\x89PNG torn")
    listed = write_list(data / "list.parquet",
                        ["images/missing.png", "images/torn.png", "images/a.png", "../nothere.png"], ids=["m", "t", "a", "n"])
    out = tmp_path / "scores.parquet"
    result = score(listed, out, "--allow-paths-outside")
    assert result.exit_code == 0, result.output
    errors = pq.read_table(out).column("error").to_pylist()
    assert errors[0] == "m: no such file" and errors[1].startswith("t: cannot read image")
    assert errors[2] is None and errors[3] == "n: no such file"
    assert not any(str(tmp_path) in e for e in errors if e)


def test_a_list_over_the_input_mb_limit_is_refused_with_how_to_raise_it(layout, tmp_path, info):
    data, _ = layout
    csv_list = write_list(data / "list.csv", ["images/a.png"] * 1000)
    result = score(csv_list, tmp_path / "scores.parquet", "--limit", "input_mb=0.01")
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {csv_list}: ") and "over the input_mb limit (0.01 MiB)" in line
    assert "--limit input_mb=N" in line
    # A small Parquet file holding many rows: refused by what its rows decode to, not its file size.
    parquet_list = data / "many.parquet"
    pq.write_table(pa.table({"path": pa.array(["images/a.png"] * 200_000)}), parquet_list)
    assert parquet_list.stat().st_size < 0.01 * 2**20
    with pytest.raises(InputError, match="decode to more than .* over the input_mb limit"):
        plan_inputs([str(parquet_list)], info, limits=Limits(input_mb=1))
    assert len(plan_inputs([str(parquet_list)], info, limits=Limits(input_mb=8))) == 200_000


ROW_PROBLEMS = [
    ([""], "row 1 has no path"),
    (["images/a.png", "images/a\0.png"], "row 2: the path holds a NUL character"),
    (["images/a.png", "images/" + "a" * 5000 + ".png"], "row 2: its path is longer than 4,096 bytes"),
]


@pytest.mark.parametrize("suffix, rows, message", [(".csv", *problem) for problem in ROW_PROBLEMS] + [
    (".parquet", *problem) for problem in ROW_PROBLEMS] + [
    (".parquet", [["images/a.png"]], "column 'path' holds list<element: string> values")])
def test_rows_without_a_usable_path_are_one_line_errors(layout, info, suffix, rows, message):
    data, _ = layout
    listed = data / f"list{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table({"path": rows}), listed)
    else:
        listed.write_text("path\n" + "".join(f"{row}\n" for row in rows))
    with pytest.raises(InputError, match=message):
        plan_inputs([str(listed)], info)


def test_a_streamed_list_keeps_order_and_ids_across_chunks(layout, info, monkeypatch):
    data, _ = layout
    monkeypatch.setattr(image_lists, "LIST_READ_ROWS", 3)
    entries = [f"images/{'ab'[i % 2]}.png" for i in range(10)]
    ids = [f"row{i}" for i in range(10)]
    plans = [plan_inputs([str(write_list(data / f"list{suffix}", entries, ids)), str(data / "images")], info)
             for suffix in (".csv", ".parquet")]
    for plan in plans:
        assert plan.total == 12
        batches = list(plan.refs(4))
        assert [len(batch["index"]) for batch in batches] == [4, 4, 4]
        refs = {name: np.concatenate([batch[name] for batch in batches]) for name in ("index", "id", "path")}
        assert refs["index"].tolist() == list(range(12))
        assert refs["id"].tolist() == ids + [str(data / "images" / "a.png"), str(data / "images" / "b.png")]
        assert [os.fsdecode(p) for p in refs["path"][:10]] == [str(data / e) for e in entries]
        skip = np.zeros(12, bool)
        skip[[0, 5, 6]] = True
        assert np.concatenate([b["index"] for b in plan.refs(4, skip=skip)]).tolist() == [1, 2, 3, 4, 7, 8, 9, 10, 11]
    # The fingerprint (for --resume) digests the listed paths: the same for either format of the list.
    assert plans[0].fingerprint() == plans[1].fingerprint()


def test_a_list_rewritten_after_planning_is_refused(layout, info):
    data, _ = layout
    listed = write_list(data / "list.csv", ["images/a.png", "images/b.png"])
    plan = plan_inputs([str(listed)], info)
    write_list(listed, ["images/b.png", "images/a.png", "images/a.png"])
    with pytest.raises(InputError, match="the list changed since the job was planned"):
        list(plan.refs(8))


MEMORY_CHILD = """
import sys
import pyarrow.parquet
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.session import MCSession
from mcdrop.score.input_plan import plan_inputs

def mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

info = MCSession({model!r}).info
before = mib("VmRSS")
try:
    plan = plan_inputs([{listed!r}], info)  # the default limits
    print("planned", len(plan), next(plan.refs(256))["id"][0])
except InputError as err:
    print("refused", err)
print(mib("VmHWM") - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak memory from /proc")
@pytest.mark.parametrize("suffix, outcome, bound", [
    # 6 MB of CSV: 110 MiB as Python strings when it was read whole; 6 MiB streamed (once 36 MiB
    # on a loaded machine, from allocator noise: the bound sits between the two, not at 6).
    (".csv", "planned 500000 images/0.png", 64),
    # 120 KB of Parquet that decode to 1.1 GB, over the input_mb limit: 1.2 GiB and 2 minutes when
    # read whole; 60 MiB refused in 0.4 s (pyarrow's allocator keeps about 40 MiB once used).
    (".parquet", "refused", 80),
])
def test_planning_a_long_list_stays_within_a_few_mib(tmp_path, suffix, outcome, bound):
    listed = tmp_path / f"list{suffix}"
    if suffix == ".csv":
        with open(listed, "w") as f:
            f.write("path\n" + "".join(f"images/{i % 10}.png\n" for i in range(500_000)))
    else:
        entry = "images/" + "x" * 1000 + ".png"  # one dictionary entry, 1.1 million times
        rows = pa.DictionaryArray.from_arrays(pa.array(np.zeros(1_100_000, np.int32)), pa.array([entry]))
        pq.write_table(pa.table({"path": rows}), listed)
    code = MEMORY_CHILD.format(model=str(CNN), listed=str(listed))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(outcome), lines[0]
    grown = float(lines[-1])
    assert grown <= bound, f"grew {grown:.0f} MiB"
