"""What the model's output means: read from its last layer, or given with --head."""

from __future__ import annotations

from runtime.errors import ExportError

HEAD_CHOICES = ("auto", "softmax", "sigmoid", "logits", "regression")


def _activation_name(layer) -> str | None:
    name = type(layer).__name__
    if name == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", str(activation))


def last_layer(model):
    """The layer that produces the model's (single) output, looking inside nested models."""
    from .trace import sub_model

    graph = sub_model(model)
    if graph is None:
        return model
    layer = graph.outputs[0]._keras_history.operation
    return last_layer(layer) if sub_model(layer) is not None else layer


def resolve_head(model, requested: str = "auto") -> str:
    """Return one of softmax, logits, binary, multilabel, regression."""
    if requested not in HEAD_CHOICES:
        raise ExportError(f"unknown head '{requested}'; choose one of {', '.join(HEAD_CHOICES)}")
    units = model.outputs[0].shape[-1]
    layer = last_layer(model)
    activation = _activation_name(layer)

    if requested == "auto":
        if activation == "softmax":
            requested = "softmax"
        elif activation == "sigmoid":
            requested = "sigmoid"
        else:
            shown = activation or "no activation"
            raise ExportError(
                f"cannot tell what the output of '{layer.name}' ({shown}) means: pass --head logits "
                "(softmax is applied to each pass) or --head regression (raw values)"
            )
    if requested == "softmax" and units == 1:
        raise ExportError(
            "the output is a softmax over a single unit, which is 1.0 for every input; "
            "use a sigmoid unit for a binary model (or a softmax over 2 units)"
        )
    if requested == "sigmoid":
        return "binary" if units == 1 else "multilabel"
    return requested
