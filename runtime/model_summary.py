"""What a loaded model holds, as `cli.py info` prints it: a JSON-ready document and its lines."""

from dataclasses import asdict
from typing import List

from .format.metadata import describe_preprocessing
from .safe_files import terminal_safe, valid_text


def model_document(session, model: str, check: bool = False) -> dict:
    """Head, labels, shapes, stochastic layers, preprocessing and provenance of `session`'s file
    (`model`: its path as shown); check=True adds the live-randomness checks run here."""
    meta = session.info
    document = {
        "model": valid_text(model), "provider": session.provider, "head": meta.head, "labels": meta.labels,
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
    return document


def model_lines(document: dict, info) -> List[str]:
    """The document as aligned lines, every name from the file escaped for the terminal."""
    lines = [f"model            {terminal_safe(document['model'])}", f"provider         {document['provider']}"]
    for output in info.model_outputs:
        named = "" if len(info.model_outputs) == 1 else f"{terminal_safe(output.name)}: "
        lines.append(f"head             {named}{output.head}")
        lines.append(f"labels           {named}{terminal_safe(', '.join(output.labels)) if output.labels else '-'}")
    lines.append(f"default passes   {info.default_passes}")
    for kind in ("inputs", "outputs"):
        for name, shape in document[kind].items():
            shown = ", ".join("?" if d is None else str(d) for d in shape)
            lines.append(f"{kind[:-1]:<16} {terminal_safe(name)} [{shown}]")
    lines += [terminal_safe(f"stochastic layer {layer.name} ({layer.kind}, rate {layer.rate})")
              for layer in info.stochastic_layers]
    lines.append(f"preprocessing    {describe_preprocessing(document['preprocessing'])}")
    return lines + [f"check            ok  {passed['name']}: {passed['detail']}" for passed in document.get("checks", [])]


