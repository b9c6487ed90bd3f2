"""Shape arithmetic replaced by constants where the shapes say what it computes.

torch's exporter writes every `view` or `reshape` whose sizes it read off a tensor as a chain of
small operators: Shape, Gather of one dimension, Unsqueeze, Concat, then the Reshape; rotary
embeddings' `x.shape[-1] // 2` as Shape, Gather, Div, Cast, Unsqueeze before a Slice. onnxruntime
runs each of them on every call, on one thread, between the matrix products: about 1000 of the
2000 operators of a 24-layer Dream graph, and most of the operators of a small model's.

`static_shapes` infers every value's shape with onnxruntime's symbolic shape inference (the graph
inputs' dynamic axes as symbols, every other dimension a number or an expression of them; symbols
are never merged, so two dimensions count as equal only where the graph proves it), then

- gives each Reshape a constant target: a number where the output dimension is one, 0 (ONNX's "copy
  the input's dimension") where it equals the input's at the same axis, and -1 for at most one other;
- replaces each Gather of a Shape whose picked dimensions are numbers by those numbers (what follows,
  e.g. the Div, onnxruntime folds when it loads the graph);

and drops the operators and initializers nothing reads any more. No arithmetic on the model's values
changes: the graph computes the same numbers, bit for bit.
"""

from __future__ import annotations

import numpy as np


class ShapesUnknown(Exception):
    """Symbolic shape inference could not infer every shape of the graph (the reason as message)."""


def _symbolic_dims(graph_model) -> dict:
    """{value name: its dimensions, each an int or a symbol / expression string (None: unknown)}.
    Raises ShapesUnknown where the inference stops (e.g. a dimension it would have to merge with
    another: BERT's position ids sliced to min(maximum length, L) and added at L)."""
    import logging
    import os
    import tempfile

    from onnxruntime.tools import symbolic_shape_infer

    logger = logging.getLogger(symbolic_shape_infer.__name__)  # it logs why it stops, as warnings
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # where it stops, it saves the graph into the working folder
        try:
            inferred = symbolic_shape_infer.SymbolicShapeInference.infer_shapes(graph_model, auto_merge=False)
        except Exception as error:  # it raises a bare Exception
            raise ShapesUnknown("; ".join([*warnings, str(error)])) from None
        finally:
            os.chdir(here)
            logger.removeHandler(handler)
            logger.propagate = propagate
    graph = inferred.graph
    dims = {}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            dims[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in tensor.shape.dim]
    return dims


def _int_constants(graph) -> dict:
    """{name: array} of the int64 initializers and Constant outputs of rank 0 or 1."""
    from onnx import TensorProto, numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer
             if t.data_type == TensorProto.INT64 and len(t.dims) <= 1}
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


def _allows_zero(node) -> bool:
    return any(a.name == "allowzero" and a.i for a in node.attribute)


def static_shapes(graph_model) -> int:
    """Rewrite graph_model (a ModelProto, weights loaded) in place as the module docstring says.
    Returns the operators it removed."""
    from onnx import numpy_helper

    graph = graph_model.graph
    dims, constants = _symbolic_dims(graph_model), _int_constants(graph)
    producer = {name: node for node in graph.node for name in node.output}
    folded, added = set(), []
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[1] not in constants and not _allows_zero(node):
            target = reshape_target(dims.get(node.input[0]) or [None], dims.get(node.output[0]) or [None])
            if target is not None:
                name = node.output[0] + "_target"
                added.append(numpy_helper.from_array(np.array(target, np.int64), name))
                node.input[1] = name
        elif node.op_type == "Gather" and node.input[1] in constants:
            shape = producer.get(node.input[0])
            if shape is None or shape.op_type != "Shape" or shape.attribute:  # Shape's start / end: left alone
                continue
            source, index = dims.get(shape.input[0]), constants[node.input[1]]
            picked = None if source is None else [source[int(i)] for i in index.reshape(-1)]
            if picked and all(isinstance(d, int) and d > 0 for d in picked):
                added.append(numpy_helper.from_array(np.array(picked, np.int64).reshape(index.shape),
                                                     node.output[0]))
                folded.add(id(node))
    kept = [node for node in graph.node if id(node) not in folded]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(added)
    return len(folded) + _drop_unread(graph)


def _drop_unread(graph) -> int:
    """Remove the nodes none of whose outputs is read (by a node, a subgraph or as a graph output),
    repeatedly, then the initializers nothing reads. Returns the nodes removed."""
    from .merge import _subgraph_inputs

    before = len(graph.node)
    needed = {output.name for output in graph.output} | _subgraph_inputs(graph)
    alive = []
    for node in reversed(list(graph.node)):  # graph order is topological: readers come after
        if any(name in needed for name in node.output):
            alive.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(alive))
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

    import tie_lite

    from . import MODEL_GRAPH

    parser = argparse.ArgumentParser(prog="python -m export.shapes", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("folders", nargs="+", type=Path, help="export folders (model.onnx, and cache.onnx if any)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        graphs = [folder / name for name in (MODEL_GRAPH, tie_lite.CACHE_GRAPH) if (folder / name).is_file()]
        if not graphs:
            print(f"error: {folder} holds no {MODEL_GRAPH}", file=sys.stderr)
            return 2
        for path in graphs:
            try:
                print(f"{path}: {static_shapes_file(path)} operators removed")
            except ShapesUnknown as reason:
                print(f"{path}: left as it is ({reason})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
