"""Sibling matmuls merged: one MatMul by the weights side by side, then a Split.

A Llama-layout layer multiplies the same normed hidden states by three weights (query, key,
value) and then by two more (the MLP's gate and up); BERT's does the first. onnxruntime runs
each as a matmul of its own, the key and value ones only 128 columns wide at Qwen2.5-0.5B's
shape. `merge_sibling_matmuls` rewrites every such group as one MatMul by the weights
concatenated along the output axis, whose output a Split cuts back into the group's outputs.
Every output element is the same dot product over the same K inputs as before, so the values
are the same up to the summation order the kernel picks for a wider matrix (float32 rounding).

Export merges the float32 graphs only, where it measured faster: on a random Dream of
Qwen2.5-0.5B's shapes at L = 96, 2 threads, a decode took 0.96-0.97x the time with the same text
(bench/README.md, merged sibling matmuls). `--int8` quantizes each weight with one scale for the
whole tensor, which a merged weight would change; `--int4` quantizes by blocks of K per output
column, which merging leaves as it is, but its merged 4-bit matmuls were no faster (1.02x the
time) and peaked 27 MB higher. Both keep their matmuls apart.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def sibling_groups(graph) -> list[list]:
    """MatMul nodes of `graph` (a GraphProto) that multiply the same input by 2-D float32
    initializers of the same row count, each initializer read by that node only; groups of two
    or more, in graph order."""
    from onnx import TensorProto

    weights = {t.name: t for t in graph.initializer
               if len(t.dims) == 2 and t.data_type == TensorProto.FLOAT}
    readers = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            readers[name] += 1
    groups = defaultdict(list)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and readers[node.input[1]] == 1:
            groups[node.input[0], weights[node.input[1]].dims[0]].append(node)
    return [nodes for nodes in groups.values() if len(nodes) > 1]


def merge_sibling_matmuls(graph_model) -> int:
    """Merge each group of sibling_groups in a loaded graph (weights in memory), in place.
    Returns how many MatMul nodes were removed."""
    from onnx import helper, numpy_helper

    graph = graph_model.graph
    opset = next(o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx"))
    initializers = {t.name: t for t in graph.initializer}
    removed = 0
    for nodes in sibling_groups(graph):
        first = nodes[0]
        parts = [numpy_helper.to_array(initializers[n.input[1]]) for n in nodes]  # (K, N_i) each
        merged_name = f"{first.input[1]}_merged"
        graph.initializer.append(numpy_helper.from_array(np.concatenate(parts, axis=1), merged_name))  # (K, sum N_i)
        widths = [part.shape[1] for part in parts]
        product = f"{first.output[0]}_merged"
        split_outputs = [n.output[0] for n in nodes]
        if opset >= 13:
            sizes = f"{merged_name}_widths"
            graph.initializer.append(numpy_helper.from_array(np.array(widths, np.int64), sizes))
            split = helper.make_node("Split", [product, sizes], split_outputs, name=f"{first.name}_split", axis=-1)
        else:
            split = helper.make_node("Split", [product], split_outputs, name=f"{first.name}_split", axis=-1,
                                     split=widths)
        matmul = helper.make_node("MatMul", [first.input[0], merged_name], [product], name=first.name)
        position = list(graph.node).index(first)
        for node in nodes:
            graph.node.remove(node)
            graph.initializer.remove(initializers[node.input[1]])
        graph.node.insert(position, split)
        graph.node.insert(position, matmul)
        removed += len(nodes) - 1
    return removed


def merge_graph_file(path) -> int:
    """merge_sibling_matmuls on the graph saved at `path`, written back in its place: with its weights
    in one data file beside it if it kept them outside before or they no longer fit in one file,
    whole otherwise; the old data files go. Returns how many MatMul nodes were removed."""
    import onnx

    from . import _replace_graph, save_weights_beside, too_large_for_one_file

    graph_model = onnx.load(str(path))  # every weight in memory, wherever the graph keeps them
    removed = merge_sibling_matmuls(graph_model)

    def write(scratch, dest, external: bool) -> None:
        if external or too_large_for_one_file(graph_model):
            save_weights_beside(graph_model, dest)
        else:
            onnx.save(graph_model, str(dest))

    if removed:
        _replace_graph(path, write)
    return removed
