"""Sibling matmuls merged: one MatMul by the weights side by side, then a Split.

A Llama-layout layer multiplies the same normed hidden states by three weights (query, key,
value) and then by two more (the MLP's gate and up); BERT's does the first. onnxruntime runs
each as a matmul of its own, the key and value ones only 128 columns wide at Qwen2.5-0.5B's
shape. `merge_sibling_matmuls` rewrites every such group as one MatMul by the weights
concatenated along the output axis, whose output a Split cuts back into the group's outputs.
Every output element is the same dot product over the same K inputs as before, so the values
are the same up to the summation order the kernel picks for a wider matrix (float32 rounding).

Export merges the float32 graphs only: on a random Dream of Qwen2.5-0.5B's shapes at L = 96,
2 threads, an exact decode took 0.96-0.97x the time with the same text, a decode with the dual
K/V cache 0.97x, one with the prefix cache 1.02x (no gain within the noise; bench/README.md,
merged sibling matmuls). `--int8` quantizes each weight with one scale for the whole tensor,
which a merged weight would change; `--int4` quantizes by blocks of K per output column, which
merging leaves as it is, but merged 4-bit matmuls were no faster in a trial on that model, with
a higher peak RSS. Both keep their matmuls apart: export merges only float32 graphs, and
`quantize_int8` / `quantize_int4`, given a merged float32 graph (a float32 export's, as the bench
scripts and train/export_defaults.py quantize), split its merged matmuls back first
(`split_merged_matmuls`, original names restored from the merged MatMul's doc_string), so that
they write what --int8 and --int4 write.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np


MERGED = "_merged"  # ends the name of a merged weight (and of its MatMul, and its product)
RECORD = "tie-lite merged: "  # starts a merged MatMul's doc_string, then JSON [[node name, weight name], ...]


def _subgraph_inputs(graph) -> set:
    """Every name read by a node of a subgraph (If, Loop, Scan bodies) of `graph`, at any depth."""
    names = set()
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                names |= {name for inner in body.node for name in inner.input} | _subgraph_inputs(body)
    return names


def _readers(graph) -> dict:
    """{value name: the nodes of `graph` that read it, in graph order}."""
    readers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    return readers


def sibling_groups(graph) -> list[list]:
    """MatMul nodes of `graph` (a GraphProto) that multiply the same input by 2-D float32
    initializers of the same row count, each initializer read by that node only (not by another
    node, a subgraph, or as a graph input or output); groups of two or more, in graph order."""
    from onnx import TensorProto

    readers = _readers(graph)
    shared = _subgraph_inputs(graph) | {i.name for i in graph.input} | {o.name for o in graph.output}
    weights = {t.name: t for t in graph.initializer if len(t.dims) == 2 and t.data_type == TensorProto.FLOAT
               and len(readers[t.name]) == 1 and t.name not in shared}
    groups = defaultdict(list)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            groups[node.input[0], weights[node.input[1]].dims[0]].append(node)
    return [nodes for nodes in groups.values() if len(nodes) > 1]


def _unique(graph, stem: str, suffix: str = "") -> str:
    """stem + suffix, or stem_2 + suffix, stem_3 + suffix, ...: a name no initializer, node, value,
    input or output of `graph` has."""
    taken = ({t.name for t in graph.initializer} | {n.name for n in graph.node}
             | {name for n in graph.node for name in [*n.input, *n.output]} | {i.name for i in graph.input}
             | {o.name for o in graph.output})
    name, count = stem + suffix, 1
    while name in taken:
        count += 1
        name = f"{stem}_{count}{suffix}"
    return name


def _split_node(graph, opset: int, product: str, outputs: list, widths: list, name: str):
    """A Split of `product` along its last axis into `outputs` of `widths` columns (the sizes an
    initializer from opset 13, an attribute before); returns (node, initializers it needs)."""
    from onnx import helper, numpy_helper

    if opset < 13:
        return helper.make_node("Split", [product], outputs, name=name, axis=-1, split=widths), []
    sizes = numpy_helper.from_array(np.array(widths, np.int64), _unique(graph, product, "_widths"))
    return helper.make_node("Split", [product, sizes.name], outputs, name=name, axis=-1), [sizes]


def _merge_group(graph, opset: int, nodes: list, initializers: dict) -> None:
    """One MatMul by the group's weights side by side and a Split, in place of `nodes`, at the
    first one's position (every node of the group reads the same input, so it is ready there)."""
    from onnx import helper, numpy_helper

    first = nodes[0]
    parts = [numpy_helper.to_array(initializers[n.input[1]]) for n in nodes]  # (K, N_i) each
    merged = np.concatenate(parts, axis=1)  # (K, sum N_i)
    weight = numpy_helper.from_array(merged, _unique(graph, first.input[1], MERGED))
    product = _unique(graph, first.output[0], MERGED)
    matmul = helper.make_node("MatMul", [first.input[0], weight.name], [product],
                              name=_unique(graph, first.name, MERGED),
                              doc_string=RECORD + json.dumps([[n.name, n.input[1]] for n in nodes]))
    split, sizes = _split_node(graph, opset, product, [n.output[0] for n in nodes], [p.shape[1] for p in parts],
                               _unique(graph, first.name, MERGED + "_split"))
    position = list(graph.node).index(first)
    for node in nodes:
        graph.node.remove(node)
        graph.initializer.remove(initializers[node.input[1]])
    graph.initializer.extend([weight, *sizes])
    graph.node.insert(position, split)
    graph.node.insert(position, matmul)


def merge_sibling_matmuls(graph_model) -> int:
    """Merge each group of sibling_groups in a loaded graph (weights in memory), in place.
    Returns how many MatMul nodes were removed."""
    from . import _opset

    graph, opset = graph_model.graph, _opset(graph_model)
    initializers = {t.name: t for t in graph.initializer}
    groups = sibling_groups(graph)
    for nodes in groups:
        _merge_group(graph, opset, nodes, initializers)
    return sum(len(nodes) - 1 for nodes in groups)


def _record(matmul) -> list | None:
    """The [[node name, weight name], ...] a merged MatMul's doc_string records; None for any other node."""
    if matmul.op_type != "MatMul" or not matmul.doc_string.startswith(RECORD):
        return None
    return json.loads(matmul.doc_string[len(RECORD):])


def merged_matmuls(graph) -> list:
    """(MatMul, Split) pairs that merge_sibling_matmuls wrote into `graph` (a GraphProto): a MatMul
    carrying its record whose product only a Split with one output per merged matmul reads."""
    readers = _readers(graph)
    pairs = []
    for node in graph.node:
        record, users = _record(node), readers[node.output[0]]
        if record and len(users) == 1 and users[0].op_type == "Split" and len(users[0].output) == len(record):
            pairs.append((node, users[0]))
    return pairs


def split_merged_matmuls(graph_model) -> int:
    """Undo merge_sibling_matmuls in a loaded graph (weights in memory), in place: each merged
    MatMul and its Split become one MatMul per output again, by the weight's column slices. What
    --int8 and --int4 quantize (a merged weight would get another int8 scale). Returns how many
    MatMul nodes were added."""
    from onnx import helper, numpy_helper

    graph = graph_model.graph
    initializers = {t.name: t for t in graph.initializer}
    pairs = merged_matmuls(graph)
    for matmul, split in pairs:
        weight = numpy_helper.to_array(initializers[matmul.input[1]])  # (K, sum N_i)
        sizes = [initializers[split.input[1]]] if len(split.input) > 1 else []
        if sizes:
            widths = numpy_helper.to_array(sizes[0]).tolist()
        else:
            widths = next(list(a.ints) for a in split.attribute if a.name == "split")
        edges = np.cumsum([0, *widths])
        if edges[-1] != weight.shape[1]:
            raise ValueError(f"merged MatMul {matmul.name!r}: its Split's widths {widths} do not add up to "
                             f"its weight's {weight.shape[1]} columns")
        position = list(graph.node).index(matmul)
        graph.node.remove(matmul)
        graph.node.remove(split)
        for tensor in [initializers[matmul.input[1]], *sizes]:
            graph.initializer.remove(tensor)
        for i, (name, weight_name) in reversed(list(enumerate(_record(matmul)))):  # the original names
            part = numpy_helper.from_array(np.ascontiguousarray(weight[:, edges[i]:edges[i + 1]]),
                                           _unique(graph, weight_name))  # (K, N_i)
            graph.initializer.append(part)
            graph.node.insert(position, helper.make_node("MatMul", [matmul.input[0], part.name], [split.output[i]],
                                                         name=_unique(graph, name)))
    return sum(len(split.output) - 1 for _, split in pairs)


def _rewrite(path, transform) -> int:
    """transform(loaded graph) on the graph saved at `path` when it returns nonzero, written back
    in its place: with its weights in one data file beside it if it kept them outside before or
    they no longer fit in one file, whole otherwise; the old data files go. Returns transform's
    count. The weights are all in memory meanwhile (as the K/V-cache export has them)."""
    import onnx

    from . import _replace_graph, save_weights_beside, too_large_for_one_file

    graph_model = onnx.load(str(path))  # every weight in memory, wherever the graph keeps them
    count = transform(graph_model)

    def write(scratch, dest, external: bool) -> None:
        if external or too_large_for_one_file(graph_model):
            save_weights_beside(graph_model, dest)
        else:
            onnx.save(graph_model, str(dest))

    if count:
        _replace_graph(path, write)
    return count


def merge_graph_file(path) -> int:
    """merge_sibling_matmuls on the graph saved at `path` (_rewrite). Returns the MatMuls removed."""
    return _rewrite(path, merge_sibling_matmuls)


def split_graph_file(path) -> int:
    """split_merged_matmuls on the graph saved at `path`, read first without its weights to see
    whether it has any (_rewrite). Returns the MatMuls added."""
    import onnx

    if not merged_matmuls(onnx.load(str(path), load_external_data=False).graph):
        return 0
    return _rewrite(path, split_merged_matmuls)
