"""mcdrop command line: Monte Carlo dropout uncertainty from one ONNX file.

Heavy modules (numpy, onnxruntime, Pillow) are imported inside the commands, so --help is quick.
"""

import functools
import json
import os
import signal
import sys
import unicodedata
import warnings
from pathlib import Path
from typing import List, Optional

import typer

if __name__ == "__main__" and not __package__:
    # `python cli.py` in a checkout: this folder is the mcdrop package (pyproject.toml maps it so),
    # so load it under that name and resolve this file's relative imports in it (PEP 366).
    import importlib.util

    _spec = importlib.util.spec_from_file_location("mcdrop", Path(__file__).resolve().parent / "__init__.py")
    sys.modules["mcdrop"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["mcdrop"])
    __package__ = "mcdrop"

from .runtime.errors import InputError, McdropError, first_line  # noqa: E402
from .runtime.safe_files import valid_text  # noqa: E402  (stdlib only: --help stays quick)

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "models" / "cnn.onnx"
OUT_FORMATS = (".json", ".npz", ".csv")
# Below this many inputs a run is quick enough that a progress bar is only noise.
PROGRESS_MIN_INPUTS = 32
ON_ERROR = ("report", "skip", "stop")
EXIT_INTERRUPTED = 128 + signal.SIGINT  # as a shell reports Ctrl-C
# Options that `infer` and `info` share: how far an untrusted model file is trusted (README: Trust model).
LIMIT_OPTION = typer.Option([], "--limit", help="Raise a bound, NAME=VALUE, repeatable: model_mb, passes, input_mb, "
                            "image_pixels, metadata_kb, tensor_mb, threads (README: Trust model).")
DEVICE_OPTION = typer.Option("auto", help="auto, cpu or cuda.")
THREADS_OPTION = typer.Option(None, help="CPU threads [default: every core this process may use].")
MAX_CHUNK_OPTION = typer.Option(256, help="Largest activation memory of one run, MiB.")
NO_VERIFY_OPTION = typer.Option(False, "--no-verify", help="Load a file whose integrity checksum is missing or wrong.")
EXTERNAL_DATA_OPTION = typer.Option(False, "--allow-external-data",
                                    help="Read tensors stored in other files, from the model's own folder only.")

app = typer.Typer(help=__doc__.splitlines()[0], add_completion=False, no_args_is_help=True,
                  pretty_exceptions_show_locals=False)


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C (temporaries removed)."""


def reports_errors(command):
    """A McdropError is the user's to fix: one 'error: ...' line on stderr and its exit code, no
    traceback. So are an OSError (disk full, permissions: one line naming the file), a
    MemoryError (with the options that bound memory), Ctrl-C and SIGTERM. Anything else is a bug
    and keeps its traceback. Warnings become one 'warning: ...' line each."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            try:
                return command(*args, **kwargs)
            except McdropError as err:
                typer.echo(f"error: {terminal_safe(str(err))}", err=True)
                raise typer.Exit(err.exit_code) from None
            except BrokenPipeError:
                raise  # `... | head`: click ends quietly, exit 1
            except OSError as err:  # the machine's answer (disk full, permissions): a fact, not a bug
                typer.echo(f"error: {terminal_safe(_os_error_text(err))}", err=True)
                raise typer.Exit(McdropError.exit_code) from None
            except MemoryError as err:
                typer.echo(f"error: {terminal_safe(_memory_error_text(err, kwargs))}", err=True)
                raise typer.Exit(McdropError.exit_code) from None
            except KeyboardInterrupt:  # typer would turn it into a silent exit 130
                typer.echo("error: interrupted", err=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except Terminated:
                typer.echo("error: terminated", err=True)
                raise

    return wrapper


def _os_error_text(err: OSError) -> str:
    """'PATH: reason' as the system words it (the path of the file it concerns, if any)."""
    reason = err.strerror or first_line(err)
    if err.filename is None:
        return reason
    path = err.filename
    return f"{os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else path}: {reason}"


def _memory_error_text(err: MemoryError, options: dict) -> str:
    """One line: what ran out, and the knobs this command has that bound its memory."""
    detail = first_line(err) if str(err).strip() else "an allocation failed"
    knobs = ["fewer inputs", "fewer --passes" if "passes" in options else None,
             "a smaller --max-chunk-mb" if "max_chunk_mb" in options else None,
             "lower --limit values" if options.get("limit") else None]
    return f"out of memory ({detail}); try " + ", ".join(knob for knob in knobs if knob)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    typer.echo(f"warning: {terminal_safe(str(message))}", err=True)


def terminal_safe(text: str) -> str:
    """`text` with every control, format (bidi overrides), surrogate or unassigned character
    written as an escape, so names and labels from files cannot move the cursor, recolour or
    rewrite the terminal, or break a one-line message or a table row. Bytes of a file name that
    are not UTF-8 (surrogate escapes) show as \\xNN."""
    out = []
    for char in text:
        if unicodedata.category(char)[0] != "C":
            out.append(char)
            continue
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def _limits(settings: List[str]):
    from .runtime.limits import Limits

    return Limits.parse(settings or [])


@app.command()
@reports_errors
def infer(
    inputs: List[str] = typer.Argument(..., help="Images, folders of images, globs, .npy / .npz batches."),
    model: Path = typer.Option(DEFAULT_MODEL, help="The exported mcdrop ONNX file."),
    passes: Optional[int] = typer.Option(None, help="Monte Carlo passes T [default: the model's]."),
    seed: Optional[int] = typer.Option(
        None, help="Session seed: the mask seed of shared masks; with independent masks, reproducible results for "
                   "the same --threads and --max-chunk-mb [default: fresh]."),
    masks: Optional[str] = typer.Option(
        None, help="shared: every input scored by the same T sampled networks, so a result depends on the input, "
                   "--mask-seed and --passes alone; independent: new masks per input and pass, as Keras "
                   "[default: shared where the file takes it]."),
    mask_seed: Optional[int] = typer.Option(None, help="Seed of the shared mask set [default: --seed, else fresh]."),
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    no_dropout: bool = typer.Option(False, "--no-dropout", help="One deterministic pass, dropout off."),
    top_k: int = typer.Option(3, help="Classes listed per input (categorical heads)."),
    threshold: Optional[float] = typer.Option(
        None, help="Decision threshold (binary / multi-label heads) [default: the file's calibrated ones, else 0.5]."),
    uncertain_if: Optional[str] = typer.Option(
        None, help="UNCERTAIN rule instead of the file's, e.g. 'mutual_information > 0.05 or confidence < 0.7', or "
                   "'never' [default: the calibrated rule, else mutual_information > 0.1 or confidence < 0.6]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    out: Optional[Path] = typer.Option(None, help="Also write the results to .json, .npz or .csv."),
    max_chunk_mb: float = MAX_CHUNK_OPTION,
    on_error: str = typer.Option("report", help="A bad input: report (all, then exit 2), skip (warn) or stop."),
    limit: List[str] = LIMIT_OPTION,
    no_verify: bool = NO_VERIFY_OPTION,
    allow_external_data: bool = EXTERNAL_DATA_OPTION,
):
    """Predict with uncertainty: per input the label, its confidence, std and mutual information; regression
    outputs: mean and std."""
    limits = _limits(limit)
    if out is not None and out.suffix.lower() not in OUT_FORMATS:
        problem = "is a folder" if out.is_dir() else f"unknown format {out.suffix or '(none)'!r}"
        raise InputError(f"--out {out}: {problem}; give a file name ending in {', '.join(OUT_FORMATS)}")
    if out is not None and any(_same_file(out, item) for item in inputs):
        raise InputError(f"--out {out}: is one of the inputs; writing the results there would replace it")
    _check_run_options(limits, passes, max_chunk_mb, threads)
    for name, value in (("--seed", seed), ("--mask-seed", mask_seed)):
        if value is not None and not 0 <= value < 2**64:  # runtime/masks.py: MAX_SEED
            raise InputError(f"{name} must be an integer from 0 to 2**64 - 1, got {value}")
    if top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {top_k}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise InputError(f"--threshold must lie in [0, 1], got {threshold}")
    if on_error not in ON_ERROR:
        raise InputError(f"--on-error {on_error!r}: choose one of {', '.join(ON_ERROR)}")
    if out is not None:
        from .runtime.safe_files import check_writable_target

        check_writable_target(out)  # refused before any work: a link, a folder, a missing folder

    if model == DEFAULT_MODEL and not model.exists():
        raise InputError(f"no model at {model}; export one with `python cli.py export`, or pass --model")

    from .runtime.input_files import load_inputs
    from .runtime.session import MCSession

    session = MCSession(model, device=device, seed=seed, threads=threads,
                        max_chunk_bytes=max(1, int(max_chunk_mb * 2**20)), limits=limits,
                        verify=not no_verify, allow_external_data=allow_external_data)
    if uncertain_if is not None:
        from .runtime.uncertain_rule import Rule

        for output in session.info.model_outputs:  # a bad rule fails before any input is read
            Rule.parse(uncertain_if, output.head)
    failures = None if on_error == "stop" else []
    names, x = load_inputs(inputs, session.info, limits=limits, failures=failures)
    for _, message in failures or []:
        typer.echo(f"{'error' if on_error == 'report' else 'warning: skipped'}: {terminal_safe(message)}", err=True)
    if not names:
        if failures and on_error == "report":
            raise typer.Exit(InputError.exit_code)  # each bad input had its line
        raise InputError(f"none of the {len(failures)} inputs could be read" if failures else "no inputs given")
    predicted = _predict(session, x, passes, not no_dropout, threshold, top_k, len(names), uncertain_if,
                         masks, mask_seed)
    # {output name: Prediction}; a one-output model's results keep their flat form (None).
    by_output = predicted if isinstance(predicted, dict) else {None: predicted}
    first = next(iter(by_output.values()))
    shown = [valid_text(name) for name in names]
    document = {"model": valid_text(_shown(model)), "provider": session.provider, "passes": first.passes,
                "stochastic": first.stochastic, "seed": seed, "masks": first.masks, "mask_seed": first.mask_seed,
                "uncertain_rule": first.uncertain_rule.to_dict() if None in by_output else
                {o: p.uncertain_rule.to_dict() for o, p in by_output.items()},
                "predictions": [{"input": name, **by_output[None].to_dict(i)} if None in by_output else
                                {"input": name, "outputs": {output: p.to_dict(i) for output, p in by_output.items()}}
                                for i, name in enumerate(shown)],
                "failed": [{"input": valid_text(path), "error": valid_text(message)} for path, message in failures or []]}
    if out is not None:
        _write_results(out, document, by_output, shown)
    if as_json:
        typer.echo(json.dumps(document, allow_nan=False, indent=2))
    else:
        _print_table(document, by_output, shown)
    if failures and on_error == "report":
        raise typer.Exit(InputError.exit_code)


def _same_file(path: Path, other: str) -> bool:
    try:
        return os.path.samefile(path, other)
    except (OSError, ValueError):  # either is missing (a glob, a new --out): not the same file
        return False


def _shown(path: Path) -> str:
    """The path as the user would type it: relative to the working folder when it lies inside."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive, on Windows
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _predict(session, x, passes, dropout, threshold, top_k, count, uncertain_if=None, masks=None, mask_seed=None):
    options = dict(passes=passes, dropout=dropout, threshold=threshold, top_k=top_k, uncertain_if=uncertain_if,
                   masks=masks, mask_seed=mask_seed)
    if count <= PROGRESS_MIN_INPUTS:
        return session.predict(x, **options)
    runs = len(session.chunk_plan(count, (passes or session.default_passes) if dropout else 1, masks))
    with typer.progressbar(length=runs, label="Monte Carlo runs", file=sys.stderr) as bar:
        return session.predict(x, progress=lambda done, total: bar.update(1), **options)




def _summary(prediction, i: int, decided) -> dict:
    """The table's cells for input i, by column: label, confidence, std and mutual information of
    the decision (`decided`: prediction.decided(), computed once per table); for regression the
    mean and std of each output value."""
    m, head = prediction.measures, prediction.head
    labels, confidence = decided
    if head == "regression":
        return {"mean": " ".join(f"{v:.4g}" for v in prediction.mean[i].reshape(-1)),
                "std": " ".join(f"{v:.3g}" for v in m["std"][i].reshape(-1))}
    cells = {"label": labels[i] or "-", "confidence": f"{confidence[i]:.3f}"}
    if head in ("softmax", "logits"):
        label = int(m["label"][i])
        return {**cells, "std": f"{m['std'][i][label]:.3f}", "mutual_information": f"{m['mutual_information'][i]:.3f}"}
    if head == "binary":
        return {**cells, "std": f"{m['std'][i]:.3f}", "mutual_information": f"{m['mutual_information'][i]:.3f}"}
    # multi-label: the weakest of the per-label decisions is the one to look at
    return {**cells, "std": f"{max(m['std'][i]):.3f}", "mutual_information": f"{max(m['mutual_information'][i]):.3f}"}


def _print_table(document: dict, by_output: dict, names: List[str]) -> None:
    """One table, or one per output (under its name and head) for a model with several."""
    masks = f"  masks shared (seed {document['mask_seed']})" if document.get("masks") == "shared" else \
        "  masks independent" if document.get("masks") else ""
    typer.echo(f"model {terminal_safe(document['model'])}  provider {document['provider']}  "
               f"passes {document['passes']}" + ("" if document["stochastic"] else " (dropout off)") + masks)
    for output, prediction in by_output.items():
        if output is not None:
            typer.echo(f"\noutput {terminal_safe(output)} ({prediction.head})")
        flagged, decided = prediction.uncertain, prediction.decided()  # once, not once per row
        sets = prediction.measures.get("prediction_set_labels", prediction.measures.get("prediction_set"))
        summaries = [_summary(prediction, i, decided) for i in range(len(names))]
        header = ["input", *summaries[0]] + (["conformal set"] if sets is not None else []) + [""]
        rows = []
        for i, (name, cells) in enumerate(zip(names, summaries)):
            shown = [] if sets is None else ["{" + ",".join(map(str, sets[i] if isinstance(sets, list) else
                                                                  [j for j, on in enumerate(sets[i]) if on])) + "}"]
            rows.append([*map(terminal_safe, [name, *cells.values(), *shown]), "UNCERTAIN" if flagged[i] else ""])
        widths = [max(len(row[j]) for row in [header, *rows]) for j in range(len(header))]
        for row in [header, *rows]:
            typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        rule = prediction.uncertain_rule
        typer.echo(f"UNCERTAIN if {terminal_safe(str(rule))} ({rule.source} rule)")


def _write_results(out: Path, document: dict, by_output: dict, names: List[str]) -> None:
    """Write through a temporary file in the same folder, so `out` is never half written. The
    format is the suffix of the path as typed (a link at `out` is refused, never followed). With
    several outputs, .npz arrays and .csv columns carry their output's name: digit/mean, ..."""
    from .runtime.safe_files import atomic_writer

    with atomic_writer(out) as f:
        if out.suffix.lower() == ".json":
            f.write(json.dumps(document, allow_nan=False, indent=2).encode())
        elif out.suffix.lower() == ".npz":
            import numpy as np

            arrays = {_prefixed(output, key): value for output, prediction in by_output.items()
                      for key, value in prediction.arrays().items()}
            np.savez(f, names=np.array(names), **arrays)
        else:
            f.write(_csv_text(by_output, names).encode())


def _prefixed(output: Optional[str], key: str) -> str:
    return key if output is None else f"{output}/{key}"


def _csv_text(by_output: dict, names: List[str]) -> str:
    """One row per input: name, then per output uncertain and each per-input value (vectors as
    name_0, name_1, ...; prefixed by the output's name for a model with several), then the
    standard errors of those that have one (mean_se_0, ..., mutual_information_se)."""
    import csv
    import io

    import numpy as np

    from .runtime.safe_files import csv_safe_cell
    from .runtime.prediction import MODEL_WIDE

    columns = {"input": names}
    for output, prediction in by_output.items():
        columns[_prefixed(output, "uncertain")] = prediction.uncertain.tolist()
        per_input = {"mean": prediction.mean, "variance": prediction.variance, **prediction.measures}
        # Then the standard errors, after every existing column: mean_se, variance_se, <measure>_se.
        per_input.update({f"{name}_se": prediction.standard_errors[name] for name in ("mean", "variance")
                          if name in prediction.standard_errors})
        per_input.update({f"{name}_se": value for name, value in prediction.measure_errors().items()})
        for name, value in per_input.items():
            name_ = _prefixed(output, name)
            if name in MODEL_WIDE:
                continue  # one value for the model (thresholds), not a column per input
            if isinstance(value, list):  # variable length per input, e.g. active labels
                columns[name_] = [";".join(map(str, item)) for item in value]
            elif isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == len(names):
                flat = value.reshape(len(names), -1)
                if value.ndim == 1:
                    columns[name_] = flat[:, 0].tolist()
                else:
                    columns.update({f"{name_}_{j}": flat[:, j].tolist() for j in range(flat.shape[1])})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(map(csv_safe_cell, columns))
    # Text cells (names, labels) are neutralised; numbers stay numbers, a negative mean too.
    writer.writerows([csv_safe_cell(cell) if isinstance(cell, str) else cell for cell in row]
                     for row in zip(*columns.values()))
    return buffer.getvalue()


@app.command()
@reports_errors
def export(
    source: Path = typer.Argument(..., help="A .keras file, a legacy .h5 file or a SavedModel directory."),
    output: Path = typer.Option(..., "-o", "--output", help="The ONNX file to write."),
    passes: int = typer.Option(50, help="Default Monte Carlo passes stored in the file."),
    head: str = typer.Option("auto", help="auto, softmax, sigmoid, logits or regression; "
                             "NAME=HEAD,NAME=HEAD for a model with several outputs."),
    labels: Optional[str] = typer.Option(None, help="Class names, one per line; NAME=FILE,NAME=FILE for a model "
                                         "with several outputs."),
    mc_layers: Optional[str] = typer.Option(None, help="Comma-separated noise layers to keep stochastic [default: all]."),
    opset: int = typer.Option(17, help="ONNX opset."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check the graph against Keras before writing."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Allow a model with no stochastic layer."),
    image_size: Optional[str] = typer.Option(None, help="HxW of images for a flat input, e.g. 28x28."),
    color_mode: Optional[str] = typer.Option(None, help="grayscale or rgb [default: from the input shape]."),
    preprocess: Optional[str] = typer.Option(
        None, help="Pixels as Keras preprocess_input(mode=...) wants them: tf, torch, caffe, raw (0-255) or unit (/255) "
                   "(default: from the model, else unit)."),
    scale: Optional[float] = typer.Option(None, help="Custom pipeline instead: x = pixel * scale + offset (default 1/255)."),
    offset: Optional[float] = typer.Option(None, help="Pixel offset of the custom pipeline (default 0)."),
    seed: Optional[int] = typer.Option(None, help="Seed for the stored random-node seeds."),
    quantize: str = typer.Option("none", help="none or int8 (weights and activations of Conv/MatMul/Gemm)."),
    calibration: Optional[Path] = typer.Option(None, help="int8 calibration inputs, preprocessed (.npy/.npz)."),
    trust_model_code: bool = typer.Option(
        False, "--trust-model-code",
        help="Load a model that runs its own Python code (Lambda layers, custom objects): only for files you trust."),
    ignore_random_layers: Optional[str] = typer.Option(
        None, help="Comma-separated layers whose own randomness (RNN dropout, custom random layers) may be dropped."),
    custom_objects: Optional[Path] = typer.Option(
        None, help="A Python file registering your custom layers; it is imported first, which runs its code."),
):
    """Export a Keras model to one ONNX file that runs Monte Carlo dropout inside the graph."""
    _check_export_target(output)  # before minutes of loading and converting
    size = None
    if image_size is not None:
        try:
            size = tuple(int(v) for v in image_size.lower().split("x"))
            if len(size) != 2 or min(size) < 1:
                raise ValueError
        except ValueError:
            raise InputError(f"--image-size {image_size!r}: expected HxW, e.g. 28x28") from None
    if color_mode not in (None, "grayscale", "rgb"):
        raise InputError(f"--color-mode {color_mode!r}: expected grayscale or rgb")
    if passes < 1:
        raise InputError(f"--passes must be >= 1, got {passes}")
    from .export import check_preprocess_options  # no TensorFlow yet: a bad option fails at once

    check_preprocess_options(preprocess, scale, offset)
    import importlib.util
    import logging

    missing = [name for name in ("tensorflow", "keras", "tf2onnx", "onnx") if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"export needs the export extra ({', '.join(missing)} missing): pip install -e '.[export]'")

    from .export import export_model
    from .runtime.providers import quiet_stderr

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    # TensorFlow and tf2onnx log to stderr from C++ while they load and convert; the user sees
    # our progress lines on the real stderr instead.
    with quiet_stderr() as terminal:
        def progress(message):
            os.write(terminal, (message + "\n").encode())

        report = export_model(
            source, output, passes=passes, head=head,
            labels=Path(labels) if labels is not None and ("=" not in labels or Path(labels).exists()) else labels,
            mc_layers=[name.strip() for name in mc_layers.split(",") if name.strip()] if mc_layers else None,
            opset=opset, validate=validate, allow_deterministic=deterministic, image_size=size, color_mode=color_mode,
            scale=scale, offset=offset, preprocess=preprocess, seed=seed, quantize=None if quantize == "none" else quantize,
            calibration=calibration, progress=progress, trust_model_code=trust_model_code,
            ignore_random_layers=[n.strip() for n in ignore_random_layers.split(",") if n.strip()]
            if ignore_random_layers else None, custom_objects=custom_objects,
        )
    typer.echo("\n".join(report.lines()))


def _check_export_target(output: Path) -> None:
    """-o must name an .onnx file (so `-o model.keras` cannot replace the source), not a folder or
    a link, in a folder that is one or can be made."""
    from .runtime.safe_files import check_writable_target

    path = Path(os.path.abspath(output))
    folder = next(p for p in path.parents if os.path.lexists(p))
    if not folder.is_dir():
        raise InputError(f"-o {output}: {folder} is not a folder")
    if folder == path.parent:
        check_writable_target(output)
    if output.suffix.lower() != ".onnx":
        raise InputError(f"-o {output}: the file to write must end in .onnx")


@app.command()
@reports_errors
def info(
    model: Path = typer.Argument(DEFAULT_MODEL, help="The exported mcdrop ONNX file."),
    device: str = typer.Option("auto", help="auto, cpu or cuda: where it would run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    check: bool = typer.Option(False, "--check", help="Also check here that its randomness is live."),
    limit: List[str] = LIMIT_OPTION,
    no_verify: bool = NO_VERIFY_OPTION,
    allow_external_data: bool = EXTERNAL_DATA_OPTION,
):
    """What an exported model holds: head, labels, shapes, stochastic layers, preprocessing."""
    from dataclasses import asdict

    from .runtime.session import MCSession

    session = MCSession(model, device=device, limits=_limits(limit), verify=not no_verify,
                        allow_external_data=allow_external_data)
    meta = session.info
    document = {
        "model": valid_text(_shown(model)), "provider": session.provider, "head": meta.head, "labels": meta.labels,
        "heads": {o.name: {"head": o.head, "labels": o.labels} for o in meta.model_outputs},
        "default_passes": meta.default_passes,
        "inputs": {name: list(shape) for name, shape in meta.inputs.items()},
        "outputs": {name: list(shape) for name, shape in meta.outputs.items()},
        "stochastic_layers": [asdict(layer) for layer in meta.stochastic_layers],
        "preprocessing": None if meta.preprocessing is None else asdict(meta.preprocessing),
        "activation_floats_per_sample": meta.activation_floats_per_sample,
        "source": meta.metadata.get("source"), "versions": meta.metadata.get("versions"),
    }
    if check:
        document["checks"] = [asdict(c) for c in session.self_check()]
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(f"model            {terminal_safe(document['model'])}")
    typer.echo(f"provider         {document['provider']}")
    for output in meta.model_outputs:
        named = "" if len(meta.model_outputs) == 1 else f"{terminal_safe(output.name)}: "
        typer.echo(f"head             {named}{output.head}")
        typer.echo(f"labels           {named}{terminal_safe(', '.join(output.labels)) if output.labels else '-'}")
    typer.echo(f"default passes   {meta.default_passes}")
    for kind in ("inputs", "outputs"):
        for name, shape in document[kind].items():
            shown = ", ".join("?" if d is None else str(d) for d in shape)
            typer.echo(f"{kind[:-1]:<16} {terminal_safe(name)} [{shown}]")
    for layer in meta.stochastic_layers:
        typer.echo(terminal_safe(f"stochastic layer {layer.name} ({layer.kind}, rate {layer.rate})"))
    from .runtime.metadata import describe_preprocessing

    typer.echo(f"preprocessing    {describe_preprocessing(document['preprocessing'])}")
    for passed in document.get("checks", []):
        typer.echo(f"check            ok  {passed['name']}: {passed['detail']}")


@app.command()
@reports_errors
def evaluate(
    model: Path = typer.Argument(..., help="The mcdrop ONNX file."),
    data: Path = typer.Argument(..., help="Labelled inputs: an .npz with x and y (or one array per input name and y), "
                                "or a folder with one subfolder of images per class."),
    ood: Optional[Path] = typer.Option(None, help="Inputs that belong to no class (images, folders, .npy/.npz)."),
    passes: Optional[int] = typer.Option(None, help="Monte Carlo passes T [default: the model's]."),
    seed: Optional[int] = typer.Option(None, help="Seed for reproducible results [default: fresh]."),
    report: Optional[Path] = typer.Option(None, help="Write report.json, report.md and PNG plots into this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    output: Optional[str] = typer.Option(None, help="The output to evaluate, for a model with several."),
    uncertain_if: Optional[str] = typer.Option(None, help="UNCERTAIN rule instead of the file's, e.g. "
                                               "'mutual_information > 0.05 or confidence < 0.7'."),
    target_precision: float = typer.Option(0.9, help="Binary / multi-label heads: report the threshold that reaches it."),
    on_error: str = typer.Option("stop", help="An input that cannot be read: stop (before any run) or skip (left "
                                 "out, listed in the report)."),
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    max_chunk_mb: float = MAX_CHUNK_OPTION,
    limit: List[str] = LIMIT_OPTION,
    no_verify: bool = NO_VERIFY_OPTION,
):
    """Measure accuracy, calibration and how well the uncertainty ranks errors and spots OOD inputs."""
    limits = _limits(limit)
    _check_run_options(limits, passes, max_chunk_mb, threads)
    if not 0 < target_precision <= 1:
        raise InputError(f"--target-precision must lie in (0, 1], got {target_precision}")
    if on_error not in ("skip", "stop"):
        raise InputError(f"--on-error {on_error!r}: choose skip or stop")
    with_plots = False
    if report is not None:  # before the long evaluation: a bad folder or no plots is known at once
        from .runtime.report import check_report_folder, plots_available

        check_report_folder(report)
        with_plots = plots_available()
    from .runtime.datasets import batch_size, load_labelled, load_unlabelled, pick_output
    from .runtime.uncertain_rule import Rule
    from .runtime.evaluation import evaluate as run_evaluation
    from .runtime.session import MCSession

    session = MCSession(model, device=device, seed=seed, threads=threads,
                        max_chunk_bytes=max(1, int(max_chunk_mb * 2**20)), limits=limits, verify=not no_verify)
    chosen = pick_output(session.info, output)
    if uncertain_if is not None:
        Rule.parse(uncertain_if, chosen.head)  # a bad rule fails before any run
    failures = None if on_error == "stop" else []
    labelled = load_labelled(data, session.info, chosen, limits, failures)
    outside = load_unlabelled(ood, session.info, limits, failures) if ood is not None else None
    for path, message in failures or []:
        typer.echo(f"warning: skipped: {terminal_safe(message)}", err=True)
    total = 2 * (len(labelled) + (0 if outside is None else batch_size(outside)))
    with typer.progressbar(length=total, label="Evaluating", file=sys.stderr,
                           hidden=total < 2 * PROGRESS_MIN_INPUTS) as bar:
        result = run_evaluation(session, labelled, chosen, passes=passes, ood=outside, progress=bar.update,
                                target_precision=target_precision, uncertain_if=uncertain_if)
    result.report = {"model": valid_text(_shown(model)), "data": valid_text(_shown(data)),
                     "ood": None if ood is None else valid_text(_shown(ood)), "output": chosen.name,
                     "seed": seed, "provider": session.provider,
                     "skipped": [{"input": valid_text(path), "error": valid_text(message)}
                                 for path, message in failures or []], **result.report}
    if report is not None:
        from .runtime.report import write_report

        written = write_report(report, result, with_plots)
        typer.echo(f"wrote {', '.join(terminal_safe(_shown(path)) for path in written)}", err=True)
    if as_json:
        typer.echo(json.dumps(result.report, indent=2, allow_nan=False))
    else:
        from .runtime.report import summary_lines

        typer.echo("\n".join(terminal_safe(line) for line in summary_lines(result.report)))


@app.command()
@reports_errors
def calibrate(
    model: Path = typer.Argument(..., help="The mcdrop ONNX file (calibrated or not)."),
    data: Path = typer.Argument(..., help="Labelled calibration inputs, not used for training: an .npz with x and y, "
                                "or a folder with one subfolder of images per class."),
    output: Path = typer.Option(..., "-o", "--output", help="The calibrated ONNX file to write."),
    target_accuracy: Optional[float] = typer.Option(
        None, help="UNCERTAIN rule: flag inputs so that the accepted ones reach this accuracy."),
    target_coverage: Optional[float] = typer.Option(None, help="UNCERTAIN rule: accept this share of the inputs."),
    conformal: Optional[float] = typer.Option(None, metavar="ALPHA", help="Add conformal prediction sets that hold "
                                              "the true class with probability >= 1 - ALPHA."),
    measure: str = typer.Option("mutual_information", help="The score the UNCERTAIN rule thresholds: mutual_information, "
                                "predictive_entropy, expected_entropy, one_minus_confidence or top_class_variance."),
    target_precision: Optional[float] = typer.Option(
        None, help="Binary / multi-label heads: per-label thresholds reaching this precision [default: best F1]."),
    passes: Optional[int] = typer.Option(None, help="Monte Carlo passes T for fitting [default: the model's]."),
    seed: int = typer.Option(0, help="Seed of the fitting runs (the fit is reproducible)."),
    head_output: Optional[str] = typer.Option(None, "--output-name", help="The output to calibrate, for a model with several."),
    limit: List[str] = LIMIT_OPTION,
    no_verify: bool = NO_VERIFY_OPTION,
):
    """Fit temperature scaling and the UNCERTAIN rule on labelled data and write them into the file."""
    limits = _limits(limit)
    _check_run_options(limits, passes)
    import importlib.util

    missing = [name for name in ("onnx", "scipy") if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"calibrate needs the evaluate extra ({', '.join(missing)} missing): pip install -e '.[evaluate]'")
    from .export.calibrate import calibrate_model

    report = calibrate_model(model, output, data, target_accuracy=target_accuracy, target_coverage=target_coverage,
                             conformal=conformal, passes=passes, measure=measure, target_precision=target_precision,
                             output_name=head_output, seed=seed, verify=not no_verify, limits=limits,
                             progress=lambda message: typer.echo(message, err=True))
    typer.echo("\n".join(terminal_safe(line) for line in report.lines()))


@app.command()
@reports_errors
def acquire(
    pool: List[str] = typer.Argument(..., help="The unlabelled pool: images, folders of images, globs, .npy / .npz batches."),
    model: Path = typer.Option(DEFAULT_MODEL, help="The mcdrop ONNX file (a classifier)."),
    k: int = typer.Option(10, "--k", help="How many inputs to pick for labelling."),
    strategy: str = typer.Option("bald", help="bald, batchbald, entropy, variation-ratio, margin or random."),
    passes: Optional[int] = typer.Option(None, help="Monte Carlo passes T [default: the model's]."),
    mask_seed: Optional[int] = typer.Option(None, help="Seed of the one shared mask set that scores the whole pool "
                                                       "[default: fresh; printed, and written to --out]."),
    out: Optional[Path] = typer.Option(None, help="Also write the ranking to .csv or .json."),
    output: Optional[str] = typer.Option(None, help="The output to score, for a model with several."),
    batch_size: int = typer.Option(256, help="Pool inputs scored per predict."),
    num_samples: int = typer.Option(10_000, help="batchbald: label configurations sampled once the exact joint "
                                                 "entropy would need more."),
    max_memory_mb: float = typer.Option(2048, help="batchbald: refuse a run whose samples and working arrays "
                                                   "would need more, MiB (estimated up front)."),
    seed: int = typer.Option(0, help="Seed of the random strategy and of batchbald's sampled configurations."),
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    max_chunk_mb: float = MAX_CHUNK_OPTION,
    limit: List[str] = LIMIT_OPTION,
    no_verify: bool = NO_VERIFY_OPTION,
    allow_external_data: bool = EXTERNAL_DATA_OPTION,
):
    """Pick the K pool inputs most worth labelling next (BALD, BatchBALD, ...), scored with one shared mask set."""
    from .runtime.acquisition import STRATEGIES

    limits = _limits(limit)
    _check_run_options(limits, passes, max_chunk_mb, threads)
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    for name, value in (("--k", k), ("--batch-size", batch_size), ("--num-samples", num_samples)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if not 0 < max_memory_mb < float("inf"):
        raise InputError(f"--max-memory-mb must be a positive finite number, got {max_memory_mb}")
    if out is not None:
        if out.suffix.lower() not in (".csv", ".json"):
            raise InputError(f"--out {out}: write the ranking to .csv or .json")
        from .runtime.safe_files import check_writable_target

        check_writable_target(out)

    import numpy as np

    from .runtime.acquisition import acquire_with_session, check_session_memory
    from .runtime.input_files import load_inputs
    from .runtime.session import MCSession

    session = MCSession(model, device=device, threads=threads, max_chunk_bytes=max(1, int(max_chunk_mb * 2**20)),
                        limits=limits, verify=not no_verify, allow_external_data=allow_external_data)
    names, x = load_inputs(pool, session.info, limits=limits)
    if not names:
        raise InputError("the pool is empty")
    check_session_memory(session, len(names), strategy, passes, output, num_samples, max_memory_mb)  # before any run
    with typer.progressbar(length=len(names), label="Scoring the pool", file=sys.stderr) as bar:
        chosen = acquire_with_session(session, x, k, strategy, passes=passes, mask_seed=mask_seed, output=output,
                                      batch_size=batch_size, ids=names, rng=np.random.default_rng(seed),
                                      num_samples=num_samples, max_memory_mb=max_memory_mb,
                                      progress=lambda done, total: bar.update(done - bar.pos))
    if out is not None:
        chosen.write(out)
    typer.echo(f"model {terminal_safe(_shown(model))}  pool {len(names)}  strategy {strategy}  passes {chosen.passes}  "
               f"masks shared (seed {chosen.mask_seed})")
    rows = [["rank", "input", "score"]] + [[str(r["rank"]), terminal_safe(r["id"]), f"{r['score']:.4f}"]
                                            for r in chosen.rows()]
    widths = [max(len(row[j]) for row in rows) for j in range(3)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@app.command()
@reports_errors
def score(
    inputs: List[str] = typer.Argument(..., help="Images, folders and globs of them, .npy / .npz arrays (a row per "
                                                 "input), Parquet or CSV lists of image paths (column 'path')."),
    out: Path = typer.Option(..., help="The Parquet output: a file (local engine) or a folder of files (ray)."),
    model: Path = typer.Option(DEFAULT_MODEL, help="The mcdrop ONNX file."),
    engine: str = typer.Option("local", help="local: this process, every core; ray: Ray Data actors."),
    address: Optional[str] = typer.Option(None, help="ray: the cluster to join [default: start Ray on this machine]."),
    passes: Optional[int] = typer.Option(None, help="Monte Carlo passes T [default: the model's]."),
    mask_seed: Optional[int] = typer.Option(None, help="Seed of the one shared mask set that scores every input "
                                                       "[default: the resumed job's, else fresh; in every row]."),
    batch_size: int = typer.Option(256, help="Inputs scored per predict."),
    workers: Optional[int] = typer.Option(None, help="local: CPU threads [every core]; ray: actors [the cluster's "
                                                     "CPUs, or its GPUs with --gpus-per-worker]."),
    gpus_per_worker: float = typer.Option(0, help="ray: GPUs per actor (e.g. 1 with --device cuda)."),
    measures: List[str] = typer.Option([], "--measures", help="Measure columns to write, repeatable or comma-separated "
                                                              "[default: every measure of the head]."),
    keep_samples: bool = typer.Option(False, "--keep-samples", help="Also write each input's [T, outputs] samples."),
    output: Optional[str] = typer.Option(None, help="The output to score, for a model with several."),
    uncertain_if: Optional[str] = typer.Option(None, help="UNCERTAIN rule instead of the file's."),
    on_error: str = typer.Option("skip", help="An input that cannot be read: skip (a row with its error) or stop."),
    resume: bool = typer.Option(False, "--resume", help="Continue a job that stopped, skipping the inputs it wrote."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished --out, or start an unfinished job "
                                                              "(OUT.parts) again."),
    allow_paths_outside: bool = typer.Option(False, "--allow-paths-outside",
                                             help="Let a list's paths leave its folder (absolute paths, '..', "
                                                  "links pointing out); only for lists you trust."),
    device: str = DEVICE_OPTION,
    max_chunk_mb: float = MAX_CHUNK_OPTION,
    limit: List[str] = LIMIT_OPTION,
    no_verify: bool = NO_VERIFY_OPTION,
):
    """Score many inputs into Parquet: a row per input with label, mean, variance, every measure and UNCERTAIN."""
    limits = _limits(limit)
    _check_run_options(limits, passes, max_chunk_mb, workers)
    if engine not in ("local", "ray"):
        raise InputError(f"--engine {engine!r}: choose local or ray")
    if address is not None and engine != "ray":
        raise InputError("--address is for --engine ray")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    if not 0 <= gpus_per_worker < 2**20:
        raise InputError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    from .runtime.scoring import ScoreOptions, check_output, checkpoint_folder, require_pyarrow, score_options

    ScoreOptions.check_on_error(on_error)  # before any work
    require_pyarrow()
    if engine == "ray":
        from .runtime.ray_scoring import require_ray

        require_ray()
    check_output(out, engine, resume, overwrite)

    from .runtime.session import MCSession
    from .runtime.sources import plan_inputs

    max_chunk_bytes = max(1, int(max_chunk_mb * 2**20))
    session = MCSession(model, device=device, threads=workers if engine == "local" else 1,
                        max_chunk_bytes=max_chunk_bytes, limits=limits, verify=not no_verify)
    wanted = [name.strip() for item in measures for name in item.split(",") if name.strip()]
    options = score_options(session, passes, mask_seed, output, wanted, keep_samples, uncertain_if, on_error,
                            resume_from=checkpoint_folder(out) if resume else None)
    plan = plan_inputs(inputs, session.info, limits=limits, allow_paths_outside=allow_paths_outside)
    try:
        if engine == "local":
            from .runtime.scoring import score_local

            with typer.progressbar(length=plan.total, label="Scoring", file=sys.stderr) as bar:
                summary = score_local(session, plan, out, options, batch_size=batch_size, resume=resume,
                                      limits=limits, progress=lambda done, total: bar.update(done - bar.pos),
                                      overwrite=overwrite)
        else:
            from .runtime.ray_scoring import score_with_ray

            summary = score_with_ray(plan, out, model, options, batch_size=batch_size, workers=workers,
                                     num_gpus=gpus_per_worker, device=device, max_chunk_bytes=max_chunk_bytes,
                                     resume=resume, address=address, limits=limits, verify=not no_verify,
                                     overwrite=overwrite)
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C, or SIGTERM (main turns it into SystemExit)
        from .runtime.scoring import stopped_message

        typer.echo(f"error: {terminal_safe(stopped_message(out, plan.total, overwrite))}", err=True)
        code = 130 if isinstance(stop, KeyboardInterrupt) else stop.code if isinstance(stop.code, int) else 1
        raise typer.Exit(code) from None
    masks = f"masks shared (seed {summary.mask_seed})" if summary.mask_seed is not None else "masks independent"
    resumed = f", {summary.rows - summary.scored} were done before" if summary.scored < summary.rows else ""
    typer.echo(f"scored {summary.scored} inputs{resumed} ({summary.failed} could not be read) into "
               f"{terminal_safe(_shown(Path(summary.out)))}  engine {engine}  passes {summary.passes}  {masks}")


def _check_run_options(limits, passes, max_chunk_mb=None, threads=None) -> None:
    """The options infer, evaluate and calibrate share, checked before any work."""
    if passes is not None and passes < 1:
        raise InputError(f"--passes must be >= 1, got {passes}")
    if passes is not None:
        limits.check("passes", passes, f"--passes {passes:,}")
    if max_chunk_mb is not None and not 0 < max_chunk_mb < 2**40:
        raise InputError(f"--max-chunk-mb must be > 0 and finite, got {max_chunk_mb}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")


def _terminate(signum, frame):
    """SIGTERM unwinds like Ctrl-C does, so temporary files are removed on the way out."""
    raise Terminated(128 + signum)


def main():
    # standalone_mode=False hands usage errors (a missing argument, a bad number) back to us, so
    # they too print as one line instead of a usage box.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = app(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):  # outside a command (reports_errors has those)
        typer.echo("error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except Exception as err:
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise  # not a usage error: a bug, keep the traceback
        typer.echo(f"error: {terminal_safe(err.format_message())}", err=True)
        sys.exit(err.exit_code)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
