"""Decode time and peak memory of tie-lite vs llama.cpp's diffusion example, same Dream-shaped weights, one run.

    python bench/vs_llama_cpp.py --work DIR --build        # first time: builds llama.cpp into DIR (minutes)
    python bench/vs_llama_cpp.py --work DIR                 # Qwen2.5-0.5B's shapes, every precision pair
    python bench/vs_llama_cpp.py --work DIR --small         # a tiny Dream-shaped model: a functional check
    python bench/vs_llama_cpp.py --work DIR --prompt-tokens 448 --cache-block 32 \\
        --pairs "Q8_0 / int8" "Q8_0 / int8 + K/V cache"
    python bench/vs_llama_cpp.py --work DIR --llama-dir BUILD  # an existing llama.cpp CMake build folder

The peer is `llama-diffusion-cli` (llama.cpp's examples/diffusion), built from the llama.cpp that
the llama-cpp-python source distribution on PyPI vendors (`pip download --no-binary :all: --no-deps
llama-cpp-python`, unpacked; vendor/llama.cpp), CPU only, Release, with `llama-quantize` and
`llama-tokenize`; DIR keeps the download and the build, and every model and conversion below.

The model is a random-weight Dream: Qwen2 weights (Qwen2.5-0.5B's shapes by default, LM head
untied as in Dream's checkpoints) whose config names the architecture `DreamModel` and its
`mask_token_id`, as Dream's does, so that llama.cpp's convert_hf_to_gguf.py converts it as Dream
(f32, f16, q8_0; llama-quantize Q4_0 from the f32 file) and `python -m export --family dream`
exports the same folder (float32, --int8 and --int4, each also with --kv-cache, and --int4 with
--int4-block-size 128: EXPORT_VARIANTS). Its tokenizer is a byte-level BPE with Qwen2's
pre-tokenizer whose tokens, besides the 256 bytes and the specials, are a space and lowercase
letters, so that llama.cpp's printed text maps back to ids;
the converter does not know its hash, so a patched copy of the converter in DIR maps it to qwen2
(the script says so).
Byte and special tokens get an all-zero LM-head row, logit 0, so they are never an argmax (a
random model would otherwise propose [MASK] now and then, which only tie-lite's graph excludes).

The algorithm pair, "greedy, leftmost first, G/S tokens a step":
    llama.cpp  --temp 0 --top-k 1 --top-p 1 --diffusion-block-length L --diffusion-steps S
               -ub L -b L -c L  (L = prompt + G: the canvas is one block, LLaDA's even schedule)
    tie-lite   DecodeConfig(gen_length=G, block_size=G // S, steps=S)  (greedy)
Both run S forward passes over the whole canvas and commit the G/S leftmost masks each step, each
the argmax of the logits one position to its left (Dream's shift). Leftmost because llama.cpp's
greedy needs --top-k 1 (its --temp 0 only drops the temperature stage: the token is still drawn
from the top-40 / top-p 0.95 candidates), and with one candidate left every position's
probability, entropy and margin is the same, so its sort's tie-break, the lower position, picks;
tie-lite's blocks of G/S masks, one step each, commit exactly those. The K/V-cache pairs cannot
match (the cache pays only with several steps per block, where tie-lite ranks by confidence):
they decode blocks of --cache-block masks, the same S steps, with the prefix cache or the dual
one ("... dual"), and their agreement is not comparable.
The "(openvino)" pairs run tie-lite with --provider openvino (pip install '.[openvino]'); without
--pairs they run where OpenVINO's plugin offers a device (Intel CPUs). They keep the compiled graphs
in tie-lite's default OpenVINO cache (the user's cache folder; TIE_LITE_OPENVINO_CACHE moves it),
which the warm-up run fills.

Each decode runs in a fresh process (the model loaded there), llama.cpp and tie-lite alternating,
a warm-up pair first, then --repeats pairs; the table gives the median ratio of the decode loops'
own times (llama.cpp's printed `total time`, tie-lite's decode()), of whole processes (load
included), the share of generated positions where the two agree, and peak RSS (VmHWM, read from
/proc every 10 ms while the process runs). For the pairs whose tie-lite side is the exact float32
graph the rounds also time the S passes' weight matmuls alone through onnxruntime (matmul_floor; its
graph is written into DIR once), and the script prints llama.cpp's time over theirs: the most a
float32 tie-lite on onnxruntime's kernels could gain here, whatever it did around them. Needs torch (building and converting). Never
run in CI.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import string
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------- options

QWEN25_05B = dict(layers=24, hidden=896, heads=14, kv_heads=2, intermediate=4864, vocab=151936)
SMALL = dict(layers=2, hidden=128, heads=2, kv_heads=1, intermediate=384, vocab=4096)
DEFAULT_WORK = Path(tempfile.gettempdir()) / "tie-lite-vs-llama-cpp"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help="folder for the llama.cpp build, the models and their conversions (kept between runs)")
    p.add_argument("--build", action="store_true", help="download and build llama.cpp into --work first")
    p.add_argument("--llama-dir", type=Path, help="an existing llama.cpp CMake build folder (default: --work's)")
    p.add_argument("--small", action="store_true", help="a tiny Dream-shaped model (%s) instead of Qwen2.5-0.5B's "
                   "shapes (%s)" % (SMALL, QWEN25_05B))
    for name in QWEN25_05B:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help="model shape (default: the preset's)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length P in tokens")
    p.add_argument("--gen", type=int, default=64, help="generated positions G (the canvas is P + G)")
    p.add_argument("--steps", type=int, default=32, help="forward passes S; G / S tokens a step")
    p.add_argument("--cache-block", type=int, help="tie-lite's block for the K/V-cache pairs (default: 8, or G "
                   "when smaller; int8 at L = 96 decoded faster with 8 than with 16 or 32: bench/README.md)")
    p.add_argument("--repeats", type=int, default=3, help="timed decodes per side and pair (after a warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="weights and prompt")
    p.add_argument("--pairs", nargs="+", metavar="LABEL", help="only these pairs, by their row label "
                   "(default: every pair; labels: %s)" % "; ".join(pair.label for pair in PAIRS))
    args = p.parse_args(argv)
    unknown = set(args.pairs or ()) - {pair.label for pair in PAIRS}
    if unknown:
        p.error(f"unknown pair(s) {sorted(unknown)}; pairs: {[pair.label for pair in PAIRS]}")
    preset = SMALL if args.small else QWEN25_05B
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.cache_block = args.cache_block or min(8, args.gen)
    if args.gen % args.steps:
        p.error(f"--gen {args.gen} must be a multiple of --steps {args.steps} (G / S tokens a step)")
    if args.gen % args.cache_block or args.steps % (args.gen // args.cache_block):
        p.error(f"--cache-block {args.cache_block} must divide --gen into blocks that divide --steps")
    return args


def shape_tag(args) -> str:
    return "dream-" + "-".join(f"{name}{getattr(args, name)}" for name in QWEN25_05B) + f"-seed{args.seed}"


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, its output shown; raise with its tail when it fails."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if done.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return done


# ---------------------------------------------------------------------------- llama.cpp

LLAMA_TARGETS = ("llama-diffusion-cli", "llama-quantize", "llama-tokenize")


def llama_source_tree(work: Path) -> Path:
    """llama.cpp's source as llama-cpp-python's newest downloaded sdist vendors it (downloaded if none)."""
    sdists = work / "sdist"
    if not list(sdists.glob("llama_cpp_python-*.tar.gz")):
        run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "llama-cpp-python",
             "-d", sdists])
    archive = max(sdists.glob("llama_cpp_python-*.tar.gz"), key=lambda a: a.stat().st_mtime)
    unpacked = work / archive.name.removesuffix(".tar.gz")
    if not unpacked.is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
    return unpacked / "vendor" / "llama.cpp"


NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"  # see build_llama


def build_llama(work: Path, jobs: int) -> Path:
    """Configure and build LLAMA_TARGETS (CPU, Release, static) in work/build; returns that folder.

    For this CPU (GGML_NATIVE), but with Intel's AMX compiled out: on a Xeon with AMX its quantized matmul
    (ggml_backend_amx_mul_mat) crashes this model's Q8_0 and Q4_0 decodes with a segmentation fault, with or
    without --no-repack (llama.cpp issue 20824). On CPUs without AMX the flags change nothing."""
    source, build = llama_source_tree(work), work / "build"
    if build.is_dir() and llama_source_of(build) != source.resolve():
        shutil.rmtree(build)  # configured for another source tree
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", source, "-B", build, *generator, "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
         "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
         "-DLLAMA_BUILD_EXAMPLES=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DGGML_NATIVE=ON",
         f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"])
    run(["cmake", "--build", build, "--target", *LLAMA_TARGETS, "-j", str(jobs)])
    return build


def llama_source_of(build: Path) -> Optional[Path]:
    """The source folder a CMake build folder was configured from (its CMakeCache.txt)."""
    cache = build / "CMakeCache.txt"
    if not cache.is_file():
        return None
    found = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", cache.read_text(), re.M)
    return Path(found.group(1)).resolve() if found else None


def llama_tool(build: Path, name: str) -> Path:
    path = build / "bin" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: build it (--build) or pass the right --llama-dir")
    return path


def llama_version(source: Path) -> str:
    """The vendoring llama-cpp-python version and llama.cpp's ggml version, as a label."""
    sdist = source.parent.parent.name
    ggml = re.search(r"GGML_VERSION_MAJOR (\d+).*?GGML_VERSION_MINOR (\d+).*?GGML_VERSION_PATCH (\d+)",
                     (source / "ggml" / "CMakeLists.txt").read_text(), re.S)
    return f"{sdist} (ggml {'.'.join(ggml.groups())})" if ggml else sdist


# ---------------------------------------------------------------------------- the random Dream model

# Qwen2's pre-tokenizer (its tokenizer.json's Split pattern), which llama.cpp applies as `qwen2`.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>")  # EOS and pad; chat; Dream's mask
SPACE = "\u0120"  # byte-level BPE's "Ġ", the space byte
IDENTITY_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def letter_words(count: int) -> list:
    """`count` lowercase words, shortest first: every word's prefixes come before it."""
    words, length = [], 1
    while len(words) < count:
        words += ["".join(w) for w in itertools.product(string.ascii_lowercase, repeat=length)][:count - len(words)]
        length += 1
    return words


def dream_tokenizer(vocab_size: int):
    """A byte-level BPE of `vocab_size` tokens with Qwen2's pre-tokenizer: the 256 bytes, then " " + word
    for lowercase words (each merged from the one a letter shorter), then SPECIALS. Text of space-led
    words tokenizes to one token per word, and any sequence of word tokens decodes to text that splits
    back into them. The chat template passes the message through unchanged."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bytes_ = sorted(pre_tokenizers.ByteLevel.alphabet())  # (256,)
    words = letter_words(vocab_size - len(bytes_) - len(SPECIALS))
    vocab = {token: i for i, token in enumerate([*bytes_, *(SPACE + w for w in words), *SPECIALS])}
    merges = [(SPACE + w[:-1], w[-1]) for w in words]
    backend = Tokenizer(models.BPE(vocab, merges))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=SPECIALS[0], pad_token=SPECIALS[0],
                                   mask_token=SPECIALS[3], additional_special_tokens=list(SPECIALS[1:3]),
                                   chat_template=IDENTITY_TEMPLATE, clean_up_tokenization_spaces=False)


def save_dream(folder: Path, args) -> Path:
    """A random Qwen2 checkpoint with Dream's config conventions and dream_tokenizer, in `folder`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = dream_tokenizer(args.vocab)
    mask_id, eos_id = tokenizer.mask_token_id, tokenizer.eos_token_id
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=32768, rope_theta=1e6,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=None, eos_token_id=eos_id,
                         pad_token_id=eos_id, mask_token_id=mask_id)
    torch.manual_seed(args.seed)
    model = Qwen2ForCausalLM(config).eval()
    never = sorted(set(range(args.vocab)) - set(word_ids(tokenizer)))  # bytes and SPECIALS
    with torch.no_grad():
        model.lm_head.weight[never] = 0  # (V, H) rows: logit exactly 0, below the words' maximum
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    saved["architectures"] = ["DreamModel"]  # what convert_hf_to_gguf.py dispatches on; export reads model_type
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    return folder


def word_ids(tokenizer) -> list:
    """Ids of dream_tokenizer's word tokens (" " + letters), in order."""
    return sorted(i for token, i in tokenizer.get_vocab().items() if token.startswith(SPACE) and len(token) > 1)


def prompt_ids(tokenizer, count: int, seed: int) -> list:
    """`count` random word tokens (no byte or special token): the prompt both sides decode from."""
    return np.random.default_rng(seed).choice(word_ids(tokenizer), count).tolist()


# ---------------------------------------------------------------------------- conversions

def patched_converter(source: Path, work: Path, tokenizer) -> Path:
    """convert_hf_to_gguf.py, copied to work/converter; when llama.cpp does not know `tokenizer`'s
    pre-tokenizer hash, the copy's conversion/base.py maps that hash (and only it) to qwen2.
    The vendored original is left as it is."""
    base = (source / "conversion" / "base.py").read_text()
    chktxt = ast.literal_eval(re.search(r"^\s*chktxt = (.+)$", base, re.M).group(1))
    chkhsh = hashlib.sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest()
    dest = work / "converter"
    shutil.copytree(source / "conversion", dest / "conversion", dirs_exist_ok=True)
    shutil.copy(source / "convert_hf_to_gguf.py", dest)
    if not (dest / "gguf-py").exists():
        (dest / "gguf-py").symlink_to(source / "gguf-py")
    if f'chkhsh == "{chkhsh}"' not in base:
        line = "        res = None\n"
        assert base.count(line) == 1, "conversion/base.py changed: cannot patch its tokenizer check"
        base = base.replace(line, line + f'        if chkhsh == "{chkhsh}":  # tie-lite bench/vs_llama_cpp.py\n'
                                         '            res = "qwen2"\n')
        print(f"note: the test tokenizer's hash {chkhsh[:12]}... is unknown to llama.cpp's converter; using a "
              f"patched copy ({dest / 'conversion' / 'base.py'}) that maps it to the qwen2 pre-tokenizer")
    (dest / "conversion" / "base.py").write_text(base)
    return dest / "convert_hf_to_gguf.py"


def converter_env(work: Path) -> dict:
    """The environment the converter runs in: sentencepiece, which its Dream class imports even for a
    BPE tokenizer (and which its requirements list), installed into work/pydeps if missing."""
    deps = work / "pydeps"
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        if not (deps / "sentencepiece").is_dir():
            run([sys.executable, "-m", "pip", "install", "--target", deps, "sentencepiece>=0.1.98,<0.3.0"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(deps), os.environ.get("PYTHONPATH")]))}


def gguf_files(hf: Path, out: Path, converter: Path, quantize: Path, threads: int, work: Path) -> dict:
    """{kind: path} of the GGUF conversions f32, f16, q8_0 (the converter) and q4_0 (llama-quantize)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / f"{kind}.gguf" for kind in ("f32", "f16", "q8_0", "q4_0")}
    for kind in ("f32", "f16", "q8_0"):
        if not files[kind].is_file():
            run([sys.executable, converter, hf, "--outtype", kind, "--outfile", files[kind]], env=converter_env(work))
    if not files["q4_0"].is_file():
        run([quantize, files["f32"], files["q4_0"], "Q4_0", threads])
    return files


def export_options() -> set:
    """The optional export flags this checkout's `python -m export` offers (others are being added)."""
    text = run([sys.executable, "-m", "export", "--help"], cwd=ROOT).stdout
    return {flag for flag in ("--int4", "--kv-cache") if re.search(rf"{flag}\b", text)}


# A random model's near-ties: export's agreement floors do not apply to it.
INT8 = ["--int8", "--int8-min-agreement", "0"]
INT4 = ["--int4", "--int4-min-agreement", "0"]
EXPORT_VARIANTS = {  # tie-lite export variant: (`python -m export` flags, the flag this checkout must offer)
    "fp32": ([], None),
    "int8": (INT8, None),
    "int4": (INT4, "--int4"),
    "int4-b128": ([*INT4, "--int4-block-size", "128"], "--int4"),  # a scale per 128 weights, not per 32 as Q4_0
    "fp32-cache": (["--kv-cache"], "--kv-cache"),
    "int8-cache": ([*INT8, "--kv-cache"], "--kv-cache"),
    "int4-cache": ([*INT4, "--kv-cache"], "--kv-cache"),
}


def export_variant(hf: Path, out: Path, name: str) -> tuple[Optional[Path], Optional[str]]:
    """(out/onnx-NAME, None) once `python -m export` has written that variant (kept between runs),
    or (None, why not)."""
    flags = EXPORT_VARIANTS[name][0]
    folder = out / f"onnx-{name}"
    if not (folder / "tie_lite.json").is_file():
        print("+ python -m export", hf, folder, "--family dream", *flags, flush=True)
        done = subprocess.run([sys.executable, "-m", "export", hf, folder, "--family", "dream", *flags],
                              capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            return None, f"{name}: skipped, export refused it: {why}"
    return folder, None


def onnx_exports(hf: Path, out: Path, offered: set, wanted: set) -> tuple[dict, list]:
    """{variant: folder} of the tie-lite exports in `wanted` (EXPORT_VARIANTS: those this checkout
    offers and export accepts for this family), and notes on the ones skipped."""
    folders, notes = {}, []
    for name, (_, needs) in EXPORT_VARIANTS.items():
        if name not in wanted:
            continue
        if needs and needs not in offered:
            notes.append(f"{name}: skipped, `python -m export --help` offers no {needs} in this checkout")
            continue
        folder, note = export_variant(hf, out, name)
        if folder:
            folders[name] = folder
        else:
            notes.append(note)
    return folders, notes


def size_mb(path: Path) -> float:
    """A file's size, or a folder's graphs' (ONNX and its external data)."""
    if path.is_file():
        return path.stat().st_size / 2 ** 20
    return sum(f.stat().st_size for f in path.iterdir() if ".onnx" in f.name) / 2 ** 20


# ---------------------------------------------------------------------------- one decode, in a fresh process

@dataclass(frozen=True)
class Run:
    ids: tuple          # (G,) generated token ids
    decode_s: float     # the decode loop's own time, as the runtime measures it
    process_s: float    # spawn to exit: loading included
    peak_mb: float      # VmHWM


def measured(cmd: list, stdin: str = "", cwd: Optional[Path] = None) -> tuple[str, float, float]:
    """(output, seconds, peak RSS MB) of a command; VmHWM is read from /proc every 10 ms (the
    peak is reached while loading and at the first step, well before the process exits)."""
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT, text=True, cwd=cwd)
        proc.stdin.write(stdin)
        proc.stdin.close()
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, vm_hwm_kb(proc.pid))
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        out.seek(0)
        text = out.read()
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{text[-3000:]}")
    return text, seconds, peak_kb / 1024


def vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM")), 0)
    except (FileNotFoundError, ProcessLookupError):
        return 0


def llama_command(cli: Path, gguf: Path, prompt_text: str, length: int, steps: int, threads: int) -> list:
    """The greedy, leftmost-first decode (module docstring): one block of the whole canvas."""
    return [cli, "-m", gguf, "-p", prompt_text, "-t", threads, "-tb", threads, "-c", length, "-b", length,
            "-ub", length, "--diffusion-block-length", length, "--diffusion-steps", steps,
            "--diffusion-algorithm", 4, "--temp", 0, "--top-k", 1, "--top-p", 1, "--seed", 0]


def llama_decode(cli: Path, gguf: Path, prompt_text: str, gen: int, length: int, steps: int, threads: int,
                 vocab: dict, attempts: int = 3) -> Run:
    """One llama-diffusion-cli decode; its generated text split back into ids (dream_tokenizer's words).

    Its log (the timing and the text are log lines) is written by a thread of a logger it never
    frees, so a process can exit before its last lines are out (llama.cpp issue 22142); on a busy
    machine that happens now and then: such a run is discarded and run again."""
    for _ in range(attempts):
        text, seconds, peak = measured(llama_command(cli, gguf, prompt_text, length, steps, threads))
        timing = re.search(r"total time: ([\d.]+)ms[^\n]*\n(?:.*\n)??((?: [a-z]+)+)\n", text)
        if timing:
            break
        print("note: llama-diffusion-cli's log lost its last lines (an asynchronous logger, leaked at exit); "
              "running it again", flush=True)
    else:
        raise RuntimeError(f"no timing or text in llama-diffusion-cli's output:\n{text[-2000:]}")
    words = timing.group(2).split()
    if len(words) != gen:
        raise RuntimeError(f"llama.cpp generated {len(words)} words, not {gen}: its prompt ids differ "
                           f"(a chat template?):\n{timing.group(2)[:500]}")
    return Run(tuple(vocab[SPACE + w] for w in words), float(timing.group(1)) / 1000, seconds, peak)


TIE_LITE_CHILD = """
import json, sys, time
import numpy as np
import tie_lite
job = json.load(sys.stdin)
model = tie_lite.Model.load(job["onnx"], threads=job["threads"], kv_cache=job["kv_cache"], provider=job["provider"])
prompt = np.array(job["prompt_ids"], np.int64)  # (P,)
tokens = np.concatenate([prompt, np.full(job["gen"], model.manifest.mask_id, np.int64)])  # (L,)
gen_idx = np.arange(prompt.size, tokens.size)  # (G,)
canvas = tie_lite.Canvas(tokens, prompt.size, gen_idx, np.zeros(0, np.int64), 0)
config = tie_lite.DecodeConfig(gen_length=job["gen"], block_size=job["block"], steps=job["steps"])
state = tie_lite.DecodeState(canvas, np.random.default_rng(0))
t0 = time.perf_counter()
tie_lite.decode(model, state, config)
seconds = time.perf_counter() - t0
print(json.dumps({"ids": state.tokens[gen_idx].tolist(), "seconds": seconds, "steps": state.steps}))
"""


def tie_lite_decode(onnx: Path, ids: list, gen: int, block: int, steps: int, threads: int,
                    kv_cache: Optional[str], provider: str = "cpu") -> Run:
    """One tie-lite decode of the prompt ids (the canvas built from ids, not text), greedy."""
    job = dict(onnx=str(onnx), prompt_ids=ids, gen=gen, block=block, steps=steps, threads=threads, kv_cache=kv_cache,
               provider=provider)
    text, seconds, peak = measured([sys.executable, "-c", TIE_LITE_CHILD], json.dumps(job), cwd=ROOT)
    result = json.loads(text.strip().splitlines()[-1])
    if result["steps"] != steps:
        raise RuntimeError(f"tie-lite took {result['steps']} steps, not {steps}")
    return Run(tuple(result["ids"]), result["seconds"], seconds, peak)


# ---------------------------------------------------------------------------- the matmul floor

def floor_graph(args) -> Path:
    """A graph of one forward pass's weight matmuls and nothing else, written once into --work (random
    weights of the model's shapes, scaled by 1/sqrt(k) so that values stay near 1; external data):
    x (L, hidden) through every layer's query/key/value projection (as one matmul: tie-lite's float32
    graphs merge them), output projection, gate/up (one matmul, merged) and down projection, chained
    by column slices (the attention output and the MLP's product are as wide as the slices); the last
    layer's maps after its key/value projection at the b = G / S rows a pass reads, as in tie-lite's
    graph (which adds one spare row there: 0.04% of the work); then the LM head at those rows.
    Attention's own matmuls and every other operator left out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, inter, length, read = args.hidden, args.intermediate, args.prompt_tokens + args.gen, args.gen // args.steps
    kv = args.kv_heads * h // args.heads
    path = args.work / "models" / shape_tag(args) / f"matmul-floor-L{length}-b{read}" / "floor.onnx"
    if path.is_file():
        return path
    rng = np.random.default_rng(args.seed)
    weights, nodes = [], []

    def matmul(x: str, k: int, n: int, name: str) -> str:
        weights.append(numpy_helper.from_array(
            rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k)), name))  # (k, n)
        nodes.append(helper.make_node("MatMul", [x, name], [name + "_out"]))
        return name + "_out"

    def first(x: str, axis: int, count: int, name: str) -> str:
        """x's first `count` entries along `axis` (a Slice)."""
        for value, suffix in ((0, "start"), (count, "end"), (axis, "axis")):
            weights.append(numpy_helper.from_array(np.array([value], np.int64), f"{name}_{suffix}"))
        nodes.append(helper.make_node("Slice", [x, f"{name}_start", f"{name}_end", f"{name}_axis"], [name]))
        return name

    x = "x"
    for i in range(args.layers):
        qkv = matmul(x, h, h + 2 * kv, f"qkv{i}")                            # (L, h + 2 kv)
        if i == args.layers - 1:
            qkv = first(qkv, 0, read, "read_rows")                           # (b, h + 2 kv)
        out = matmul(first(qkv, 1, h, f"attention{i}"), h, h, f"o{i}")        # (rows, h)
        gate_up = matmul(out, h, 2 * inter, f"gate_up{i}")                   # (rows, 2 I)
        x = matmul(first(gate_up, 1, inter, f"mlp{i}"), inter, h, f"down{i}")  # (rows, h)
    logits = matmul(x, h, args.vocab, "lm_head")                             # (b, V)
    graph = helper.make_graph(nodes, "matmul_floor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [length, h])],
                              [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [read, args.vocab])],
                              weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path, save_as_external_data=True, location="floor.onnx.data")
    return path


def floor_gflop(args) -> float:
    """floor_graph's float ops, a pass (2 a multiply-add)."""
    h, inter, length, read = args.hidden, args.intermediate, args.prompt_tokens + args.gen, args.gen // args.steps
    kv = args.kv_heads * h // args.heads
    per_row = 2 * h * h + 2 * 3 * h * inter  # output projection and MLP
    qkv = 2 * h * (h + 2 * kv)
    return (args.layers * length * qkv + ((args.layers - 1) * length + read) * per_row
            + read * 2 * h * args.vocab) / 1e9


FLOOR_CHILD = """
import json, sys, time
import numpy as np
import onnxruntime as ort
sys.path.insert(0, "bench")
from common import session_options
job = json.load(sys.stdin)
session = ort.InferenceSession(job["graph"], session_options(job["threads"]), providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((job["length"], job["hidden"]), dtype=np.float32)  # (L, hidden)
session.run(None, {"x": x})
t0 = time.perf_counter()
for _ in range(job["steps"]):
    session.run(None, {"x": x})
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def matmul_floor(args) -> Callable[[], Run]:
    """S passes of floor_graph through onnxruntime, tie-lite's session options and --threads threads,
    in a fresh process (loading not timed): the time an exact float32 decode whose matmuls ran at
    the rate of onnxruntime's kernels, and whose other operators took no time, would need at least.
    Timed beside the decodes, llama.cpp's float32 time over it is the most a float32 tie-lite built
    on these kernels could gain on llama.cpp here."""
    job = json.dumps(dict(graph=str(floor_graph(args)), threads=args.threads, steps=args.steps,
                          length=args.prompt_tokens + args.gen, hidden=args.hidden))

    def run_floor() -> Run:
        text, seconds, peak = measured([sys.executable, "-c", FLOOR_CHILD], job, cwd=ROOT)
        return Run((), json.loads(text.strip().splitlines()[-1])["seconds"], seconds, peak)
    return run_floor


# ---------------------------------------------------------------------------- pairs and the table

@dataclass(frozen=True)
class Pair:
    label: str                  # "llama.cpp side / tie-lite side"
    gguf: str                   # GGUF kind
    onnx: str                   # export variant
    kv_cache: Optional[str] = None
    matched: bool = True        # the same algorithm on both sides (module docstring)
    provider: str = "cpu"       # tie-lite's (--provider); openvino needs pip install '.[openvino]', an Intel CPU


PAIRS = (Pair("f32 / fp32", "f32", "fp32"), Pair("f16 / fp32", "f16", "fp32"), Pair("Q8_0 / int8", "q8_0", "int8"),
         Pair("Q4_0 / int4", "q4_0", "int4"), Pair("Q4_0 / int4 block 128", "q4_0", "int4-b128"),
         Pair("f32 / fp32 + K/V cache", "f32", "fp32-cache", kv_cache="prefix", matched=False),
         Pair("Q8_0 / int8 + K/V cache", "q8_0", "int8-cache", kv_cache="prefix", matched=False),
         Pair("Q4_0 / int4 + K/V cache", "q4_0", "int4-cache", kv_cache="prefix", matched=False),
         Pair("f32 / fp32 + K/V cache dual", "f32", "fp32-cache", kv_cache="dual", matched=False),
         Pair("Q8_0 / int8 + K/V cache dual", "q8_0", "int8-cache", kv_cache="dual", matched=False),
         Pair("Q4_0 / int4 + K/V cache dual", "q4_0", "int4-cache", kv_cache="dual", matched=False),
         Pair("f32 / fp32 (openvino)", "f32", "fp32", provider="openvino"),
         Pair("Q8_0 / int8 (openvino)", "q8_0", "int8", provider="openvino"),
         Pair("Q4_0 / int4 (openvino)", "q4_0", "int4", provider="openvino"))


def selected_pairs(args) -> list:
    """The pairs --pairs names, in table order (without it every pair whose tie-lite provider runs here)."""
    if args.pairs:
        return [pair for pair in PAIRS if pair.label in args.pairs]
    return [pair for pair in PAIRS if pair.provider == "cpu" or openvino_offered()]


@functools.cache
def openvino_offered() -> bool:
    """Whether tie-lite's openvino provider runs here (its plugin installed, offering a CPU device)."""
    sys.path.insert(0, str(ROOT))
    import tie_lite

    try:
        return bool(tie_lite.openvino_devices())
    except tie_lite.TieLiteError:
        return False


def time_pair(pair: Pair, llama, lite, repeats: int, floor=None) -> dict:
    """A warm-up decode of each side, then `repeats` alternating (llama.cpp first); the row's numbers.
    Given `floor` (matmul_floor's), it runs third in each round, and the row has the exact ceiling."""
    runs = {"llama": [], "lite": [], "floor": []}
    for _ in range(repeats + 1):
        runs["llama"].append(llama())
        runs["lite"].append(lite())
        if floor:
            runs["floor"].append(floor())
    a, b = runs["llama"], runs["lite"]
    stable = len({r.ids for r in a}) == 1 and len({r.ids for r in b}) == 1
    median = lambda side, field: float(np.median([getattr(r, field) for r in side[1:]]))  # noqa: E731
    ceiling = dict(floor_s=median(runs["floor"], "decode_s")) if floor else {}
    return dict(pair=pair, decode=median(a, "decode_s") / median(b, "decode_s"), **ceiling,
                process=median(a, "process_s") / median(b, "process_s"),
                equal=float(np.mean(np.array(a[0].ids) == np.array(b[0].ids))), stable=stable,
                llama_s=median(a, "decode_s"), lite_s=median(b, "decode_s"),
                llama_mb=max(r.peak_mb for r in a), lite_mb=max(r.peak_mb for r in b))


def print_table(rows: list, sizes: dict) -> None:
    print("\n| llama.cpp / tie-lite | decode time, llama.cpp / tie-lite | whole process | generated positions "
          "equal | llama.cpp peak RSS | tie-lite peak RSS | files (GGUF / ONNX) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        pair = row["pair"]
        equal = f"{row['equal']:.0%}" + ("" if pair.matched else " (other order, not comparable)")
        equal += "" if row["stable"] else " (repeats differed)"
        print(f"| {pair.label} | {row['decode']:.2f}x ({row['llama_s']:.2f} s / {row['lite_s']:.2f} s) | "
              f"{row['process']:.2f}x | {equal} | {row['llama_mb']:.0f} MB | {row['lite_mb']:.0f} MB | "
              f"{sizes[pair.gguf]:.0f} / {sizes[pair.onnx]:.0f} MB |")


def print_ceilings(rows: list, gflop: float) -> None:
    """For the exact float32 pairs: llama.cpp's time over the matmul floor's, and the pair's share of it."""
    for row in (row for row in rows if "floor_s" in row):
        ceiling = row["llama_s"] / row["floor_s"]
        print(f"matmul ceiling, {row['pair'].label}: llama.cpp / the forward passes' weight matmuls alone through "
              f"onnxruntime ({gflop:.1f} GFLOP, {gflop / row['floor_s']:.0f} GFLOP/s, {row['floor_s']:.2f} s) "
              f"{ceiling:.2f}x; tie-lite's {row['decode']:.2f}x is {row['decode'] / ceiling:.0%} of it "
              f"(its decode: {gflop / row['lite_s']:.0f} GFLOP/s of those products)")


# ---------------------------------------------------------------------------- main

def prepare(args, build: Path) -> tuple:
    """The model, its GGUF files and exports (made once, kept in --work), the prompt, and skip notes."""
    from transformers import AutoTokenizer

    folder = args.work / "models" / shape_tag(args)
    hf = folder / "hf"
    if not (hf / "config.json").is_file():
        print(f"building the random Dream model in {hf}", flush=True)
        save_dream(hf, args)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    converter = patched_converter(llama_source_of(build), args.work, tokenizer)
    ggufs = gguf_files(hf, folder / "gguf", converter, llama_tool(build, "llama-quantize"), args.threads,
                       args.work)
    onnx, notes = onnx_exports(hf, folder, export_options(), {pair.onnx for pair in selected_pairs(args)})
    ids = prompt_ids(tokenizer, args.prompt_tokens, args.seed)
    return tokenizer, ggufs, onnx, ids, notes


def check_prompt(build: Path, gguf: Path, tokenizer, ids: list) -> str:
    """The prompt's text; both tokenizers must turn it back into `ids`."""
    text = tokenizer.decode(ids)
    if tokenizer.encode(text) != ids:
        raise RuntimeError("the prompt does not round-trip through the HF tokenizer")
    out = run([llama_tool(build, "llama-tokenize"), "-m", gguf, "-p", text, "--ids", "--log-disable"]).stdout
    llama_ids = ast.literal_eval(out.strip().splitlines()[-1])
    if llama_ids != ids:
        raise RuntimeError(f"llama.cpp tokenizes the prompt differently: {llama_ids[:10]}... vs {ids[:10]}...")
    return text


def describe(args, build: Path) -> str:
    """The run's settings and the algorithm pair, as printed above the table."""
    length, block = args.prompt_tokens + args.gen, args.gen // args.steps
    return (f"llama.cpp {llama_version(llama_source_of(build))}; model {shape_tag(args)}\n"
            f"P={args.prompt_tokens} G={args.gen} S={args.steps} (L={length}), {args.threads} threads each, "
            f"repeats={args.repeats}; load average {os.getloadavg()[0]:.2f}\n"
            f"pair 'greedy, leftmost first, {block} tokens a step': llama-diffusion-cli --temp 0 --top-k 1 --top-p 1 "
            f"--diffusion-block-length {length} --diffusion-steps {args.steps} -ub {length} | tie-lite "
            f"DecodeConfig(gen_length={args.gen}, block_size={block}, steps={args.steps})")


def measure(args) -> int:
    args.work.mkdir(parents=True, exist_ok=True)
    build = build_llama(args.work, os.cpu_count() or 2) if args.build else (args.llama_dir or args.work / "build")
    cli = llama_tool(build, "llama-diffusion-cli")
    if llama_source_of(build) is None:
        raise FileNotFoundError(f"{build} is not a CMake build folder (no CMakeCache.txt naming its source)")
    tokenizer, ggufs, onnx, ids, notes = prepare(args, build)
    text = check_prompt(build, ggufs["f32"], tokenizer, ids)
    vocab, length = tokenizer.get_vocab(), args.prompt_tokens + args.gen
    print("\n" + describe(args, build), flush=True)
    rows = []
    for pair in (pair for pair in selected_pairs(args) if pair.onnx in onnx):
        block = args.cache_block if pair.kv_cache else args.gen // args.steps
        llama = lambda: llama_decode(cli, ggufs[pair.gguf], text, args.gen, length, args.steps,  # noqa: E731
                                     args.threads, vocab)
        lite = lambda: tie_lite_decode(onnx[pair.onnx], ids, args.gen, block, args.steps,  # noqa: E731
                                       args.threads, pair.kv_cache, pair.provider)
        if not pair.matched:
            print(f"{pair.label}: tie-lite DecodeConfig(gen_length={args.gen}, block_size={block}, "
                  f"steps={args.steps}), confidence order: not the same algorithm as llama.cpp's", flush=True)
        exact_fp32 = pair.onnx == "fp32" and pair.matched and pair.provider == "cpu"
        rows.append(time_pair(pair, llama, lite, args.repeats, matmul_floor(args) if exact_fp32 else None))
        print(f"{pair.label}: llama.cpp / tie-lite {rows[-1]['decode']:.2f}x, {rows[-1]['equal']:.0%} equal",
              flush=True)
    sizes = {**{k: size_mb(v) for k, v in ggufs.items()}, **{k: size_mb(v) for k, v in onnx.items()}}
    print_table(rows, sizes)
    print_ceilings(rows, args.steps * floor_gflop(args))
    for note in notes:
        print(f"note: {note}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return measure(args)
    except (RuntimeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
