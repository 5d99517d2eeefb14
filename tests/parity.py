"""The one parity helper every export test uses.

    model, kwargs = zoo.multi_branch()
    result = assert_parity(model, tmp_path, **kwargs)

It exports with validation on (deterministic parity <= 1e-5, statistical parity at T=1000 within
5 standard errors with independent and with shared masks, random nodes counted at every
onnxruntime optimisation level), then checks mask-for-mask parity against Keras's own draws, that
a shared mask set gives what its masks fed per input give, and that no two stochastic layers
share a mask.
"""

import json
from dataclasses import dataclass

import numpy as np
import onnx

from mcdrop.export import build_graph, export_model
from mcdrop.export.graph import random_nodes
from mcdrop.export.reference import keras_masked_samples
from mcdrop.runtime.format import mask_sets as masks
from mcdrop.runtime.format.mask_sets import control_feeds, layout_from_metadata
from mcdrop.export.validate import (DETERMINISTIC_ATOL, apply_head, feeds_for, max_abs_diff, ort_session, output_heads, run,
                             validation_inputs)

MASK_PASSES = 3


@dataclass
class ParityResult:
    path: object
    proto: onnx.ModelProto
    metadata: dict
    report: object
    mask_diff: float


def mask_for_mask(model, variant, metadata, x, passes=MASK_PASSES):
    """Feed Keras's own random draws to the masks-as-inputs graph; return max |difference| over
    every output."""
    keras_samples, noise = keras_masked_samples(model, x, passes, selected=metadata.get("mc_layers"))
    outputs = output_heads(metadata)
    keras_samples = keras_samples if len(outputs) > 1 else [keras_samples]
    session = ort_session(variant.SerializeToString())
    feeds = {**feeds_for(x), **control_feeds(passes)}
    feeds.update({f"noise_{i}": r.astype(np.float32) for i, r in enumerate(noise)})
    onnx_samples = session.run([prefix + "samples" for prefix, _ in outputs], feeds)
    diffs = []
    for ours, theirs, (_, head) in zip(onnx_samples, keras_samples, outputs):
        theirs = apply_head(theirs, head)
        assert ours.shape == theirs.shape
        diffs.append(max_abs_diff(ours, theirs))
    return max(diffs)


def shared_set_as_noise(metadata, mask_set, batch):
    """The noise_<i> tensors that give every input of a batch of `batch` the shared set's masks:
    each layer's [T, *per pass] values repeated for every input, in the graph's own layout
    ([T*B, ...], or [count, T*B, features] for a recurrent layer's masks)."""
    layout = layout_from_metadata(metadata, metadata["stochastic_layers"])
    noise = []
    for layer, entry in zip(metadata["stochastic_layers"], layout.entries):
        values = mask_set[:, entry.offset:entry.offset + entry.size].reshape(len(mask_set), *entry.shape)
        if "masks" in layer:  # recurrent: [T, count, *features] -> [count, T*B, *features]
            values = np.repeat(np.swapaxes(values, 0, 1)[:, :, None], batch, axis=2)
            noise.append(values.reshape(values.shape[0], -1, *values.shape[3:]))
        else:
            noise.append(np.repeat(values[:, None], batch, axis=1).reshape(-1, *entry.shape))
    return noise


def shared_mode_difference(variant, metadata, x, passes=MASK_PASSES, seed=5):
    """Max |difference| between the masks-as-inputs graph fed one shared set through `masks` and
    the same masks repeated for every input through noise_<i> (the path Keras's masks take in
    mask_for_mask): the set's layout, broadcast and recurrent transposition, checked."""
    mask_set = masks.draw(layout_from_metadata(metadata, metadata["stochastic_layers"]), seed, 0, passes)
    batch = len(next(iter(feeds_for(x).values())))
    noise = shared_set_as_noise(metadata, mask_set, batch)
    names = [prefix + "samples" for prefix, _ in output_heads(metadata)]
    session = ort_session(variant.SerializeToString())
    shared = {**feeds_for(x), **control_feeds(passes, masks=mask_set)}
    rows_axis = [1 if "masks" in layer else 0 for layer in metadata["stochastic_layers"]]
    shared.update({f"noise_{i}": np.zeros([0 if j == axis else d for j, d in enumerate(r.shape)], np.float32)
                   for i, (r, axis) in enumerate(zip(noise, rows_axis))})
    tiled = {**feeds_for(x), **control_feeds(passes, floats_per_pass=mask_set.shape[1])}
    tiled.update({f"noise_{i}": r for i, r in enumerate(noise)})
    return max(max_abs_diff(a, b) for a, b in zip(session.run(names, shared), session.run(names, tiled)))


def random_node_outputs(proto, x, passes=4):
    """Run the graph with every random node's tensor exposed as an output."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    names = [n.output[0] for n in random_nodes(probe.graph)]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    return run(ort_session(probe.SerializeToString()), x, passes, outputs=names)


def assert_masks_independent(proto, x):
    outs = list(random_node_outputs(proto, x).values())
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            if outs[i].shape == outs[j].shape:
                a, b = outs[i].ravel(), outs[j].ravel()
                assert not np.array_equal(a, b), "two stochastic layers drew the same random tensor"
                if a.size >= 200:
                    assert abs(np.corrcoef(a, b)[0, 1]) < 0.2


def assert_graph_measures_match_numpy(proto, metadata, x, passes=16):
    """The entropies the graph computes equal runtime.measures on the graph's own samples, for
    every output."""
    everything = run(ort_session(proto.SerializeToString()), x, passes)
    for prefix, head in output_heads(metadata):
        _assert_measures(head, {name[len(prefix):]: value for name, value in everything.items()
                                if name.startswith(prefix) and "/" not in name[len(prefix):]})


def _assert_measures(head, out):
    from mcdrop.runtime import measures

    mean, variance = measures.mean_and_variance(out["samples"])
    np.testing.assert_allclose(out["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(out["variance"], variance, atol=1e-6)
    if head in ("softmax", "logits"):
        expected = {
            "predictive_entropy": measures.predictive_entropy(out["samples"]),
            "expected_entropy": measures.expected_entropy(out["samples"]),
            "mutual_information": measures.mutual_information(out["samples"]),
        }
    elif head in ("binary", "multilabel"):
        expected = {
            "predictive_entropy": measures.bernoulli_entropy(mean),
            "expected_entropy": measures.bernoulli_expected_entropy(out["samples"]),
            "mutual_information": measures.bernoulli_mutual_information(out["samples"]),
        }
    else:
        assert "mutual_information" not in out
        return
    for name, value in expected.items():
        np.testing.assert_allclose(out[name], value, atol=2e-5, err_msg=name)


def assert_parity(model, tmp_path, name="model", **export_kwargs):
    source = tmp_path / f"{name}.keras"
    model.save(source)
    path = tmp_path / f"{name}.onnx"
    report = export_model(source, path, seed=0, **export_kwargs)  # validation on: raises on failure
    proto = onnx.load(path)
    metadata = json.loads(proto.metadata_props[0].value)

    _, variant, _, _ = build_graph(
        model, [head for _, head in output_heads(metadata)],
        mc_layers=export_kwargs.get("mc_layers"), seed=0
    )
    x = validation_inputs(model, metadata, count=3, seed=1)
    diff = mask_for_mask(model, variant, metadata, x)
    assert diff <= DETERMINISTIC_ATOL, f"mask-for-mask parity off by {diff:.2e}"
    if metadata["masks"] is not None and metadata["stochastic_layers"]:
        shared = shared_mode_difference(variant, metadata, x)
        assert shared <= DETERMINISTIC_ATOL, f"a shared mask set differs from its masks fed per input by {shared:.2e}"
        # The export's validation compared shared-mask samples with Keras's MC at T=1000, per input.
        assert any(check.name.endswith("(shared masks)") for check in report.checks)
    assert_masks_independent(proto, x)
    assert_graph_measures_match_numpy(proto, metadata, x)
    return ParityResult(path, proto, metadata, report, diff)
