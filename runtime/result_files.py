"""infer's results as the CLI shows and writes them, for Python users too: the JSON document,
the .json / .npz / .csv files (written whole or not at all) and the table.

    from mcdrop.runtime.result_files import write_results
    write_results("results.csv", session.predict(x), names=["a.png", "b.png"])
"""

import csv
import io
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .prediction import MODEL_WIDE, Prediction
from .safe_files import atomic_writer, check_writable_target, csv_safe_cell, terminal_safe, valid_text

OUT_FORMATS = (".json", ".npz", ".csv")
# What infer does with an input it cannot read: report it (all, then exit 2), skip it (a warning), stop.
ON_ERROR = ("report", "skip", "stop")

Predicted = Union[Prediction, Dict[str, Prediction]]


def by_output(predicted: Predicted) -> Dict[Optional[str], Prediction]:
    """{output name: Prediction}; a one-output model's results keep their flat form (key None)."""
    return predicted if isinstance(predicted, dict) else {None: predicted}


def check_infer_flags(out: Optional[Path], inputs: Sequence[str], top_k: int, threshold: Optional[float],
                      on_error: str) -> None:
    """`cli.py infer`'s flags that need no model, checked before any work (errors name the flags)."""
    if out is not None:
        check_out_path(out, inputs)
    if top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {top_k}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise InputError(f"--threshold must lie in [0, 1], got {threshold}")
    if on_error not in ON_ERROR:
        raise InputError(f"--on-error {on_error!r}: choose one of {', '.join(ON_ERROR)}")


def check_out_path(out: Path, inputs: Sequence[str] = ()) -> None:
    """Refuse, before any work, an --out that names no known format, is one of the inputs, or cannot
    be written safely (a link, a folder, a missing folder)."""
    if out.suffix.lower() not in OUT_FORMATS:
        problem = "is a folder" if out.is_dir() else f"unknown format {out.suffix or '(none)'!r}"
        raise InputError(f"--out {out}: {problem}; give a file name ending in {', '.join(OUT_FORMATS)}")
    if any(same_file(out, item) for item in inputs):
        raise InputError(f"--out {out}: is one of the inputs; writing the results there would replace it")
    check_writable_target(out)


def same_file(path: Path, other: str) -> bool:
    try:
        return os.path.samefile(path, other)
    except (OSError, ValueError):  # either is missing (a glob, a new --out): not the same file
        return False


def results_document(predicted: Predicted, names: Sequence[str], model: Optional[str] = None,
                     provider: Optional[str] = None, seed: Optional[int] = None,
                     failures: Sequence[Tuple[str, str]] = ()) -> dict:
    """infer's JSON document: the run's settings, a prediction per input (per output for a model
    with several) and the inputs that could not be read ((path, message) pairs)."""
    outputs = by_output(predicted)
    first = next(iter(outputs.values()))
    flat = None in outputs
    shown = [valid_text(name) for name in names]
    return {"model": None if model is None else valid_text(model), "provider": provider or first.provider,
            "passes": first.passes, "stochastic": first.stochastic, "seed": seed, "masks": first.masks,
            "mask_seed": first.mask_seed,
            "uncertain_rule": first.uncertain_rule.to_dict() if flat else
            {o: p.uncertain_rule.to_dict() for o, p in outputs.items()},
            "predictions": [{"input": name, **outputs[None].to_dict(i)} if flat else
                            {"input": name, "outputs": {output: p.to_dict(i) for output, p in outputs.items()}}
                            for i, name in enumerate(shown)],
            "failed": [{"input": valid_text(path), "error": valid_text(message)} for path, message in failures]}


def write_results(out, predicted: Predicted, names: Sequence[str], document: Optional[dict] = None) -> None:
    """Write through a temporary file in the same folder, so `out` is never half written. The
    format is the suffix of the path as typed (a link at `out` is refused, never followed). With
    several outputs, .npz arrays and .csv columns carry their output's name: digit/mean, ...
    document: the .json's content (default: results_document(predicted, names))."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUT_FORMATS:
        raise InputError(f"{out}: give a file name ending in {', '.join(OUT_FORMATS)}")
    outputs = by_output(predicted)
    names = [valid_text(name) for name in names]
    with atomic_writer(out) as f:
        if suffix == ".json":
            document = results_document(predicted, names) if document is None else document
            f.write(json.dumps(document, allow_nan=False, indent=2).encode())
        elif suffix == ".npz":
            arrays = {_prefixed(output, key): value for output, prediction in outputs.items()
                      for key, value in prediction.arrays().items()}
            np.savez(f, names=np.array(names), **arrays)
        else:
            f.write(csv_text(outputs, names).encode())


def _prefixed(output: Optional[str], key: str) -> str:
    return key if output is None else f"{output}/{key}"


def csv_text(outputs: Dict[Optional[str], Prediction], names: List[str]) -> str:
    """One row per input: name, then per output uncertain and each per-input value (vectors as
    name_0, name_1, ...; prefixed by the output's name for a model with several), then the
    standard errors of those that have one (mean_se_0, ..., mutual_information_se)."""
    columns = {"input": names}
    for output, prediction in outputs.items():
        columns[_prefixed(output, "uncertain")] = prediction.uncertain.tolist()
        per_input = {"mean": prediction.mean, "variance": prediction.variance, **prediction.measures}
        # Then the standard errors, after every existing column: mean_se, variance_se, <measure>_se.
        per_input.update({f"{name}_se": prediction.standard_errors[name] for name in ("mean", "variance")
                          if name in prediction.standard_errors})
        per_input.update({f"{name}_se": value for name, value in prediction.measure_errors().items()})
        if prediction.auto:  # last: the passes each input ran (a fixed run's are all `passes`)
            per_input["input_passes"] = prediction.input_passes
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


def table_lines(document: dict, predicted: Predicted, names: Sequence[str]) -> List[str]:
    """infer's table, or one per output (under its name and head) for a model with several; every
    name and label escaped for the terminal (safe_files.terminal_safe)."""
    masks = f"  masks shared (seed {document['mask_seed']})" if document.get("masks") == "shared" else \
        "  masks independent" if document.get("masks") else ""
    first = next(iter(by_output(predicted).values()))
    passes = f"auto ({first.input_passes.min()}-{first.input_passes.max()} per input)" if first.auto else document["passes"]
    lines = [f"model {terminal_safe(str(document['model']))}  provider {document['provider']}  "
             f"passes {passes}" + ("" if document["stochastic"] else " (dropout off)") + masks]
    for output, prediction in by_output(predicted).items():
        if output is not None:
            lines.append(f"\noutput {terminal_safe(output)} ({prediction.head})")
        flagged, decided = prediction.uncertain, prediction.decided()  # once, not once per row
        sets = prediction.measures.get("prediction_set_labels", prediction.measures.get("prediction_set"))
        summaries = [{**_summary(prediction, i, decided), **({"passes": str(prediction.input_passes[i])}
                                                             if prediction.auto else {})} for i in range(len(names))]
        header = ["input", *summaries[0]] + (["conformal set"] if sets is not None else []) + [""]
        rows = []
        for i, (name, cells) in enumerate(zip(names, summaries)):
            shown = [] if sets is None else ["{" + ",".join(map(str, sets[i] if isinstance(sets, list) else
                                                                  [j for j, on in enumerate(sets[i]) if on])) + "}"]
            rows.append([*map(terminal_safe, [name, *cells.values(), *shown]), "UNCERTAIN" if flagged[i] else ""])
        widths = [max(len(row[j]) for row in [header, *rows]) for j in range(len(header))]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
        rule = prediction.uncertain_rule
        lines.append(f"UNCERTAIN if {terminal_safe(str(rule))} ({rule.source} rule)")
    return lines


def _summary(prediction: Prediction, i: int, decided) -> dict:
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
