"""What the model's output means: read from its last layer, or given with --head."""

from __future__ import annotations

from ..runtime.errors import ExportError

HEAD_CHOICES = ("auto", "softmax", "sigmoid", "logits", "regression")


def _activation_name(layer) -> str | None:
    name = type(layer).__name__
    if name == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", str(activation))


def last_layer(model, index=0):
    """The layer that produces the model's output `index`, looking inside nested models."""
    from .trace import sub_model

    graph = sub_model(model)
    if graph is None:
        return model
    history = graph.outputs[index]._keras_history
    layer = history.operation
    return last_layer(layer, history.tensor_index) if sub_model(layer) is not None else layer


def resolve_heads(model, requested="auto") -> list:
    """One head per model output: `requested` is one head for all, a dict by output name, or
    "NAME=HEAD,NAME=HEAD" (outputs left out: auto)."""
    from .signature import output_names, per_output

    names = output_names(model)
    wanted = per_output(requested, names, "head", default="auto")
    return [resolve_head(model, wanted[name], i, name if len(names) > 1 else None) for i, name in enumerate(names)]


def resolve_head(model, requested: str = "auto", index: int = 0, output: str | None = None) -> str:
    """Return one of softmax, logits, binary, multilabel, regression for output `index`."""
    if requested not in HEAD_CHOICES:
        raise ExportError(f"unknown head '{requested}'; choose one of {', '.join(HEAD_CHOICES)}")
    units = model.outputs[index].shape[-1]
    layer = last_layer(model, index)
    activation = _activation_name(layer)
    flag = f"--head {output}=" if output else "--head "

    if requested == "auto":
        if activation == "softmax":
            requested = "softmax"
        elif activation == "sigmoid":
            requested = "sigmoid"
        else:
            shown = activation or "no activation"
            raise ExportError(
                f"cannot tell what the output of '{layer.name}' ({shown}) means: pass {flag}logits "
                f"(softmax is applied to each pass) or {flag}regression (raw values)"
            )
    if requested == "softmax" and units == 1:
        raise ExportError(
            f"the output{f' {output}' if output else ''} is a softmax over a single unit, which is 1.0 for "
            "every input; use a sigmoid unit for a binary model (or a softmax over 2 units)"
        )
    if requested == "sigmoid":
        return "binary" if units == 1 else "multilabel"
    return requested
