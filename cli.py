"""mcdrop command line: Monte Carlo dropout uncertainty from one ONNX file.

Heavy modules (numpy, onnxruntime, Pillow) are imported inside the commands, so --help is quick.
"""

import functools
import inspect
import json
import signal
import sys
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

from .runtime.errors import InputError, McdropError, memory_error_text, os_error_text  # noqa: E402
from .runtime.safe_files import shown_path, terminal_safe, valid_text  # noqa: E402, F401  (stdlib only: --help stays quick)

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "models" / "cnn.onnx"
# Below this many inputs a run is quick enough that a progress bar is only noise.
PROGRESS_MIN_INPUTS = 32
EXIT_INTERRUPTED = 128 + signal.SIGINT  # as a shell reports Ctrl-C
# Options that `infer` and `info` share: how far an untrusted model file is trusted (README: Trust model).
LIMIT_OPTION = typer.Option([], "--limit", help="Raise a bound, NAME=VALUE, repeatable: model_mb, passes, input_mb, "
                            "image_pixels, metadata_kb, tensor_mb, threads (README: Trust model).")
DEVICE_OPTION = typer.Option("auto", help="auto, cpu, cuda or openvino (openvino:bf16 lets it compute in bf16).")
THREADS_OPTION = typer.Option(None, help="CPU threads [default: every core this process may use].")
MAX_CHUNK_OPTION = typer.Option(None, help="Largest activation memory of one run, MiB [default: 256 on CPU, 4096 on CUDA].")
NO_VERIFY_OPTION = typer.Option(False, "--no-verify", help="Load a file whose integrity checksum is missing or wrong.")
PASSES_OPTION = typer.Option(None, help="Monte Carlo passes T, or auto (README: Adaptive passes) [default: the model's].")
MAX_PASSES_OPTION = typer.Option(None, help="--passes auto: at most this many passes [default: the model's passes].")
MIN_PASSES_OPTION = typer.Option(None, help="--passes auto: the first round's passes [default: 10, or --max-passes if fewer].")
METHOD_OPTION = typer.Option("mc", help="mc: T passes; analytic: one pass of moments (README: Analytic mode).")
EXTERNAL_DATA_OPTION = typer.Option(False, "--allow-external-data",
                                    help="Read tensors stored in other files, from the model's own folder only.")
# The flags that make a command's SessionSettings, declared once (see takes_settings).
SESSION_FLAGS = {"device": (str, DEVICE_OPTION), "threads": (Optional[int], THREADS_OPTION),
                 "max_chunk_mb": (Optional[float], MAX_CHUNK_OPTION), "limit": (List[str], LIMIT_OPTION),
                 "no_verify": (bool, NO_VERIFY_OPTION), "allow_external_data": (bool, EXTERNAL_DATA_OPTION)}

app = typer.Typer(help=__doc__.splitlines()[0], add_completion=False, no_args_is_help=True, rich_markup_mode=None,
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
                typer.echo(f"error: {terminal_safe(os_error_text(err))}", err=True)
                raise typer.Exit(McdropError.exit_code) from None
            except MemoryError as err:
                typer.echo(f"error: {terminal_safe(memory_error_text(err, kwargs))}", err=True)
                raise typer.Exit(McdropError.exit_code) from None
            except KeyboardInterrupt:  # typer would turn it into a silent exit 130
                typer.echo("error: interrupted", err=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except Terminated:
                typer.echo("error: terminated", err=True)
                raise

    return wrapper


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    typer.echo(f"warning: {terminal_safe(str(message))}", err=True)


def takes_settings(*flags: str, own: tuple = ()):
    """Give a command the session flags `flags` (SESSION_FLAGS, after its own options) and, in their
    place, `settings`: the one SessionSettings they ask for (runtime/settings.py), built before the
    command runs. `own`: options the command declares itself (its --seed) that go into it too."""

    def decorate(command):
        signature = inspect.signature(command)
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=SESSION_FLAGS[name][1],
                                   annotation=SESSION_FLAGS[name][0]) for name in flags]

        @functools.wraps(command)
        def wrapper(**kwargs):
            from .runtime.settings import SessionSettings

            chosen = {name: kwargs.pop(name) for name in flags}
            chosen.update({name: kwargs[name] for name in own})
            return command(settings=SessionSettings.from_flags(**chosen), **kwargs)

        wrapper.__signature__ = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name != "settings"] + added)
        return wrapper

    return decorate


@app.command()
@reports_errors
@takes_settings("device", "threads", "max_chunk_mb", "limit", "no_verify", "allow_external_data", own=("seed",))
def infer(
    inputs: List[str] = typer.Argument(..., help="Images, folders of images, globs, .npy / .npz batches."),
    model: Path = typer.Option(DEFAULT_MODEL, help="The exported mcdrop ONNX file."),
    passes: Optional[str] = PASSES_OPTION, max_passes: Optional[int] = MAX_PASSES_OPTION, min_passes: Optional[int] = MIN_PASSES_OPTION,
    seed: Optional[int] = typer.Option(
        None, help="Session seed: the mask seed of shared masks; with independent masks, reproducible results for "
                   "the same --threads and --max-chunk-mb [default: fresh]."),
    masks: Optional[str] = typer.Option(
        None, help="shared: every input scored by the same T sampled networks, so a result depends on the input, "
                   "--mask-seed and --passes alone; independent: new masks per input and pass, as Keras "
                   "[default: shared where the file takes it]."),
    mask_seed: Optional[int] = typer.Option(None, help="Seed of the shared mask set [default: --seed, else fresh]."),
    no_dropout: bool = typer.Option(False, "--no-dropout", help="One deterministic pass, dropout off."), method: str = METHOD_OPTION,
    top_k: int = typer.Option(3, help="Classes listed per input (categorical heads)."),
    threshold: Optional[float] = typer.Option(
        None, help="Decision threshold (binary / multi-label heads) [default: the file's calibrated ones, else 0.5]."),
    uncertain_if: Optional[str] = typer.Option(
        None, help="UNCERTAIN rule instead of the file's, e.g. 'mutual_information > 0.05 or confidence < 0.7', or "
                   "'never' [default: the calibrated rule, else mutual_information > 0.1 or confidence < 0.6]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    out: Optional[Path] = typer.Option(None, help="Also write the results to .json, .npz or .csv."),
    on_error: str = typer.Option("report", help="A bad input: report (all, then exit 2), skip (warn) or stop."),
    settings=None,
):
    """Predict with uncertainty: per input the label, its confidence, std and mutual information; regression
    outputs: mean and std."""
    from .runtime.input_files import load_inputs
    from .runtime.result_files import check_infer_flags, results_document, table_lines, write_results
    from .runtime.uncertain_rule import Rule

    check_infer_flags(out, inputs, top_k, threshold, on_error)  # before any work
    session = _session(model, settings)
    plan = session.resolve(passes, masks, mask_seed, not no_dropout, True, max_passes=max_passes, min_passes=min_passes,
                           method=method)
    for output in session.info.model_outputs if uncertain_if is not None else []:
        Rule.parse(uncertain_if, output.head)  # a bad rule fails before any input is read

    failures = None if on_error == "stop" else []
    names, x = load_inputs(inputs, session.info, limits=settings.limits, failures=failures)
    for _, message in failures or []:
        typer.echo(f"{'error' if on_error == 'report' else 'warning: skipped'}: {terminal_safe(message)}", err=True)
    if not names:
        if failures and on_error == "report":
            raise typer.Exit(InputError.exit_code)  # each bad input had its line
        raise InputError(f"none of the {len(failures)} inputs could be read" if failures else "no inputs given")
    options = dict(plan.arguments(), threshold=threshold, top_k=top_k, uncertain_if=uncertain_if)
    if len(names) <= PROGRESS_MIN_INPUTS or plan.auto:
        predicted = session.predict(x, **options)
    else:
        with typer.progressbar(length=len(session.chunk_plan(len(names), plan.passes, plan.masks)),
                               label="Monte Carlo runs", file=sys.stderr) as bar:
            predicted = session.predict(x, progress=lambda done, total: bar.update(1), **options)
    document = results_document(predicted, names, model=shown_path(model), provider=session.provider, seed=seed,
                                failures=failures or [])
    if out is not None:
        write_results(out, predicted, names, document)
    typer.echo(json.dumps(document, allow_nan=False, indent=2) if as_json else
               "\n".join(table_lines(document, predicted, [valid_text(name) for name in names])))
    if failures and on_error == "report":
        raise typer.Exit(InputError.exit_code)


def _session(model: Path, settings):
    """The command's session on `model` (the shipped model when none is given)."""
    if model == DEFAULT_MODEL and not model.exists():
        raise InputError(f"no model at {model}; export one with `python cli.py export`, or pass --model")
    from .runtime.session import MCSession

    return MCSession(model, settings=settings)


@app.command()
@reports_errors
def export(
    source: List[Path] = typer.Argument(..., help="A .keras or .h5 file or SavedModel; several: an ensemble, --passes each."),
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
    portable: bool = typer.Option(False, "--portable", help="Write the portable profile (no random op, masks fed, "
                                  "T = --passes), as `convert --portable` would."),
    file_format: str = typer.Option("onnx", "--format", help="onnx, or tflite: a portable TensorFlow Lite file for "
                                    "LiteRT (T = --passes, masks fed or --bake-masks)."),
    bake_masks: Optional[int] = typer.Option(None, metavar="SEED", help="With --portable or --format tflite: store "
                                             "the mask set of this seed in the file (no masks to feed)."),
):
    """Export a Keras model (or several: an ensemble) to one ONNX file that runs Monte Carlo dropout inside the
    graph (--format tflite: a portable TensorFlow Lite file for LiteRT)."""
    options = dict(locals())  # every option, by name
    from .export.flags import export_from_flags

    typer.echo("\n".join(export_from_flags(**options)))


@app.command()
@reports_errors
@takes_settings("limit", "no_verify")
def convert(
    source: Path = typer.Argument(..., help="An exported or calibrated mcdrop ONNX file."),
    output: Path = typer.Option(..., "-o", "--output", help="The ONNX file to write."),
    portable: bool = typer.Option(False, "--portable", help="No random op: masks fed as uint8 keep masks built "
                                  "from a mask seed, or baked (docs/FORMAT.md: Portable profile)."),
    skip_dropped: bool = typer.Option(False, "--skip-dropped", help="Shared runs skip the weights of dropped units "
                                      "(docs/DESIGN.md: Skipping dropped units)."),
    batch_size: Optional[int] = typer.Option(None, help="Fix the batch size (NNAPI and Core ML need it) [default: any]."),
    passes: Optional[int] = typer.Option(None, help="The fixed number of passes T [default: the file's]."),
    bake_masks: Optional[int] = typer.Option(None, metavar="SEED", help="Store the mask set of this seed in the file "
                                             "(no masks to feed; at most T passes)."),
    analytic: Optional[Path] = typer.Option(None, "--analytic", metavar="INPUTS", help="Add the moment graph of "
                                            "--method analytic; its agreement with MC is measured on INPUTS."),
    settings=None,
):
    """Rewrite an mcdrop file for other runtimes and accelerators (needs onnx, not TensorFlow)."""
    from .convert import run_convert

    lines = run_convert(source, output, portable=portable, skip_dropped=skip_dropped, analytic=analytic,
                        batch_size=batch_size, passes=passes, bake_masks=bake_masks, verify=settings.verify,
                        limits=settings.limits)
    typer.echo("\n".join(terminal_safe(line) for line in lines))


@app.command()
@reports_errors
@takes_settings("limit", "no_verify", "allow_external_data", own=("device",))
def info(
    model: Path = typer.Argument(DEFAULT_MODEL, help="The exported mcdrop ONNX file."),
    device: str = typer.Option("auto", help="auto, cpu or cuda: where it would run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    check: bool = typer.Option(False, "--check", help="Also check here that its randomness is live."),
    settings=None,
):
    """What an exported model holds: head, labels, shapes, stochastic layers, preprocessing."""
    from .runtime.model_summary import model_document, model_lines

    session = _session(model, settings)
    document = model_document(session, shown_path(model), check)
    typer.echo(json.dumps(document, indent=2) if as_json else "\n".join(model_lines(document, session.info)))


@app.command()
@reports_errors
@takes_settings("device", "threads", "max_chunk_mb", "limit", "no_verify", own=("seed",))
def evaluate(
    model: Path = typer.Argument(..., help="The mcdrop ONNX file."),
    data: Path = typer.Argument(..., help="Labelled inputs: an .npz with x and y (or one array per input name and y), "
                                "or a folder with one subfolder of images per class."),
    ood: Optional[Path] = typer.Option(None, help="Inputs that belong to no class (images, folders, .npy/.npz)."),
    passes: Optional[str] = PASSES_OPTION, max_passes: Optional[int] = MAX_PASSES_OPTION, min_passes: Optional[int] = MIN_PASSES_OPTION,
    seed: Optional[int] = typer.Option(None, help="Seed for reproducible results [default: fresh]."), method: str = METHOD_OPTION,
    report: Optional[Path] = typer.Option(None, help="Write report.json, report.md and PNG plots into this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    output: Optional[str] = typer.Option(None, help="The output to evaluate, for a model with several."),
    uncertain_if: Optional[str] = typer.Option(None, help="UNCERTAIN rule instead of the file's, e.g. "
                                               "'mutual_information > 0.05 or confidence < 0.7'."),
    target_precision: float = typer.Option(0.9, help="Binary / multi-label heads: report the threshold that reaches it."),
    on_error: str = typer.Option("stop", help="An input that cannot be read: stop (before any run) or skip (left "
                                 "out, listed in the report)."),
    shift: bool = typer.Option(False, "--shift", help="Also under 5 image corruptions at 5 severities (README: Under shift)."),
    seeds: int = typer.Option(1, help="MC figures over this many mask seeds: mean and std (seed, seed + 1, ...)."),
    settings=None,
):
    """Measure accuracy, calibration and how well the uncertainty ranks errors and spots OOD inputs."""
    from .evaluate.command import evaluate_from_cli

    document = evaluate_from_cli(
        model, data, ood=ood, passes=passes, max_passes=max_passes, min_passes=min_passes, method=method, seed=seed,
        report=report, output=output, uncertain_if=uncertain_if, target_precision=target_precision, on_error=on_error,
        shift=shift, seeds=seeds, settings=settings, note=lambda line: typer.echo(terminal_safe(line), err=True),
        progress_bar=lambda total: typer.progressbar(length=total, label="Evaluating", file=sys.stderr,
                                                     hidden=total < 2 * PROGRESS_MIN_INPUTS))
    if as_json:
        typer.echo(json.dumps(document, indent=2, allow_nan=False))
    else:
        from .evaluate.report import summary_lines

        typer.echo("\n".join(terminal_safe(line) for line in summary_lines(document)))


@app.command()
@reports_errors
@takes_settings("limit", "no_verify", own=("seed",))
def calibrate(
    model: Path = typer.Argument(..., help="The mcdrop ONNX file (calibrated or not)."),
    data: Path = typer.Argument(..., help="Labelled calibration inputs, not used for training: an .npz with x and y, "
                                "or a folder with one subfolder of images per class."),
    output: Path = typer.Option(..., "-o", "--output", help="The calibrated ONNX file to write."),
    target_accuracy: Optional[float] = typer.Option(
        None, help="UNCERTAIN rule: flag inputs so that the accepted ones reach this accuracy."),
    target_coverage: Optional[float] = typer.Option(None, help="UNCERTAIN rule: accept this share of the inputs."),
    conformal: Optional[float] = typer.Option(None, metavar="ALPHA", help="Conformal sets (intervals) holding the truth w.p. >= 1 - ALPHA."),
    conformal_method: Optional[str] = typer.Option(None, help="lac, aps, raps, mondrian; per_label, risk; normalized (regression)."),
    measure: Optional[str] = typer.Option(None, help="The score the UNCERTAIN rule thresholds [default: the best on the "
                                          "calibration data, README: Calibrate]."),
    ood: Optional[Path] = typer.Option(None, help="Inputs that belong to no class: the measure's OOD AUROC counts too."),
    target_precision: Optional[float] = typer.Option(
        None, help="Binary / multi-label heads: per-label thresholds reaching this precision [default: best F1]."),
    passes: Optional[int] = typer.Option(None, help="Monte Carlo passes T for fitting [default: the model's]."),
    seed: int = typer.Option(0, help="Seed of the fitting runs (the fit is reproducible)."),
    head_output: Optional[str] = typer.Option(None, "--output-name", help="The output to calibrate, for a model with several."),
    feature_layer: Optional[str] = typer.Option(None, help="The tensor the feature distance reads [default: the deepest "
                                                "ReLU output before the first dropout]."),
    settings=None,
):
    """Fit temperature scaling and the UNCERTAIN rule on labelled data and write them into the file."""
    from .calibrate import calibrate_from_cli

    report = calibrate_from_cli(model, output, data, target_accuracy=target_accuracy, target_coverage=target_coverage,
                                conformal=conformal, passes=passes, measure=measure, ood=ood, target_precision=target_precision,
                                output_name=head_output, settings=settings, feature_layer=feature_layer, conformal_method=conformal_method,
                                progress=lambda message: typer.echo(message, err=True))
    typer.echo("\n".join(terminal_safe(line) for line in report.lines()))


@app.command()
@reports_errors
@takes_settings("device", "threads", "max_chunk_mb", "limit", "no_verify", "allow_external_data")
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
    settings=None,
):
    """Pick the K pool inputs most worth labelling next (BALD, BatchBALD, ...), scored with one shared mask set."""
    import numpy as np

    from .acquire.acquisition import acquire_with_session, check_flags, check_session_memory
    from .runtime.input_files import load_inputs

    check_flags(strategy, k, batch_size, num_samples, max_memory_mb, out)
    session = _session(model, settings)
    plan = session.resolve(passes, "shared", mask_seed, flags=True)
    names, x = load_inputs(pool, session.info, limits=settings.limits)
    if not names:
        raise InputError("the pool is empty")
    check_session_memory(session, len(names), strategy, plan.passes, output, num_samples, max_memory_mb)  # before any run
    with typer.progressbar(length=len(names), label="Scoring the pool", file=sys.stderr) as bar:
        chosen = acquire_with_session(session, x, k, strategy, passes=plan.passes, mask_seed=plan.mask_seed,
                                      output=output, batch_size=batch_size, ids=names, rng=np.random.default_rng(seed),
                                      num_samples=num_samples, max_memory_mb=max_memory_mb,
                                      progress=lambda done, total: bar.update(done - bar.pos))
    if out is not None:
        chosen.write(out)
    typer.echo(f"model {terminal_safe(shown_path(model))}  pool {len(names)}  strategy {strategy}  passes {chosen.passes}  "
               f"masks shared (seed {chosen.mask_seed})")
    typer.echo("\n".join(chosen.table_lines()))


@app.command()
@reports_errors
@takes_settings("device", "max_chunk_mb", "limit", "no_verify")
def score(
    inputs: List[str] = typer.Argument(..., help="Images, folders and globs of them, .npy / .npz arrays (a row per "
                                                 "input), Parquet or CSV lists of image paths (column 'path')."),
    out: Path = typer.Option(..., help="The Parquet output: a file (local engine) or a folder of files (ray)."),
    model: Path = typer.Option(DEFAULT_MODEL, help="The mcdrop ONNX file."),
    engine: str = typer.Option("local", help="local: this process, every core; ray: Ray Data actors."),
    address: Optional[str] = typer.Option(None, help="ray: the cluster to join [default: start Ray on this machine]."),
    passes: Optional[str] = PASSES_OPTION, max_passes: Optional[int] = MAX_PASSES_OPTION, min_passes: Optional[int] = MIN_PASSES_OPTION,
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
    settings=None,
):
    """Score many inputs into Parquet: a row per input with label, mean, variance, every measure and UNCERTAIN."""
    from .runtime.run_plan import check_flags
    from .score.checkpoint import checkpoint_folder
    from .score.job import check_job_flags, run_job, score_options, summary_line
    from .score.input_plan import plan_inputs

    check_job_flags(engine, address, workers, batch_size, gpus_per_worker, on_error, out, resume, overwrite)
    passes = check_flags(passes, max_passes, min_passes, settings.limits)
    # Local: one session with --workers threads; ray: --workers actors of one thread each.
    session = _session(model, settings.replace(threads=workers if engine == "local" else 1))
    wanted = [name.strip() for item in measures for name in item.split(",") if name.strip()]
    options = score_options(session, passes, mask_seed, output, wanted, keep_samples, uncertain_if, on_error,
                            resume_from=checkpoint_folder(out) if resume else None, max_passes=max_passes, min_passes=min_passes)
    plan = plan_inputs(inputs, session.info, limits=session.limits, allow_paths_outside=allow_paths_outside)
    try:
        with typer.progressbar(length=plan.total, label="Scoring", file=sys.stderr, hidden=engine != "local") as bar:
            summary = run_job(engine, session, plan, out, options, model, batch_size=batch_size, workers=workers,
                              gpus_per_worker=gpus_per_worker, resume=resume, address=address, overwrite=overwrite,
                              progress=lambda done, total: bar.update(done - bar.pos))
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C, or SIGTERM (main turns it into SystemExit)
        from .score.output import stopped_message

        typer.echo(f"error: {terminal_safe(stopped_message(out, plan.total, overwrite))}", err=True)
        code = 130 if isinstance(stop, KeyboardInterrupt) else stop.code if isinstance(stop.code, int) else 1
        raise typer.Exit(code) from None
    typer.echo(terminal_safe(summary_line(summary, engine)))


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
