"""`dspark-jax` command line (also `python -m dspark_jax`): every command and its flags.

The parsers import nothing heavy (`command_names.py` holds the names they share with deeper layers), so
`--help` answers at once; a command's module, and JAX with it, loads only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from dspark_jax.command_names import (
    ANSWER_SOURCES,
    DEFAULT_TARGET,
    DRAFTER_FORMATS,
    DTYPE_NAMES,
    FEATURE_DTYPES,
    HELD_OUT,
    RUN_FILE,
    SCHEDULES,
    STOPPED_EXIT_CODE,
    TARGET_PRESETS,
    WEIGHTS,
    WEIGHTS_HELP,
)
from dspark_jax.eval_data import TASKS

# command -> "module:function" that runs it
COMMANDS = {
    "generate": "dspark_jax.generate_command:generate_command",
    "prepare-data": "dspark_jax.train_commands:prepare_data",
    "prepare-cache": "dspark_jax.train_commands:prepare_cache",
    "train": "dspark_jax.train_commands:train",
    "eval": "dspark_jax.eval_commands:evaluate_command",
    "bench": "dspark_jax.eval_commands:bench_command",
    "calibrate": "dspark_jax.calibrate_command:calibrate_command",
    "export": "dspark_jax.export_command:export_command",
    "plan": "dspark_jax.plan_command:plan_command",
}


def tree_argument(text: str):
    """argparse type of --tree: TreeTemplate.parse, its message shown as written (argparse hides a ValueError's)."""
    from dspark_jax.tree import TreeTemplate  # at parse time, not for --help

    try:
        return TreeTemplate.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def comma_list(kind):
    def parse(text: str):
        try:
            return tuple(kind(x) for x in text.split(",") if x)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    return parse


def _mesh_shape(text: str) -> tuple[int, int]:
    try:
        data, model = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mesh takes DATAxMODEL, e.g. 1x8; got {text!r}") from None
    return data, model


def _prompt_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as lone surrogates
        raise argparse.ArgumentTypeError("the prompt is not valid UTF-8 text: re-encode it, or pass it in a "
                                         "UTF-8 file with --prompt-file") from None
    return text


def _prompt_file(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read prompt file {path}: {error.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        where = "standard input" if path == "-" else path
        raise argparse.ArgumentTypeError(f"{where} is not UTF-8 text (byte {error.start}): re-encode it as "
                                         "UTF-8") from None


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text with the target model")
    p.add_argument("--prompt", action="append", type=_prompt_text, default=[],
                   help="prompt text; repeat the flag (or mix it with --prompt-file) for a batch of prompts")
    p.add_argument("--prompt-file", action="append", type=_prompt_file, dest="prompt", metavar="PATH",
                   help="a UTF-8 file whose whole text is one prompt; - reads standard input")
    p.add_argument("--input", type=Path, default=None, metavar="FILE",
                   help='a JSONL file of prompts, one object per line with "prompt", "turns" or "messages" (and '
                        'optional "max_new_tokens", "temperature", "top_k", "top_p"); needs --output')
    p.add_argument("--output", type=Path, default=None, metavar="FILE",
                   help="with --input: the JSONL file the completions are appended to, batch by batch; the same "
                        "command again after a kill resumes it")
    p.add_argument("--batch-size", type=int, default=None,
                   help="with --input: prompts decoded at once, grouped by length (default 8)")
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help="'default' (Gemma 3 270M from its PyPI package), a .gguf file or an HF directory")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn of the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="compute and cache dtype of the target")
    p.add_argument("--mesh", type=_mesh_shape, default=None,
                   help="DATAxMODEL device mesh to shard over, e.g. 1x8 (default: one device)")
    p.add_argument("--weights", choices=WEIGHTS, default="auto", help=WEIGHTS_HELP)
    p.add_argument("--drafter", default="default",
                   help="speculative drafter: default (for the default target the fastest measured: dspark+ngram "
                        "when greedy, none when sampling, dspark under --schedule hardware; for other targets "
                        "none), none (plain decoding), dspark / dflash / eagle3 (a "
                        "shipped drafter), ngram (prompt lookup), model:PATH (a small .gguf or HF model with the "
                        "target's vocabulary), the "
                        "directory of a trained drafter (ours, or DeepSpec's, vLLM's or SGLang's format), or any "
                        "of these drafters + '+ngram' (with prompt lookup, per row whichever draft is expected to "
                        "last longer)")
    p.add_argument("--gamma", type=int, default=None,
                   help="draft tokens per step, chain (default: the drafter's block size, else 7)")
    p.add_argument("--tree", type=tree_argument, default=None,
                   help="draft tree WIDTHxDEPTH (top-WIDTH candidates per depth), e.g. 3x4; 1xN is a chain")
    p.add_argument("--schedule", choices=SCHEDULES, default="full",
                   help="full: verify the whole draft; hardware: verify the prefix DSpark's hardware-aware "
                        "scheduler picks from the drafter's confidences and step costs profiled at start")


MAX_SEQUENCES_HELP = "use only the first N prepared sequences (default: all), e.g. to keep a run's data fixed"


def _add_mesh(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mesh", type=_mesh_shape, default=None,
                   help="DATAxMODEL device mesh, e.g. 4x2: batches split over DATA, the target tensor-parallel "
                        "over MODEL (default: one device; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                        "gives N devices)")
    p.add_argument("--fsdp", action="store_true",
                   help="with --mesh: also split parameters (and the drafter's optimizer state) over DATA, for "
                        "models that do not fit one device")


def _add_distributed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--distributed", action="store_true",
                   help="with --mesh: join a multi-process job (jax.distributed; found under SLURM, Open MPI, TPU "
                        "pods, else from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) and shard over "
                        "the devices of all its processes (docs/scaling.md)")


def _add_training(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-data", help="ShareGPT prompts answered by the target (training sequences)")
    p.add_argument("--target", default=DEFAULT_TARGET, help="'default' (Gemma 3 270M), a .gguf file or an HF directory")
    p.add_argument("--out", type=Path, required=True, help="output directory (resumed when it exists)")
    p.add_argument("--num-prompts", type=int, default=512,
                   help="ShareGPT prompts to answer: first turns of the training conversations, then their later "
                        "turns (~10.5K first turns; a larger count extends an existing directory)")
    p.add_argument("--max-prompt-tokens", type=int, default=256, help="prompt tokens kept, chat template included")
    p.add_argument("--max-new-tokens", type=int, default=256, help="response tokens per prompt")
    p.add_argument("--answers", choices=ANSWER_SOURCES, default="target",
                   help="who answers: target (generated here: slow) or sharegpt (the dataset's own first reply to "
                        "each first turn, tokenised only: no generation, nothing sampled)")
    p.add_argument("--temperature", type=float, default=0.7, help="the target's sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=0.8, help="1 = off")
    p.add_argument("--top-k", type=int, default=20, help="0 = off")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded at once")
    p.add_argument("--shard-size", type=int, default=64, help="conversations per shard file")
    _add_mesh(p)

    p = sub.add_parser("prepare-cache", help="write the target's features for prepared data (offline mode)")
    p.add_argument("--target", default=DEFAULT_TARGET, help="'default' (Gemma 3 270M), a .gguf file or an HF directory")
    p.add_argument("--data", type=Path, required=True, help="directory written by prepare-data")
    p.add_argument("--out", type=Path, required=True, help="output directory for the cache shards")
    p.add_argument("--length", type=int, default=512, help="tokens per sequence (cut or padded)")
    p.add_argument("--num-features", type=int, default=5, help="target layers fused by the drafter (K)")
    p.add_argument("--shard-size", type=int, default=64, help="conversations per shard file")
    p.add_argument("--feature-dtype", choices=FEATURE_DTYPES, default="bfloat16",
                   help="how the target's fused-layer features are stored: float8 (scaled per token and "
                        "layer) takes 0.59x the disk of bfloat16")
    p.add_argument("--max-sequences", type=int, default=None, help=MAX_SEQUENCES_HELP)
    _add_mesh(p)

    p = sub.add_parser("train", help="train a DSpark, DFlash or EAGLE-3 drafter for the target",
                       epilog=f"Resumes from OUT/checkpoints when started again with the same drafter settings "
                              f"(OUT/{RUN_FILE} records them). On SIGTERM it saves, exports the drafter it has and "
                              f"exits with status {STOPPED_EXIT_CODE}; a finished run exits 0.")
    p.add_argument("--drafter", required=True, metavar="KIND",
                   help="the kind of drafter to train: dspark, dflash, eagle3 or another registered kind "
                        "(dspark_jax/drafter_kinds.py)")
    p.add_argument("--target", default=DEFAULT_TARGET, help="'default' (Gemma 3 270M), a .gguf file or an HF directory")
    p.add_argument("--data", type=Path, required=True, help="directory written by prepare-data")
    p.add_argument("--cache", type=Path, default=None, help="directory written by prepare-cache (else online)")
    p.add_argument("--out", type=Path, required=True,
                   help="run directory: checkpoints, metrics.jsonl, the exported drafter (resumed when it exists)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step")
    p.add_argument("--length", type=int, default=512, help="tokens per sequence (cut or padded)")
    p.add_argument("--max-sequences", type=int, default=None, help=MAX_SEQUENCES_HELP)
    p.add_argument("--block-size", type=int, default=7,
                   help="draft depth γ: the block size (EAGLE-3: its drafting steps, unrolled in training)")
    p.add_argument("--layers", type=int, default=None, help="drafter layers, block drafters only (default 1)")
    p.add_argument("--num-features", type=int, default=None,
                   help="target layers fused by the drafter (K); default 5 for DSpark/DFlash, 3 for EAGLE-3")
    p.add_argument("--rank", type=int, default=None, help="DSpark's Markov head rank (default 256)")
    p.add_argument("--lookup-inputs", action="store_true",
                   help="DSpark/DFlash: each block slot also reads the token prompt lookup proposes there and its "
                        "match length, so the drafter learns when to copy its context (ours; no export to other "
                        "formats)")
    p.add_argument("--qk-norm", action="store_true",
                   help="normalise each attention head's queries and keys (Qwen3-style), as the drafters of "
                        "DeepSpec, vLLM and SGLang do: needed to export a DSpark/DFlash drafter to their formats")
    p.add_argument("--draft-vocab", type=int, default=32768,
                   help="draft over the N most frequent response tokens (0: the target's whole vocabulary)")
    p.add_argument("--learning-rate", type=float, default=6e-4)
    p.add_argument("--anchors", type=int, default=8,
                   help="random block anchors per sequence and step (DeepSpec: 512; cost grows with it)")
    for part in ("ce", "tv", "confidence"):
        p.add_argument(f"--{part}-weight", type=float, default=None,
                       help=f"DSpark only: weight of its {part} loss term (default: DeepSpec's, in "
                            "train/dspark_loss.py)")
    p.add_argument("--bf16", action="store_true", help="compute the drafter in bfloat16 (weights stay float32)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--export-dtype", choices=("float32", "float16"), default="float32",
                   help="weights of the exported drafter (float16 halves the file; loading casts back)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and anchor-sampling seed")
    _add_mesh(p)
    _add_distributed(p)


def _add_evaluation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="tau, accept rates, speedup, calibration and losslessness per task")
    _evaluation_common(p)
    p.add_argument("--tasks", type=comma_list(str), default=TASKS,
                   help=f"comma-separated shipped tasks ({','.join(TASKS)}) or JSONL files of {{\"turns\": [...]}}")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens decoded per prompt")
    p.add_argument("--limit", type=int, default=None, help="first N prompts of each task")
    p.add_argument("--batch-size", type=int, default=1, help="prompts decoded at once")
    p.add_argument("--output", type=Path, default=Path("eval-results"),
                   help="directory for results.json, results.md and the plots")

    p = sub.add_parser("bench", help="tokens/s of autoregressive decoding vs each drafter, batch x temperature")
    _evaluation_common(p)
    p.add_argument("--task", default="mt-bench", help="prompts to decode (shipped task or JSONL file)")
    p.add_argument("--batch-sizes", type=comma_list(int), default=(1, 4, 8),
                   help="comma-separated batch sizes (batch b decodes the task's first b prompts)")
    p.add_argument("--temperatures", type=comma_list(float), default=(0.0, 1.0),
                   help="comma-separated decoding temperatures")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens decoded per prompt")
    p.add_argument("--output", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--plot", type=Path, default=None,
                   help="also draw total tokens/s against per-row tokens/s over the batch sizes (a PNG), e.g. with "
                        "--batch-sizes 1,2,4,8,16,32,64")
    p.add_argument("--mesh", type=_mesh_shape, default=None,
                   help="DATAxMODEL device mesh: rows over DATA, the target over MODEL (default: one device)")


def _evaluation_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--drafter", type=comma_list(str), default=("default",),
                   help="comma-separated drafters: default (generate's greedy default, dspark+ngram for the "
                        "default target), dspark, dflash, eagle3 (shipped), ngram, model:PATH or exported drafter "
                        "directories, each optionally + '+ngram'")
    p.add_argument("--target", default=DEFAULT_TARGET, help="'default' (Gemma 3 270M), a .gguf file or an HF directory")
    p.add_argument("--weights", choices=WEIGHTS, default="auto", help=WEIGHTS_HELP)
    p.add_argument("--gamma", type=int, default=None,
                   help="draft tokens per step, chain (default: the drafter's block size, else 7)")
    p.add_argument("--tree", type=tree_argument, default=None, help="draft tree WIDTHxDEPTH, e.g. 3x4")
    p.add_argument("--schedule", type=comma_list(str), default=("full",),
                   help="comma-separated: full (verify the whole draft) and/or hardware (DSpark's hardware-aware "
                        "prefix scheduler); a drafter with a confidence head runs once per schedule, others once")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit the STS temperatures a DSpark drafter's scheduler uses")
    p.add_argument("--drafter", default="dspark",
                   help="dspark (the shipped one) or an exported DSpark drafter directory")
    p.add_argument("--target", default=DEFAULT_TARGET, help="'default' (Gemma 3 270M), a .gguf file or an HF directory")
    p.add_argument("--weights", choices=WEIGHTS, default="auto", help=WEIGHTS_HELP)
    p.add_argument("--prompts", default=HELD_OUT,
                   help=f"{HELD_OUT} (ShareGPT's held-out split) or a JSONL file of {{\"turns\": [...]}}")
    p.add_argument("--limit", type=int, default=32, help="prompts to decode")
    p.add_argument("--max-prompt-tokens", type=int, default=256, help="skip longer prompts (chat-formatted)")
    p.add_argument("--temperatures", type=comma_list(float), default=(0.0, 1.0),
                   help="decoding temperatures to fit, comma-separated; a scheduled run uses its own one's fit")
    p.add_argument("--gamma", type=int, default=None, help="draft depth to fit (default: the drafter's block size)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens decoded per held-out prompt")
    p.add_argument("--batch-size", type=int, default=4, help="prompts decoded at once")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export",
                       help="write a trained drafter in DeepSpec's, vLLM's or SGLang's format (docs/interop.md)")
    p.add_argument("--drafter", required=True,
                   help="dspark / dflash / eagle3 (a shipped drafter) or a drafter directory, in our format or a "
                        "public one")
    p.add_argument("--format", required=True, choices=DRAFTER_FORMATS,
                   help="deepspec (its Qwen3DSparkModel / Qwen3Eagle3Model), vllm (Qwen3DSparkModel, "
                        "DFlashDraftModel, LlamaForCausalLMEagle3) or sglang (the same architectures as vLLM)")
    p.add_argument("--out", type=Path, required=True, help="directory for config.json and model.safetensors")
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help="the target the drafter was trained for: its embedding and head are written too")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="dtype of the float tensors")


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="memory per device of training and generation for a large target on a mesh, "
                                    "compiled on virtual CPU devices without weights (docs/scaling.md)")
    p.add_argument("--target-config", required=True, choices=TARGET_PRESETS,
                   help="a public target's architecture (models/presets.py)")
    p.add_argument("--mesh", type=_mesh_shape, required=True, help="DATAxMODEL, e.g. 1x8")
    p.add_argument("--fsdp", action="store_true", help="split parameters and optimizer state over DATA too")
    p.add_argument("--train", action="store_true", help="plan the training step (default: both)")
    p.add_argument("--generate", action="store_true", help="plan speculative generation (default: both)")
    p.add_argument("--batch", type=int, default=8, help="sequences per step (training) or prompts (generation)")
    p.add_argument("--length", type=int, default=1024,
                   help="tokens per training sequence; prompt tokens and new tokens each for generation")
    p.add_argument("--drafter", default="dspark", help="drafter kind: dspark, dflash or eagle3")
    p.add_argument("--block-size", type=int, default=7, help="draft depth γ")
    p.add_argument("--draft-vocab", type=int, default=32768, help="draft vocabulary size (0: the target's)")


class _HelpWithDefaults(argparse.HelpFormatter):
    """--help shows each option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        unset = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if action.option_strings and not unset and "default" not in help_text:
            if isinstance(default, tuple):
                default = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in default)
            help_text += f" (default: {default})"
        return help_text


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dspark-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_generate, _add_training, _add_evaluation, _add_calibrate, _add_export, _add_plan):
        add(sub)
    assert set(sub.choices) == set(COMMANDS)
    for command in sub.choices.values():
        command.formatter_class = _HelpWithDefaults
    return parser


def main(argv: list[str] | None = None) -> None:
    command_line = parser()
    args = command_line.parse_args(argv)
    module, function = COMMANDS[args.command].split(":")
    run = getattr(importlib.import_module(module), function)
    keep_compiled_programs()
    try:
        run(args)
    except (ValueError, FileNotFoundError) as error:
        command_line.exit(2, f"dspark-jax {args.command}: error: {error}\n")


def keep_compiled_programs() -> None:
    """XLA programs that took over a second to compile are kept on disk (JAX's persistent compilation cache,
    in ~/.cache/dspark-jax/xla, the least recently used dropped past 2 GiB), so a command run again starts
    without compiling them: a one-off `generate` spends most of its time compiling otherwise.
    JAX_COMPILATION_CACHE_DIR, when set, decides instead (an empty value turns the cache off)."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    import jax

    from dspark_jax.kernels.cpu_kernels import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_compilation_cache_max_size", 2 << 30)


if __name__ == "__main__":
    main()
