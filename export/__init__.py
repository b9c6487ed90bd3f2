"""Export a Hugging Face masked diffusion LM to the ONNX folder tie-lite runs.

    python -m export SOURCE OUT_DIR [options]

or, from Python, `export_model(source, out_dir, ExportOptions(...))` (export/options.py: one
field per option, each also a flag of the CLI). SOURCE is a Hub id or a local
folder with a transformers masked-LM checkpoint and a fast tokenizer. The folder
written holds `model.onnx` (statistics graph, see export/graph.py),
`tokenizer.json` and `tie_lite.json` (the manifest the runtime reads).
This package is the only part of tie-lite that uses torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import tie_lite

from .options import (DEFAULT_ANSWER_MARKER, DEFAULT_INT4_ACCURACY_LEVEL, DEFAULT_INT4_BLOCK_SIZE,  # noqa: F401
                      DEFAULT_INT8_MIN_AGREEMENT, DEFAULT_TOP_K, EXTERNAL_DATA_MIN_BYTES, ExportOptions, resolve)

__all__ = ["export_model", "ExportOptions", "ExportError", "DEFAULT_TOP_K", "DEFAULT_ANSWER_MARKER"]

MODEL_GRAPH = "model.onnx"          # the statistics graph's file, as tie_lite.Model.load opens it
TOKENIZER_FILE = "tokenizer.json"   # the fast tokenizer's file, as tie_lite.Model.load opens it
INT4_OPSET = 21                     # the first ONNX opset with int4 tensors (an int4 embedding table's)
_SENTINEL = "\u2063TIE_LITE_PROMPT\u2063"  # stands for the user's text while rendering a chat template


class ExportError(RuntimeError):
    """The source cannot be exported; the message says why."""


def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def export_model(source: str | Path, out_dir: str | Path, options: Optional[ExportOptions] = None, *,
                 log: Callable[[str], None] = _to_stderr, **overrides) -> Path:
    """Export `source` to `out_dir`; validate it against PyTorch; return the manifest's path.

    options: an ExportOptions (export/options.py says what each field does); keyword arguments
    named as its fields override it, e.g. `export_model(src, out, int8=True)`; TypeError names
    an unknown one. log: where progress lines go (default: stderr).
    """
    options = resolve(options, overrides)
    out_dir = Path(out_dir)
    if options.trust_remote_code:
        log(remote_code_notice(source))
    _check_out_dir(source, out_dir)
    log(f"loading {source}")
    loaded = _load_source(source, options)
    _check_lengths(loaded, options)
    _prepare_folder(out_dir)
    graphs, reports = _export_graphs(loaded, out_dir, options, log)
    extra = {"source": recorded_source(source, out_dir), **reports}
    if options.int8 or options.int4:
        extra.update(_quantize_graphs(graphs, loaded, options, log))
    for path in graphs:
        if path.stat().st_size >= options.external_data_min_bytes:
            store_weights_externally(path)
    tokenizer_sha256 = _write_tokenizer(loaded.tokenizer, out_dir)
    return write_manifest(_manifest(source, loaded, options, tokenizer_sha256, extra), out_dir)


@dataclass(frozen=True)
class _Loaded:
    """A loaded source and what export reads off it once."""

    model: object           # the transformers model, in eval mode
    family: object          # its export family (export/families.py)
    tokenizer: object       # its fast tokenizer
    ids: dict               # mask_id, eos_id, pad_id, stop_ids (special_ids)
    graph_vocab: int        # columns of the LM head
    vocab_size: int         # columns the tokenizer decodes (<= graph_vocab)
    is_suppressed: object   # (graph_vocab,) bool tensor: columns that never get probability
    max_length: int         # longest canvas the model accepts

    def checks(self, top_k: int) -> tuple:
        """The arguments export/validate.py's validate and measure functions take after the graph's path."""
        return (self.model, self.family, self.is_suppressed, top_k, self.vocab_size, self.ids["mask_id"],
                self.max_length)


def _load_source(source, options: ExportOptions) -> _Loaded:
    """Load the model and tokenizer; refuse what export cannot write before writing anything."""
    from transformers import AutoTokenizer

    from .cache import unsupported_reason
    from .graph import suppressed_columns

    trust = options.trust_remote_code
    family = _family(_load(_read_config, source, trust).get("model_type", ""), options.family)
    model = _load(family.load, source, trust)
    tokenizer = _load(AutoTokenizer.from_pretrained, source, trust)
    model.eval()
    config = model.config
    if options.kv_cache and unsupported_reason(family, config):
        raise ExportError(unsupported_reason(family, config))
    ids = special_ids(tokenizer, family, config)
    graph_vocab = family.graph_vocab(config)
    vocab_size = min(len(tokenizer), graph_vocab)
    return _Loaded(model, family, tokenizer, ids, graph_vocab, vocab_size,
                   suppressed_columns(graph_vocab, vocab_size, [ids["mask_id"]]), family.max_length(config))


def _check_out_dir(source, out_dir: Path) -> None:
    """ExportError for an output folder that is a file, or the source folder itself (whose tokenizer files
    export would overwrite)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"the output folder {out_dir} is a file")
    if out_dir.is_dir() and Path(str(source)).is_dir() and out_dir.resolve() == Path(str(source)).resolve():
        raise ExportError(f"the output folder {out_dir} is the source folder: export into another one")


def _check_lengths(loaded: _Loaded, options: ExportOptions) -> None:
    """ExportError, before anything is written, for a top_k over the vocabulary or a recommended generation
    length that leaves no room for a prompt in the model's max length."""
    if options.top_k > loaded.graph_vocab:
        raise ExportError(f"top_k {options.top_k} exceeds the model's vocabulary of {loaded.graph_vocab}")
    gen_length = (options.decode_defaults or {}).get("gen_length")
    if gen_length is not None and gen_length >= loaded.max_length:
        raise ExportError(f"gen_length {gen_length} leaves no room for a prompt in the model's max length "
                          f"{loaded.max_length}")


def _prepare_folder(out_dir: Path) -> None:
    """Create out_dir; remove an earlier export's files that this one may not write again, and its
    manifest, so that a folder whose export fails does not pass for a finished one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stale_files = (MODEL_GRAPH + ".data", tie_lite.CACHE_GRAPH, tie_lite.CACHE_GRAPH + ".data", tie_lite.MANIFEST_NAME)
    for stale in stale_files:
        (out_dir / stale).unlink(missing_ok=True)


def _export_graphs(loaded: _Loaded, out_dir: Path, options: ExportOptions, log) -> tuple[dict, dict]:
    """Write model.onnx (and cache.onnx with kv_cache), each validated against PyTorch. Returns
    {graph path: its measure function} and the manifest's validation reports."""
    from .cache import export_cache_graph
    from .graph import export_graph
    from .validate import measure, measure_cache, validate, validate_cache

    model, family, top_k, opset = loaded.model, loaded.family, options.top_k, options.opset
    log(f"exporting {model.config.model_type} ({family.name}) with optimum to {out_dir / MODEL_GRAPH}")
    path = export_graph(model, out_dir, family, loaded.is_suppressed, top_k, opset)
    _static_shapes(path, log)
    _merge_siblings(path, options, log)
    log("validating ONNX against PyTorch")
    reports = {"validation": validate(path, *loaded.checks(top_k)).as_dict()}
    graphs = {path: measure}
    if options.kv_cache:
        log(f"exporting the K/V-cache graph to {out_dir / tie_lite.CACHE_GRAPH} and validating it")
        cache_path = export_cache_graph(model, out_dir, family, loaded.is_suppressed, top_k, opset)
        _static_shapes(cache_path, log)
        _merge_siblings(cache_path, options, log)
        reports["cache_validation"] = validate_cache(cache_path, *loaded.checks(top_k)).as_dict()
        reports["cache_layout"] = tie_lite.CACHE_LAYOUT
        graphs[cache_path] = measure_cache
    return graphs, reports


def _static_shapes(path: Path, log) -> None:
    """Replace the graph's shape arithmetic by constants where its shapes are known (export/shapes.py);
    where onnxruntime's symbolic shape inference cannot infer every shape, the graph stays as it is."""
    from .shapes import ShapesUnknown, static_shapes_file

    try:
        removed = static_shapes_file(path)
    except ShapesUnknown as reason:
        log(f"{path.name}: shape arithmetic left in the graph ({reason})")
        return
    if removed:
        log(f"{path.name}: shape arithmetic made constant, {removed} operators fewer")


def _merge_siblings(path: Path, options: ExportOptions, log) -> None:
    """Merge the float32 graph's sibling matmuls (export/merge.py) unless --no-merge-matmuls; not in a
    graph --int8 or --int4 will quantize (export/merge.py says why)."""
    from .merge import merge_graph_file

    if options.merge_matmuls and not (options.int8 or options.int4):
        removed = merge_graph_file(path)
        if removed:
            log(f"{path.name}: {removed} matmuls merged into their siblings' (one matmul a group, then a Split)")


def _quantize_graphs(graphs: dict, loaded: _Loaded, options: ExportOptions, log) -> dict:
    """Replace each graph by its int8 or int4 version, which must agree with PyTorch at >= the option's
    floor (int8_min_agreement, int4_min_agreement) of the sample positions. Returns the manifest's
    reports ("int8_validation" or "int4_validation", "cache_" before it for cache.onnx), its
    "quantization" and the int4 settings."""
    from .validate import check_agreement

    scheme, quantize, floor, recorded = _quantizer(options, loaded.model, log)
    log(f"quantizing to {recorded['quantization']} and measuring its agreement with PyTorch")
    reports = {}
    for path, measure_graph in graphs.items():
        quantize(path)
        report = measure_graph(path, *loaded.checks(options.top_k))
        check_agreement(report, floor, scheme)
        prefix = "cache_" if path.name == tie_lite.CACHE_GRAPH else ""
        reports[f"{prefix}{scheme}_validation"] = report.as_dict()
    return {**reports, **recorded}


def _quantizer(options: ExportOptions, model, log) -> tuple:
    """(scheme, quantize(graph path) in place, agreement floor, what the manifest records of it)."""
    if options.int4:
        settings = {"block_size": options.int4_block_size, "accuracy_level": options.int4_accuracy_level}
        recorded = {"quantization": "int4-matmulnbits", **{f"int4_{k}": v for k, v in settings.items()}}

        def quantize(path: Path) -> None:
            if not quantize_int4(path, **settings)["embedding"]:
                log(f"{path.name}: the token embedding table stays float32 (no Gather of input_ids from a "
                    f"constant table, or the graph could not be converted to opset {INT4_OPSET})")

        return "int4", quantize, options.int4_min_agreement, recorded

    def quantize(path: Path) -> None:
        keep_first = options.int8_first_layer_fp32
        if not quantize_int8(path, first_layer_of=model if keep_first else None) and keep_first:
            log(f"{path.name}: no matmul of the first layer found; quantized every layer")

    return "int8", quantize, options.int8_min_agreement, {"quantization": "int8-dynamic"}


def _write_tokenizer(tokenizer, out_dir: Path) -> str:
    """Save the fast tokenizer's tokenizer.json; return its sha256 (the manifest's tokenizer_sha256)."""
    path = out_dir / TOKENIZER_FILE
    tokenizer.backend_tokenizer.save(str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(source, loaded: _Loaded, options: ExportOptions, tokenizer_sha256: str,
              extra: dict) -> "tie_lite.Manifest":
    family = loaded.family
    return tie_lite.Manifest(
        family=family.name, logits_shift=family.logits_shift, max_length=loaded.max_length,
        vocab_size=loaded.vocab_size, graph_vocab_size=loaded.graph_vocab, top_k=options.top_k,
        prompt_format=options.prompt_format or chat_prompt_format(loaded.tokenizer),
        answer_marker=options.answer_marker, tokenizer_sha256=tokenizer_sha256,
        name=options.name or Path(str(source)).name, decode_defaults=dict(options.decode_defaults or {}),
        stop_texts=options.stop_texts, extra=extra, **loaded.ids)


def quantize_int8(onnx_path: Path, first_layer_of=None, **options) -> list[str]:
    """Replace the float32 graph at onnx_path by a dynamically quantized int8 one (merged sibling
    matmuls split apart first: export/merge.py).

    first_layer_of: the torch model the graph came from; its first transformer layer's
    matmuls stay float32 (what `--int8` does). Returns the names of the matmuls so kept.
    A graph stored with external data (over 2 GB) is quantized into external data too.
    options: more of quantize_dynamic's arguments (per_channel, nodes_to_exclude, ...).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .merge import split_graph_file

    split_graph_file(onnx_path)  # a merged float32 graph's matmuls apart again (export/merge.py)
    kept = first_layer_matmuls(onnx_path, first_layer_of) if first_layer_of is not None else []
    options["nodes_to_exclude"] = list(options.get("nodes_to_exclude") or []) + kept

    def write(scratch: Path, dest: Path, external: bool) -> None:
        prepared = scratch / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True, save_as_external_data=external)
        quantize_dynamic(prepared, dest, weight_type=QuantType.QInt8, use_external_data_format=external, **options)

    _replace_graph(onnx_path, write)
    return kept


def quantize_int4(onnx_path: Path, block_size: int = DEFAULT_INT4_BLOCK_SIZE,
                  accuracy_level: int = DEFAULT_INT4_ACCURACY_LEVEL, *, head: bool = True, embedding: bool = True,
                  nodes_to_exclude=()) -> dict:
    """Replace the float32 graph at onnx_path by one whose weights are 4-bit (what `--int4` does; merged
    sibling matmuls split apart first: export/merge.py).

    onnxruntime's MatMulNBitsQuantizer, round to nearest, asymmetric: every `block_size` weights
    along a matmul's input dimension share a float32 scale and a 4-bit zero point (a dimension
    that is no multiple of block_size is padded). Every MatMul by a constant weight becomes
    MatMulNBits with `accuracy_level` (options.py: INT4_ACCURACY_LEVELS), the LM head's too: a
    head tied to the token embedding multiplies by Transpose(table), which is first stored as a
    weight of its own (head=False leaves it float32). embedding: the token embedding table (the
    Gather of input_ids) becomes GatherBlockQuantized, blocks along the hidden dimension; its int4
    tensors need ONNX opset 21, so a graph of an older opset is converted first (onnx's version
    converter); where that fails, the table stays float32. Other tables (positions, token types)
    stay float32. nodes_to_exclude: more node names to leave float32.
    Returns {"matmuls": MatMulNBits written, "embedding": whether the table was quantized}.
    """
    import logging

    import onnx
    from onnx import version_converter
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from .merge import split_graph_file

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)  # a line a node
    split_graph_file(onnx_path)  # a merged float32 graph's matmuls apart again (export/merge.py)
    model = onnx.load(str(onnx_path), load_external_data=False)  # converted without its weights (> 2 GB)
    tables = _token_embedding_gathers(model.graph) if embedding else []
    if tables and _opset(model) < INT4_OPSET:
        try:
            model = version_converter.convert_version(model, INT4_OPSET)
        except (RuntimeError, ValueError, onnx.checker.ValidationError):
            tables = []
    load_external_data_for_model(model, str(onnx_path.parent))
    if head:
        _untie_transposed_weights(model.graph)
    other_tables = [n.name for n in model.graph.node if n.op_type == "Gather" and n.name not in tables]
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, accuracy_level=accuracy_level,
                                     op_types_to_quantize=("MatMul", "Gather") if tables else ("MatMul",),
                                     nodes_to_exclude=[*nodes_to_exclude, *other_tables],
                                     quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer.process()
    done = quantizer.model.model

    def write(scratch: Path, dest: Path, external: bool) -> None:  # external data kept, as --int8 keeps it
        onnx.save_model(done, str(dest), save_as_external_data=external or too_large_for_one_file(done),
                        all_tensors_to_one_file=True,
                        location=dest.name + ".data", size_threshold=1024)

    _replace_graph(onnx_path, write)
    ops = [n.op_type for n in done.graph.node]
    return {"matmuls": ops.count("MatMulNBits"), "embedding": "GatherBlockQuantized" in ops}


def _opset(model) -> int:
    """The model's ONNX (default domain) opset."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _untie_transposed_weights(graph) -> list[str]:
    """Store Transpose(2-D initializer) as an initializer of its own where only MatMuls multiply by it
    (an LM head tied to the embedding table), so MatMulNBits can quantize it; the table stays for
    its Gather. Returns the names of the Transpose outputs so stored."""
    from onnx import numpy_helper

    weights = {t.name: t for t in graph.initializer if len(t.dims) == 2}
    stored = []
    for node in list(graph.node):
        if node.op_type != "Transpose" or node.input[0] not in weights:
            continue
        perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
        users = [n for n in graph.node if node.output[0] in n.input]
        if perm not in ([], [[1, 0]]) or not users or any(
                n.op_type != "MatMul" or list(n.input).index(node.output[0]) != 1 for n in users):
            continue
        table = numpy_helper.to_array(weights[node.input[0]])  # (V, H)
        graph.initializer.append(numpy_helper.from_array(table.T.copy(), node.output[0]))  # (H, V)
        graph.node.remove(node)
        stored.append(node.output[0])
    return stored


def _token_embedding_gathers(graph) -> list[str]:
    """Names of the Gathers that look up the graph's input_ids in a constant table (the token embedding)."""
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node
            if n.op_type == "Gather" and n.input[0] in weights and n.input[1] == tie_lite.GRAPH_INPUTS[0]]


def _replace_graph(onnx_path: Path, write: Callable[[Path, Path, bool], None]) -> None:
    """Replace the graph at onnx_path, and the external data files it names, by the files that
    write(scratch, dest, external) writes: dest is the new graph's path in an empty folder whose
    files all move to onnx_path's folder, scratch a folder for anything else, external whether
    the old graph kept its weights outside. The new files get the old graph's mode."""
    import shutil
    import tempfile

    import onnx
    from onnx.external_data_helper import uses_external_data

    graph = onnx.load(str(onnx_path), load_external_data=False)
    data_files = {e.value for t in graph.graph.initializer if uses_external_data(t)
                  for e in t.external_data if e.key == "location"}
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "out" / onnx_path.name
        dest.parent.mkdir()
        write(Path(tmp), dest, bool(data_files))
        mode = onnx_path.stat().st_mode & 0o777
        for name in data_files:
            (onnx_path.parent / name).unlink()
        for file in dest.parent.iterdir():
            shutil.move(str(file), onnx_path.parent / file.name)
            (onnx_path.parent / file.name).chmod(mode)  # onnx writes data files owner-only


def first_layer_matmuls(onnx_path: Path, model) -> list[str]:
    """Names of the graph's MatMul nodes that multiply by a weight of the model's first transformer layer.

    Found by value, not by name (optimum stores transposed weights under anonymous names): a
    MatMul's constant B is the transpose of one of that layer's Linear weights (out, in). The
    first layer is item 0 of the first ModuleList as long as the config's layer count.
    """
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    config = model.config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None)
    layers = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count), None)
    if layers is None:
        return []
    weights = [p.detach().numpy() for p in layers[0].parameters() if p.ndim == 2]  # (out, in) each
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name: t for t in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in initializers:
            continue
        weight = initializers[node.input[1]]
        candidates = [w for w in weights if w.T.shape == tuple(weight.dims)]
        if candidates:
            value = numpy_helper.to_array(weight, base_dir=str(onnx_path.parent))
            if any(np.array_equal(value, w.T) for w in candidates):
                found.append(node.name)
    return found


def store_weights_externally(onnx_path: Path) -> None:
    """Rewrite a single-file graph as onnx_path (structure) + onnx_path.data (every weight of 1 KB
    or more, one file). A graph that already keeps external data is left as it is."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    graph = onnx.load(str(onnx_path), load_external_data=False)
    if any(uses_external_data(t) for t in graph.graph.initializer):
        return
    save_weights_beside(graph, onnx_path)


PROTOBUF_LIMIT = 2 ** 31 - 1  # bytes: the largest message protobuf serializes
STRUCTURE_ROOM = 2 ** 26      # bytes kept under that limit for a graph's nodes and names


def too_large_for_one_file(graph_model) -> bool:
    """Whether a loaded graph's weights leave too little room under protobuf's limit to save it whole."""
    return sum(t.ByteSize() for t in graph_model.graph.initializer) >= PROTOBUF_LIMIT - STRUCTURE_ROOM


def save_weights_beside(graph_model, path: Path) -> None:
    """Save a loaded graph at `path` with every weight of 1 KB or more in path.data (one file),
    readable as `path` is (onnx writes data files owner-only)."""
    import onnx

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # save_model appends to an existing data file
    onnx.save_model(graph_model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    data.chmod(path.stat().st_mode & 0o777)


def recorded_source(source, out_dir) -> str:
    """The manifest's "source": a local folder relative to out_dir ("../hf"), a Hub id as given.

    Never a machine's absolute path: the manifest stays true wherever the two folders move together
    (python train/export_defaults.py ships models/NAME/hf as "../hf"). A source that is no local
    folder is a Hub id, as transformers reads it.
    """
    folder = Path(str(source))
    if not folder.is_dir():
        return str(source)
    try:
        return Path(os.path.relpath(folder.resolve(), Path(out_dir).resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return folder.resolve().name


def _load(loader, source, trust_remote_code: bool, **kwargs):
    try:
        return loader(str(source), trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise ExportError(f"{source} contains custom Python code; pass --trust-remote-code to run it "
                              "(only for sources you trust)") from None
        raise ExportError(f"cannot load {source}: {str(exc).strip().splitlines()[0]}") from None


def remote_code_notice(source) -> str:
    """What --trust-remote-code will run, said before it runs."""
    folder = Path(str(source))
    if folder.is_dir():
        files = sorted(p.name for p in folder.glob("*.py"))
        return f"--trust-remote-code: running {', '.join(files) or 'no .py files'} from {folder}"
    return f"--trust-remote-code: running the Python files of the Hub repository {source}"


def _read_config(source, trust_remote_code: bool = False) -> dict:
    """config.json as a dict (the _load signature; reading JSON runs no code)."""
    from .families import read_config

    return read_config(source)


def _family(model_type: str, name: Optional[str]):
    from .families import family_for

    try:
        return family_for(model_type, name)
    except ValueError as exc:
        raise ExportError(str(exc)) from None


def special_ids(tokenizer, family, config) -> dict:
    """mask / eos / pad / stop ids. The mask: the tokenizer's, else the family's mask token, else
    config.mask_token_id. EOS falls back to [SEP]; the family's end-of-turn tokens also stop."""
    mask_id = tokenizer.mask_token_id
    if mask_id is None and family.mask_token is not None:
        mask_id = tokenizer.convert_tokens_to_ids(family.mask_token)
        mask_id = None if mask_id == tokenizer.unk_token_id else mask_id
    if mask_id is None:
        mask_id = getattr(config, "mask_token_id", None)
    if mask_id is None:
        raise ExportError("the tokenizer has no mask token: not a masked diffusion LM")
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos_id is None:
        raise ExportError("the tokenizer has neither an EOS nor a SEP token to end generation")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    stop_ids = [int(eos_id)]
    for text in family.stop_tokens:
        token_id = tokenizer.convert_tokens_to_ids(text)
        if token_id is not None and token_id != tokenizer.unk_token_id and token_id not in stop_ids:
            stop_ids.append(int(token_id))
    return {"mask_id": int(mask_id), "eos_id": int(eos_id), "pad_id": int(pad_id), "stop_ids": tuple(stop_ids)}


def chat_prompt_format(tokenizer) -> str:
    """The chat template rendered around a placeholder, as "prefix{prompt}suffix"; "{prompt}" if none.

    Thinking is disabled (enable_thinking=False, which Qwen3 templates read, as A2D-Qwen3 expects);
    templates that do not read it are unaffected."""
    if not getattr(tokenizer, "chat_template", None):
        return tie_lite.PROMPT_SLOT
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
    if rendered.count(_SENTINEL) != 1:
        raise ExportError("the chat template does not place the user's message exactly once; "
                          "pass prompt_format explicitly")
    return rendered.replace(_SENTINEL, tie_lite.PROMPT_SLOT)


def write_manifest(manifest: "tie_lite.Manifest", out_dir: Path) -> Path:
    """Write tie_lite.json after checking it reads back as the runtime will read it."""
    data = manifest.to_dict()
    try:
        tie_lite.Manifest.from_dict(data, where="manifest being written")
    except tie_lite.TieLiteError as exc:
        raise ExportError(str(exc)) from None
    path = out_dir / tie_lite.MANIFEST_NAME
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
