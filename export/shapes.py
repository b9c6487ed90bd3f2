"""Shape arithmetic replaced by constants where the shapes say what it computes.

torch's exporter writes every `view` or `reshape` whose sizes it read off a tensor as a chain of
small operators: Shape, Gather of one dimension, Unsqueeze, Concat, then the Reshape; rotary
embeddings' `x.shape[-1] // 2` as Shape, Gather, Div, Cast, Unsqueeze before a Slice. onnxruntime
runs each of them on every call, on one thread, between the matrix products: about 1000 of the
2000 operators of a 24-layer Dream graph, and a third of a small model's.

`static_shapes` infers every value's shape with onnxruntime's symbolic shape inference (the graph
inputs' dynamic axes as symbols, every other dimension a number or an expression of them), then

- gives each Reshape a constant target: a number where the output dimension is one, 0 (ONNX's "copy
  the input's dimension") where it equals the input's at the same axis, and -1 for at most one other;
- replaces each Gather of a Shape whose picked dimensions are numbers by those numbers (what follows,
  e.g. the Div, onnxruntime folds when it loads the graph);

and drops the operators and initializers nothing reads any more. The inference takes two axes of one
name to be equal (export names its dynamic axes apart; in a cache graph exported before it named the
kept positions P apart from the canvas length L, `static_shapes` renames them first), never merges
two symbols, and where it would have to assume anything more (it logs a warning) or cannot infer a
shape, the graph stays as it is (ShapesUnknown). It also takes every symbol to be at least 1, while
a cache graph's P is 0 on a full pass: the decode tests run such calls through rewritten graphs.

No operator on the model's values changes: run with onnxruntime's basic optimizations the graph
returns the same bits. With its full optimizations onnxruntime may fuse differently once shapes are
known (in one ModernBERT cache graph it fused four more transposed matmuls into FusedMatMul),
which can move the last bits of a product, as any other kernel choice does.
"""

from __future__ import annotations

import numpy as np

WEIGHT_ELEMENTS = 1024  # an initializer this large, of no index type, is a weight: its values are never shapes


class ShapesUnknown(Exception):
    """The graph's shapes could not all be inferred without assumptions (the reason as message)."""


def _inferred_graph(graph_model):
    """graph_model with every value's shape inferred (onnxruntime's SymbolicShapeInference.infer_shapes,
    run step by step: where it stops, that function saves the whole graph, weights included, into the
    working folder). Raises ShapesUnknown where it stops or logs a warning (an assumption it made, e.g.
    "Unable to determine if ... treat as equal")."""
    import logging

    from onnxruntime.tools import symbolic_shape_infer

    logger = logging.getLogger(symbolic_shape_infer.__name__)
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    propagate, level, disabled = logger.propagate, logger.level, logging.root.manager.disable
    try:
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.WARNING)  # its warnings reach the handler whatever the logging setup
        logging.disable(logging.NOTSET)
        inference = symbolic_shape_infer.SymbolicShapeInference(2 ** 31 - 1, False, False, 0)  # no auto-merge
        inference._preprocess(_without_weights(graph_model))
        complete = False
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
    except Exception as error:  # it raises bare Exceptions and AssertionErrors
        raise ShapesUnknown("; ".join([*warnings, repr(error)])) from None
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)
        logging.disable(disabled)
    if warnings or not complete:
        raise ShapesUnknown("; ".join(warnings) or "shapes left unknown")
    return inference.out_mp_


def _without_weights(graph_model):
    """A copy of graph_model whose weights (initializers of WEIGHT_ELEMENTS or more that are not
    int32 / int64) are graph inputs of their type and dimensions: all the inference needs of them
    (it would otherwise read the values of every initializer an Add or Mul takes, and gain nothing:
    a weight's values are never a shape). The weights are never copied: a model's are held once."""
    from onnx import ModelProto, TensorProto, helper

    light = ModelProto()
    _copy_fields(graph_model, light, skip="graph")
    _copy_fields(graph_model.graph, light.graph, skip="initializer")
    inputs = {value.name for value in light.graph.input}
    for tensor in graph_model.graph.initializer:
        if tensor.data_type in (TensorProto.INT32, TensorProto.INT64) or np.prod(tensor.dims) < WEIGHT_ELEMENTS:
            light.graph.initializer.append(tensor)
        elif tensor.name not in inputs:
            light.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return light


def _copy_fields(source, into, skip: str) -> None:
    """Every field set in the protobuf message source but `skip`, copied into the empty one `into`."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(into, field.name).extend(value)
        elif field.message_type is not None:
            getattr(into, field.name).CopyFrom(value)
        else:
            setattr(into, field.name, value)


def _dimensions(inferred) -> dict:
    """{value name: its dimensions, each an int or a symbol / expression string, None if unknown}."""
    graph = inferred.graph
    dims = {}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            dims[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in tensor.shape.dim]
    return dims


def _int_constants(graph) -> dict:
    """{name: array} of the int64 initializers (not graph inputs, which a caller may override) and
    Constant outputs of rank 0 or 1."""
    from onnx import TensorProto, numpy_helper

    inputs = {value.name for value in graph.input}
    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer
             if t.data_type == TensorProto.INT64 and len(t.dims) <= 1 and t.name not in inputs}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            if tensor.data_type == TensorProto.INT64 and len(tensor.dims) <= 1:
                found[node.output[0]] = numpy_helper.to_array(tensor)
    return found


def reshape_target(in_dims: list, out_dims: list) -> list | None:
    """A constant Reshape target for out_dims from in_dims (module docstring), None when there is none:
    an unknown output dimension, or more than one left for -1."""
    if None in out_dims:
        return None
    target = []
    for axis, dim in enumerate(out_dims):
        if isinstance(dim, int) and dim > 0:
            target.append(dim)
        elif axis < len(in_dims) and in_dims[axis] is not None and in_dims[axis] == dim:
            target.append(0)
        else:
            target.append(-1)
    return target if target.count(-1) <= 1 else None


def _constant_targets(graph, dims: dict, constants: dict) -> None:
    """Point every Reshape whose target is computed (and whose allowzero is off: 0 must mean "copy")
    at a constant one, a new initializer, where reshape_target finds it."""
    from onnx import numpy_helper

    from .merge import _unique

    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] in constants or any(
                a.name == "allowzero" and a.i for a in node.attribute):
            continue
        target = reshape_target(dims.get(node.input[0]) or [None], dims.get(node.output[0]) or [None])
        if target is not None:
            name = _unique(graph, node.output[0], "_target")
            graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))  # (rank,)
            node.input[1] = name


def _fold_static_dimensions(graph, dims: dict, constants: dict) -> tuple[set, list]:
    """Gathers of a Shape (the whole shape: no start / end) that pick dimensions which are numbers:
    (their outputs' names, the nodes to drop; initializers of their values, under those names)."""
    from onnx import numpy_helper

    producer = {name: node for node in graph.node for name in node.output}
    folded, added = set(), []
    for node in graph.node:
        shape = producer.get(node.input[0]) if node.op_type == "Gather" else None
        if shape is None or shape.op_type != "Shape" or shape.attribute or node.input[1] not in constants:
            continue
        source, index = dims.get(shape.input[0]), constants[node.input[1]]  # index () or (n,)
        if source is None or not all(-len(source) <= int(i) < len(source) for i in index.reshape(-1)):
            continue
        picked = [source[int(i)] for i in index.reshape(-1)]
        if all(isinstance(d, int) and d > 0 for d in picked):
            value = np.array(picked, np.int64).reshape(index.shape)  # index's shape: () or (n,)
            added.append(numpy_helper.from_array(value, node.output[0]))
            folded.add(node.output[0])
    return folded, added


def _name_kept_axis_apart(graph) -> None:
    """A cache graph's kept keys and values (past_keys_i, past_values_i: (B, g, P, d)) with their P axis
    named "kept" where an earlier export named it as the attention mask's L ("length")."""
    from tie_lite import CACHE_INPUTS

    inputs = {value.name: value for value in graph.input}
    mask = inputs.get(CACHE_INPUTS[2])
    if mask is None or len(mask.type.tensor_type.shape.dim) < 2:
        return
    length = mask.type.tensor_type.shape.dim[1].dim_param
    for name, value in inputs.items():
        dims = value.type.tensor_type.shape.dim
        if name.startswith(("past_keys", "past_values")) and len(dims) == 4 and length and (
                dims[2].dim_param == length):
            dims[2].dim_param = "kept"


def static_shapes(graph_model) -> int:
    """Rewrite graph_model (a ModelProto, weights loaded) in place as the module docstring says.
    Returns the nodes it removed (Constant nodes among them). Raises ShapesUnknown, the graph untouched
    but for that axis name, where the shapes cannot all be inferred."""
    graph = graph_model.graph
    _name_kept_axis_apart(graph)
    dims, constants = _dimensions(_inferred_graph(graph_model)), _int_constants(graph)
    folded, values = _fold_static_dimensions(graph, dims, constants)
    _constant_targets(graph, dims, constants)
    kept = [node for node in graph.node if node.op_type != "Gather" or node.output[0] not in folded]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(values)
    return len(folded) + _drop_unread(graph)


def _drop_unread(graph) -> int:
    """Remove the nodes none of whose outputs is read (by a later node, a subgraph or as a graph
    output), in one pass from the end (graph order is topological), then the initializers nothing reads
    (but those that are graph inputs). Returns the nodes removed."""
    from .merge import _subgraph_inputs

    before = len(graph.node)
    needed = {output.name for output in graph.output} | _subgraph_inputs(graph)
    alive = []
    for node in reversed(list(graph.node)):
        if any(name in needed for name in node.output):
            alive.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(alive))
    needed |= {value.name for value in graph.input}
    unread = [t for t in graph.initializer if t.name not in needed]
    for tensor in unread:
        graph.initializer.remove(tensor)
    return before - len(alive)


def static_shapes_file(path) -> int:
    """static_shapes on the graph saved at `path`, written back (export/merge.py's _rewrite)."""
    from .merge import _rewrite

    return _rewrite(path, static_shapes)


def main(argv=None) -> int:
    """python -m export.shapes FOLDER...: static_shapes on the graphs of exports made before export did it."""
    import argparse
    import sys
    from pathlib import Path

    from google.protobuf.message import DecodeError
    from onnx.checker import ValidationError

    import tie_lite

    from . import MODEL_GRAPH

    parser = argparse.ArgumentParser(prog="python -m export.shapes", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("folders", nargs="+", type=Path, help="export folders (model.onnx, and cache.onnx if any)")
    args = parser.parse_args(argv)
    missing = [folder for folder in args.folders if not (folder / MODEL_GRAPH).is_file()]
    if missing:
        print(f"error: {missing[0]} holds no {MODEL_GRAPH}", file=sys.stderr)
        return 2
    for folder in args.folders:
        for path in (folder / name for name in (MODEL_GRAPH, tie_lite.CACHE_GRAPH)):
            if not path.is_file():
                continue
            try:
                if path.stat().st_size == 0:
                    raise OSError(0, "an empty file, not an ONNX graph")
                print(f"{path}: {static_shapes_file(path)} nodes removed")
            except ShapesUnknown as reason:
                print(f"{path}: left as it is ({reason})")
            except (OSError, DecodeError, ValidationError) as exc:  # unreadable, not ONNX, data missing, not writable
                print(f"error: {path}: cannot rewrite it: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
                return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
