"""Export a Hugging Face masked diffusion LM to the ONNX folder tie-lite runs.

    python -m export SOURCE OUT_DIR [options]

or, from Python, `export_model(source, out_dir)`. SOURCE is a Hub id or a local
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
from pathlib import Path
from typing import Callable, Optional, Sequence

import tie_lite

__all__ = ["export_model", "ExportError", "DEFAULT_TOP_K", "DEFAULT_ANSWER_MARKER"]

DEFAULT_TOP_K = 4                 # top ids/probs per position in the graph (>= 2 for margins)
DEFAULT_ANSWER_MARKER = "Answer:"  # reasoning-as-infilling marker (paper, section 1)
DEFAULT_INT8_MIN_AGREEMENT = 0.9  # int8 export: least share of positions whose top-1 id equals PyTorch's
EXTERNAL_DATA_MIN_BYTES = 64 * 2 ** 20  # graphs at least this big keep their weights in model.onnx.data:
                                        # onnxruntime then maps them instead of parsing a copy (peak RSS)
_SENTINEL = "\u2063TIE_LITE_PROMPT\u2063"  # stands for the user's text while rendering a chat template


class ExportError(RuntimeError):
    """The source cannot be exported; the message says why."""


def export_model(source: str | Path, out_dir: str | Path, *, top_k: int = DEFAULT_TOP_K,
                 prompt_format: Optional[str] = None, answer_marker: str = DEFAULT_ANSWER_MARKER,
                 name: Optional[str] = None, opset: Optional[int] = None, trust_remote_code: bool = False,
                 decode_defaults: Optional[dict] = None, int8: bool = False, family: Optional[str] = None,
                 stop_texts: Sequence[str] = (),
                 int8_min_agreement: float = DEFAULT_INT8_MIN_AGREEMENT, int8_first_layer_fp32: bool = True,
                 external_data_min_bytes: int = EXTERNAL_DATA_MIN_BYTES, kv_cache: bool = False,
                 log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Export `source` to `out_dir`; validate it against PyTorch; return the manifest's path.

    prompt_format: text with "{prompt}" where the user's text goes; default from the
    tokenizer's chat template (rendered now, so the runtime needs no template engine),
    else "{prompt}". decode_defaults: gen_length / answer_length / block_size the
    runtime's CLI uses when the user gives none (e.g. the layout the model was trained on).
    stop_texts: end markers that are text, not one token (ModernBERT-chat's "[/Answer]"):
    the runtime cuts its output at the first of them.
    family: the export family by name (see export/families.py), when config.json's
    model_type does not say it (e.g. a Dream-style model saved as plain Qwen2).
    int8: after the float32 graph validates, replace it by a dynamically quantized int8
    graph (onnxruntime quant_pre_process + quantize_dynamic), which must agree with
    PyTorch's top-1 ids at >= int8_min_agreement of the sample positions.
    int8_first_layer_fp32: leave the first transformer layer's matmuls in float32 (on the
    shipped model a it keeps more of float32's accuracy than quantizing every layer;
    bench/int8_variants.py writes both for eval/evaluate.py to measure).
    external_data_min_bytes: a final graph at least this big is stored as model.onnx plus its
    weights in model.onnx.data, which onnxruntime loads with a lower peak RSS (bench/ort_levers.py
    measures it).
    kv_cache: also write cache.onnx, the block key/value-cache graph the runtime's approximate
    `--kv-cache` decoding runs (export/cache.py; ModernBERT and BERT), validated and quantized
    like model.onnx.
    """
    from transformers import AutoTokenizer

    from .graph import export_graph, suppressed_columns
    from .cache import export_cache_graph, unsupported_reason
    from .validate import check_agreement, measure, measure_cache, validate, validate_cache

    if top_k < 2:
        raise ExportError(f"top_k must be >= 2, got {top_k}")
    out_dir = Path(out_dir)
    if trust_remote_code:
        log(remote_code_notice(source))
    log(f"loading {source}")
    model_family = _family(_load(_read_config, source, trust_remote_code).get("model_type", ""), family)
    model = _load(model_family.load, source, trust_remote_code)
    tokenizer = _load(AutoTokenizer.from_pretrained, source, trust_remote_code)
    model.eval()
    config = model.config
    if kv_cache and unsupported_reason(model_family, config):
        raise ExportError(unsupported_reason(model_family, config))
    ids = special_ids(tokenizer, model_family, config)
    graph_vocab = model_family.graph_vocab(config)
    vocab_size = min(len(tokenizer), graph_vocab)
    is_suppressed = suppressed_columns(graph_vocab, vocab_size, [ids["mask_id"]])
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("model.onnx.data", "cache.onnx", "cache.onnx.data"):  # an earlier export's files
        (out_dir / stale).unlink(missing_ok=True)
    log(f"exporting {config.model_type} ({model_family.name}) with optimum to {out_dir / 'model.onnx'}")
    onnx_path = export_graph(model, out_dir, model_family, is_suppressed, top_k, opset)
    max_length = model_family.max_length(config)
    log("validating ONNX against PyTorch")
    checks = (model, model_family, is_suppressed, top_k, vocab_size, ids["mask_id"], max_length)
    extra = {"source": recorded_source(source, out_dir), "validation": validate(onnx_path, *checks).as_dict()}
    graphs = {onnx_path: measure}
    if kv_cache:
        log(f"exporting the K/V-cache graph to {out_dir / 'cache.onnx'} and validating it")
        cache_path = export_cache_graph(model, out_dir, model_family, is_suppressed, top_k, opset)
        extra["cache_validation"] = validate_cache(cache_path, *checks).as_dict()
        graphs[cache_path] = measure_cache
    if int8:
        log("quantizing to int8 (dynamic) and measuring its agreement with PyTorch")
        for path, measure_graph in graphs.items():
            kept = quantize_int8(path, first_layer_of=model if int8_first_layer_fp32 else None)
            if int8_first_layer_fp32 and not kept:
                log(f"{path.name}: no matmul of the first layer found; quantized every layer")
            int8_report = measure_graph(path, *checks)
            check_agreement(int8_report, int8_min_agreement)
            prefix = "cache_" if path.name == "cache.onnx" else ""
            extra[f"{prefix}int8_validation"] = int8_report.as_dict()
        extra["quantization"] = "int8-dynamic"
    for path in graphs:
        if path.stat().st_size >= external_data_min_bytes:
            store_weights_externally(path)
    tokenizer_path = out_dir / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(tokenizer_path))
    manifest = tie_lite.Manifest(
        family=model_family.name, logits_shift=model_family.logits_shift, max_length=max_length,
        vocab_size=vocab_size, graph_vocab_size=graph_vocab, top_k=top_k,
        prompt_format=prompt_format or chat_prompt_format(tokenizer), answer_marker=answer_marker,
        tokenizer_sha256=hashlib.sha256(tokenizer_path.read_bytes()).hexdigest(),
        name=name or Path(str(source)).name, decode_defaults=dict(decode_defaults or {}),
        stop_texts=tuple(stop_texts), extra=extra,
        **ids)
    return write_manifest(manifest, out_dir)


def quantize_int8(onnx_path: Path, first_layer_of=None, **options) -> list[str]:
    """Replace the float32 graph at onnx_path by a dynamically quantized int8 one.

    first_layer_of: the torch model the graph came from; its first transformer layer's
    matmuls stay float32 (what `--int8` does). Returns the names of the matmuls so kept.
    A graph stored with external data (over 2 GB) is quantized into external data too.
    options: more of quantize_dynamic's arguments (per_channel, nodes_to_exclude, ...).
    """
    import shutil
    import tempfile

    import onnx
    from onnx.external_data_helper import uses_external_data
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    kept = first_layer_matmuls(onnx_path, first_layer_of) if first_layer_of is not None else []
    options["nodes_to_exclude"] = list(options.get("nodes_to_exclude") or []) + kept
    graph = onnx.load(str(onnx_path), load_external_data=False)
    external = [t.name for t in graph.graph.initializer if uses_external_data(t)]
    data_files = {e.value for t in graph.graph.initializer if uses_external_data(t)
                  for e in t.external_data if e.key == "location"}
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "out" / onnx_path.name
        quantized.parent.mkdir()
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True,
                          save_as_external_data=bool(external))
        quantize_dynamic(prepared, quantized, weight_type=QuantType.QInt8, use_external_data_format=bool(external),
                         **options)
        mode = onnx_path.stat().st_mode & 0o777
        for name in data_files:
            (onnx_path.parent / name).unlink()
        for file in quantized.parent.iterdir():
            shutil.move(str(file), onnx_path.parent / file.name)
            (onnx_path.parent / file.name).chmod(mode)  # onnx writes data files owner-only
    return kept


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
    data = onnx_path.with_name(onnx_path.name + ".data")
    data.unlink(missing_ok=True)  # save_model appends to an existing data file
    onnx.save_model(graph, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    data.chmod(onnx_path.stat().st_mode & 0o777)  # onnx writes it owner-only; readable as model.onnx is


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
