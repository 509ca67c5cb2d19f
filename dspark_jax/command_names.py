"""Names the command line offers and deeper layers check, free of JAX so that `dspark-jax --help` answers
at once: the default target, the weight forms, the verification schedules, the compute and cache dtypes,
the files a resumable command records, and its exit status when stopped."""

DEFAULT_TARGET = "default"  # Gemma 3 270M (Q4_K_M) from its PyPI package

# How a target's matrices are held and multiplied (docs/kernels.md, "CPU kernels"):
#   gguf     GGUF blocks as stored (Q4_K, Q8_0, ...), multiplied by the C++ CPU kernels: the fastest decode
#            step, and the model is exactly the file's (its blocks decode bit-exactly to the float32 path's)
#   float32  dequantized float32 rows, multiplied by the CPU kernels
#   xla      dequantized arrays in `dtype`, multiplied by XLA (GPU/TPU, meshes, training, bfloat16)
#   auto     gguf for a float32 GGUF target on one CPU device where the kernels are built, unless a step
#            processes more than GGUF_MAX_STEP_TOKENS tokens (batch x draft-tree nodes); xla otherwise
WEIGHTS = ("auto", "gguf", "float32", "xla")
# The fused kernels read the weights once per 16 tokens, so up to 16 tokens a step they are the faster form;
# beyond, XLA's float32 GEMM (~300 GFLOP/s here, the kernels ~120) wins: Gemma 3 270M steps on the 2-core
# development machine, gguf vs xla, 16 tokens 70 vs 94 ms, 32 tokens 149 vs 133 ms (docs/performance.md).
GGUF_MAX_STEP_TOKENS = 16
WEIGHTS_HELP = ("how the target's matrices are held: gguf (as the GGUF file stores them, multiplied by the "
                "C++ CPU kernels; fastest on a CPU), float32 (dequantized rows, CPU kernels), xla (dequantized "
                "arrays multiplied by XLA: GPUs, meshes, bfloat16), auto (default: gguf for a float32 GGUF target "
                f"on one CPU where the kernels are built and no step runs more than {GGUF_MAX_STEP_TOKENS} tokens, "
                "i.e. batch x draft tokens + batch; else xla)")

SCHEDULES = ("full", "hardware")  # verify the whole draft / the prefix DSpark's hardware-aware scheduler picks
DTYPE_NAMES = ("float32", "bfloat16")  # compute and cache dtypes of the target
FEATURE_DTYPES = ("bfloat16", "float8")  # how a target cache stores hidden states (train/target_cache.py)
ANSWER_SOURCES = ("target", "sharegpt")  # who answers the prompts prepare-data writes (train/regenerate.py)

RUN_FILE = "run.json"  # what a train run directory trains, recorded at its first start
DATA_FILE = "data.json"  # how a prepare-data directory's shards are written, recorded at its first start
STOPPED_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process the signal ended
HELD_OUT = "sharegpt"  # calibrate's default prompts: ShareGPT's held-out split
DRAFTER_FORMATS = ("deepspec", "vllm", "sglang")  # dspark_jax/interop/formats.py: FORMATS
TARGET_PRESETS = ("qwen3-8b", "qwen3-14b", "gemma3-12b", "llama3-8b")  # models/presets.py: PRESETS
