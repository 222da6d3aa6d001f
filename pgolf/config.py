"""Typed, sectioned, frozen configuration.

The root :class:`Config` holds one frozen dataclass per section (data, model, optim, train, eval, ttt,
quant, artifact, run). Each component receives only its own section.

Precedence: defaults < preset < environment < command line (``KEY=value``). Leaf field names are unique
across sections, so a field is addressed by its flat name, upper-cased in the environment exactly as
the challenge's scripts spell them (``NUM_LAYERS``, ``MATRIX_LR``, ``SEED``, ``RUN_ID``, ``DATA_PATH``).
pgolf's own machine settings carry a ``pgolf_`` prefix in their field names, so their variables keep
the spelling they always had (``PGOLF_DEVICE``, ``PGOLF_AUTO_RESUME``, ``PGOLF_CACHE_DIR``) and no
generic name such as ``DEVICE`` is read from the environment.
Values are coerced from the field's annotation; an unknown key is an error that lists the closest
valid names.

A ``Literal[...]`` annotation is the one declared list of a choice's names: the module that owns the
choice resolves the names through its table (``ACTIVATIONS``, ``COMPRESSORS``, ...), and
tests/unit/test_choice_lists.py checks that each table has exactly these names.
"""

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from pgolf.errors import ConfigError

BASELINE_CONTROL_PATTERNS = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights",
)
# Small tensors of the optional features (gates, lambdas): AdamW-trained and kept in float like the
# baseline's controls. They do not exist unless their feature is on, so the baseline is unchanged.
FEATURE_CONTROL_PATTERNS = (
    "skip_gates", "attn_gate", "smear_gate", "parallel_resid_lambdas", "parallel_post_lambdas",
)
DEFAULT_CONTROL_PATTERNS = BASELINE_CONTROL_PATTERNS + FEATURE_CONTROL_PATTERNS


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    # Empty data_path / tokenizer_path mean "the embedded default dataset" (built from Python's docs).
    data_path: str = ""
    tokenizer_path: str = ""
    # Where the bytes of the validation targets (the BPB denominator) come from (docs/caseops.md):
    # "auto" = the byte sidecars (fineweb_val_bytes_*.bin, CaseOps) when the validation shards have them,
    # else the tokenizer's byte tables; "on" = the sidecars, which must be there (CaseOps data); "off" =
    # the byte tables, and CaseOps data (sidecars present, or a CaseOps tokenizer) is refused. A fixed
    # value lets an exported script leave out the code it will never run.
    byte_sidecars: Literal["auto", "on", "off"] = "auto"


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    # MLP hidden width = int(mlp_mult * model_dim); a float so 3.5x or 4x widths are one flag.
    mlp_mult: float = 2.0
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    qk_gain_init: float = 1.5
    tied_embed_init_std: float = 0.005
    # Substring patterns naming "control" tensors: optimized by Adam, kept in fp32 in the artifact.
    control_tensor_name_patterns: tuple[str, ...] = DEFAULT_CONTROL_PATTERNS
    # Token id that starts every document (SPEC 1.4); features that look back stop at it.
    bos_token_id: int = 1
    # ---- record-stack features (SPEC 4-5); every default is "off" and reproduces the baseline.
    # MLP activation, resolved through ACTIVATIONS in pgolf/model/block.py.
    activation: Literal["relu2", "leaky_relu2"] = "relu2"
    # Rotate only the first ROPE_DIMS dims of each head (0 = the whole head, the baseline).
    rope_dims: int = 0
    # NTK-style base rescale when the sequence is longer than this (0 = never rescale).
    rope_train_seq_len: int = 0
    # Multiply both RMSNorm outputs of physical block i by 1/sqrt(i+1).
    ln_scale: bool = False
    # Exclusive self-attention on the last N layers (0 = off).
    xsa_last_n: int = 0
    # Sigmoid gates on the U-Net skip connections: x = g*x + (1-g)*skip.
    skip_gates_enabled: bool = False
    # Depth recurrence: blocks LOOP_START..LOOP_END (inclusive) run NUM_LOOPS extra times once looping
    # is switched on (ENABLE_LOOPING_AT). NUM_LOOPS=0 = off.
    num_loops: int = 0
    loop_start: int = 0
    loop_end: int = 0
    # Parallel residuals from this physical layer on (-1 = off); "single" = GPT-J form (SPEC 4.4.1),
    # "two_lane" = attention and MLP lanes with learned lambdas (SPEC 5.1).
    parallel_residual_start: int = -1
    parallel_residual_mode: Literal["single", "two_lane"] = "single"
    # Input-dependent SmearGate on the embeddings (SPEC 5.4), with the BOS fix.
    smear_gate_enabled: bool = False
    # Per-head attention output gate (SPEC 5.5): "attn_out" (identity at init), "gated" (Qwen-style),
    # "sparse" (the TOP record's). "none" = off.
    attn_out_gate: Literal["none", "attn_out", "gated", "sparse"] = "none"
    sparse_attn_gate_scale: float = 1.0
    # Orthogonal init (gain 1) for every non-zero-init linear with both dims >= 64 (SPEC 4.5).
    ortho_init: bool = False
    # Attention kernel: "auto" picks FlashAttention 3 on Hopper when installed, else PyTorch SDPA
    # (which picks flash / memory-efficient / math itself); the others force one. "eager" is the
    # plain matmul-softmax reference (any device).
    attention_backend: Literal["auto", "fa3", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_math", "eager"] = "auto"
    # VarLen attention (SPEC 5.2): no token attends across a BOS document boundary, in training and
    # evaluation (FA3 varlen on GPU, a block-diagonal causal mask elsewhere).
    doc_isolated_attention: bool = False
    # Fused Triton kernels (GPU; the eager reference elsewhere): softcapped cross-entropy (SPEC 5.8)
    # and the LeakyReLU^2 / ReLU^2 MLP.
    fused_cross_entropy: bool = False
    fused_mlp: bool = False
    # FP8 (e4m3, per-tensor scaled) matmuls for the large block linears on GPUs that support them.
    fp8_matmul: bool = False


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    embed_lr: float = 0.6
    head_lr: float = 0.008
    tied_embed_lr: float = 0.05
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    muon_momentum: float = 0.95
    muon_backend_steps: int = 5
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    # Global gradient-norm clip over all parameters before stepping (0 = off).
    grad_clip_norm: float = 0.0
    # MuonEq-R: normalise each row of the momentum update before Newton-Schulz (SPEC 4.6).
    muon_row_normalize: bool = False
    # Newton-Schulz coefficients: the baseline's fixed quintic or the Polar Express schedule (SPEC 5.7).
    muon_ns_coefficients: Literal["quintic", "polar_express"] = "quintic"
    # Decoupled weight decays, scaled by the scheduled LR: Muon matrices, scalar AdamW, embedding AdamW.
    muon_wd: float = 0.0
    adam_wd: float = 0.0
    embed_wd: float = 0.0
    # Several ranks: reduce-scatter the matrix gradients, Newton-Schulz on each rank's shard, all-gather
    # the updates (same results as the replicated optimizer; less communication and memory).
    muon_sharded: bool = False
    # Muon weight-decay taper (SPEC 5.12, record 1.0678): MUON_WD times a multiplier that is 1 until training
    # progress MUON_WD_TAPER_START, then falls linearly to MUON_WD_TAPER_FINAL at progress 1.
    muon_wd_taper: bool = False
    muon_wd_taper_start: float = 0.70
    muon_wd_taper_final: float = 0.50


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    seed: int = 1337
    iterations: int = 20000
    train_batch_tokens: int = 524_288
    train_seq_len: int = 1024
    # Fraction of the budget (wall clock, or iterations without a cap) over which the LR decays to 0.
    # The baseline's 1200 steps of ~13,780 on 8xH100 is about 0.087 of its 600 s.
    warmdown_frac: float = 0.087
    # Floor of the warm-down LR multiplier (SPEC 5.9; 0 = decay to zero).
    min_lr: float = 0.0
    # Compile-priming steps run before the clock starts; model and optimizer state are restored after.
    warmup_steps: int = 20
    max_wallclock_seconds: float = 600.0
    train_log_every: int = 200
    val_loss_every: int = 1000
    compile: bool = False
    # Seconds taken off MAX_WALLCLOCK_SECONDS for GPTQ calibration on training data (SPEC 4.7).
    gptq_reserve_seconds: float = 0.0
    # Fraction of training progress at which depth recurrence switches on (with NUM_LOOPS > 0).
    enable_looping_at: float = 0.0
    # EMA of the weights (0 = off), updated after every step from EMA_START_STEP; applied before
    # evaluation and export (SPEC 4.9).
    ema_decay: float = 0.0
    ema_start_step: int = 0
    # "sequential" = the baseline stream (SPEC 2.3); "shuffled" = the record's ShuffledSequenceLoader (SPEC 4.3).
    train_loader: Literal["sequential", "shuffled"] = "sequential"
    # Checkpoints (off the clock) every N steps and/or every N seconds of training time; 0 = off.
    # The newest CHECKPOINT_KEEP complete checkpoints are kept in RUN_DIR/checkpoints.
    checkpoint_every: int = 0
    checkpoint_every_seconds: float = 0.0
    checkpoint_keep: int = 2
    # Autocast dtype on CUDA: "auto" = bf16 where supported, else fp16 with loss scaling (T4).
    autocast_dtype: Literal["auto", "bf16", "fp16"] = "auto"


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    val_batch_size: int = 524_288
    # 0 = the whole validation split. A positive value (at least TRAIN_SEQ_LEN) scores only the first
    # N tokens, cut to whole sequences (quick looks; never for a reported score, and the report says so).
    val_max_tokens: int = 0
    # Evaluation sequence (window) length; 0 = TRAIN_SEQ_LEN.
    eval_seq_len: int = 0
    # Sliding-window evaluation (SPEC 4.12): windows of EVAL_SEQ_LEN every EVAL_STRIDE tokens, each
    # target scored once with the most context; EVAL_BATCH_WINDOWS windows per rank per batch.
    sliding_window_enabled: bool = False
    eval_stride: int = 64
    eval_batch_windows: int = 32
    # The challenge's evaluation budget, for the time projection in the report.
    eval_budget_seconds: float = 600.0


# Every name TTT_LORA_TARGETS may hold (the choice list of a tuple field): the block linears by their own
# name or with their branch ("proj" = both output projections, "attn.proj" = attention's), the whole
# branches and the head. pgolf/eval/ttt_lora.py resolves them; tests/unit/test_choice_lists.py holds the two
# together.
TTT_LORA_TARGET_NAMES = ("c_q", "c_k", "c_v", "proj", "fc", "attn.c_q", "attn.c_k", "attn.c_v", "attn.proj",
                         "mlp.fc", "mlp.proj", "attn", "mlp", "head")


@dataclass(frozen=True, kw_only=True)
class TTTConfig:
    # Legal score-first test-time training (SPEC 4.13): every chunk is scored before it is trained on.
    ttt_enabled: bool = False
    # "full": SGD on every parameter, state kept across chunks; "lora": low-rank adapters on
    # TTT_LORA_TARGETS, reset at every document start.
    ttt_mode: Literal["full", "lora"] = "full"
    ttt_chunk_tokens: int = 32_768
    ttt_lr: float = 0.005
    ttt_epochs: int = 3
    ttt_momentum: float = 0.9
    ttt_grad_clip: float = 1.0
    ttt_batch_seqs: int = 32
    ttt_lora_rank: int = 96
    ttt_lora_alpha: float = 144.0
    # Linears inside each block by name ("proj" = both output projections), plus "attn" and "mlp" (a d->d
    # adapter from the branch's input added to its output, TOP's O and MLP adapters) and "head" (d->V on
    # the logits): pgolf/eval/ttt_lora.py.
    ttt_lora_targets: tuple[str, ...] = ("c_q", "c_k", "c_v", "proj")
    # Document-level LoRA TTT (SPEC 5.3): chunks of this many tokens inside each document, AdamW on the
    # adapters with betas (0, 0.999).
    ttt_lora_chunk_tokens: int = 48
    ttt_lora_lr: float = 1e-4
    ttt_lora_wd: float = 1.0
    # LoRA mode: documents per batched step (sorted by length, longest batches first) and whether the
    # A factors stay warm across batches (B is always zeroed).
    ttt_lora_batch_docs: int = 64
    ttt_lora_warm_start_a: bool = False
    # LoRA mode: beta2 of the adapters' AdamW (SPEC 5.3: 0.999; 0.99 in the TOP run).
    ttt_beta2: float = 0.999
    # LoRA mode: own adapters for every visit of a looped block (every virtual layer slot, 17 with the
    # record's loop) instead of one per physical block (SPEC 5.3, TOP).
    ttt_lora_per_slot: bool = False
    # Phased TTT (SPEC 5.3): after TTT_PHASES cumulative boundaries of the first TTT_PHASE_PREFIX_DOCS
    # scored documents, global SGD on the base model over the already-scored documents (lr TTT_PHASE_LR,
    # TTT_MOMENTUM, TTT_CHUNK_TOKENS chunks, TTT_GRAD_CLIP, one epoch); 0 = off.
    ttt_phases: int = 0
    ttt_phase_prefix_docs: int = 2000
    ttt_phase_lr: float = 0.001


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    int8_keep_float_fp32_name_patterns: tuple[str, ...] = DEFAULT_CONTROL_PATTERNS
    # ---- quantization of the large matrices (SPEC 2.9, 4.10, 5.1, 5.6); defaults = the baseline's int8.
    # "rtn" = round to nearest; "gptq" = full-Hessian GPTQ on training-data calibration batches.
    quant_method: Literal["rtn", "gptq"] = "rtn"
    # Bits of the block matrices and of the embedding (2..8; codes stored one per int8 byte).
    matrix_bits: int = 8
    embed_bits: int = 8
    # Row scales: "percentile" (the baseline's 99.99984th percentile of |w|) or "sdclip" (k * row std / R).
    clip_method: Literal["percentile", "sdclip"] = "percentile"
    # SDClip k per group; 0 for MLP/attention means "use MATRIX_CLIP_SIGMAS".
    matrix_clip_sigmas: float = 12.85
    mlp_clip_sigmas: float = 0.0
    attn_clip_sigmas: float = 0.0
    embed_clip_sigmas: float = 20.0
    gptq_calibration_batches: int = 64
    gptq_damping: float = 0.01
    gptq_block_size: int = 128
    # Low-rank error correction of the LQER_TOP_K worst quantized tensors (SPEC 5.6).
    lqer_enabled: bool = False
    lqer_top_k: int = 3
    lqer_rank: int = 4
    lqer_asym: bool = True
    # Quantization-aware training: fake-quantize the chosen scheme from this fraction of training (0 = off).
    qat_start_frac: float = 0.0
    # Over the cap: 0 = fail with the margin; 1 = prune the cheapest +-1 codes until it fits, and report it.
    fit_to_cap: bool = False


@dataclass(frozen=True, kw_only=True)
class ArtifactConfig:
    # How the quantized model bytes are compressed (pgolf/artifact/compress.py): a stream compressor
    # (COMPRESSORS), "pergroup" (role-grouped streams, SPEC 5.11), "pergroup_lrzip" (the same with each role
    # stream through the external lrzip ZPAQ, as TOP; needs the lrzip program) or "auto" (try all, keep the
    # smallest; pergroup_lrzip only where lrzip is installed).
    compressor: Literal["zlib", "lzma", "brotli", "zstd", "auto", "pergroup", "pergroup_lrzip"] = "zlib"
    # 0 = no byte shuffle; 2 groups low and high bytes of 16-bit values before compression.
    byte_shuffle_stride: int = 0


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where and how a run executes, not what it computes. ``pgolf export`` resets this section (each run
    of the script picks its own), so none of it is baked into train_gpt.py or counted in its bytes."""

    # Empty run_id = a fresh one from the date, time and a random suffix.
    run_id: str = ""
    runs_dir: str = "runs"
    # Where the embedded default dataset is built and cached; "" = $XDG_CACHE_HOME/pgolf, else ~/.cache/pgolf.
    pgolf_cache_dir: str = ""
    # Resume RUNS_DIR/RUN_ID when that directory exists (a worker group restarted by torchrun), start it
    # when it does not; off = an existing directory is an error.
    pgolf_auto_resume: bool = False
    # Device of every rank ("cpu", "cuda", "cuda:1", ...); "" = CUDA (by local rank) when available, else CPU.
    pgolf_device: str = ""
    # Mirror checkpoints, logs, report and artifact to this URL (hf://user/repo[/path], a folder, or an fsspec
    # URL) in the background; "" = off. `pgolf train --resume URL` continues from the mirror (docs/cloud.md).
    checkpoint_sync: str = ""


@dataclass(frozen=True, kw_only=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    artifact: ArtifactConfig = field(default_factory=ArtifactConfig)
    run: RunConfig = field(default_factory=RunConfig)


def config_field_index() -> dict[str, tuple[str, dataclasses.Field]]:
    """Map every flat leaf name to (section name, field). Leaf names are unique by construction."""
    index: dict[str, tuple[str, dataclasses.Field]] = {}
    for section in dataclasses.fields(Config):
        for leaf in dataclasses.fields(section.default_factory):
            if leaf.name in index:
                raise AssertionError(f"config leaf name {leaf.name!r} appears in two sections")
            index[leaf.name] = (section.name, leaf)
    return index


def _resolved_annotation(section_name: str, leaf_name: str) -> Any:
    section_cls = {f.name: f.default_factory for f in dataclasses.fields(Config)}[section_name]
    return typing.get_type_hints(section_cls)[leaf_name]


def config_field_choices() -> dict[str, tuple[str, ...]]:
    """Every ``Literal[...]`` field by flat name, with its choices in declared order."""
    choices = {}
    for name, (section_name, _) in config_field_index().items():
        annotation = _resolved_annotation(section_name, name)
        if typing.get_origin(annotation) is Literal:
            choices[name] = typing.get_args(annotation)
    return choices


def _coerce_bool(text: str, key: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key.upper()}={text!r} is not a boolean; use 1/0, true/false, yes/no or on/off.")


def coerce_config_value(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (usually a string from the environment or command line) to ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key.upper()}={value!r} is not one of {', '.join(map(str, choices))}.")
        return value
    if origin is tuple:
        if isinstance(value, str):  # "a,b" -> ("a", "b"); "" or "()" -> () (the empty list)
            text = "" if value.strip() == "()" else value
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return tuple(str(part) for part in value)
    if annotation is bool:
        return value if isinstance(value, bool) else _coerce_bool(str(value), key)
    try:
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip().replace("_", ""))
        if annotation is float:
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{key.upper()}={value!r} is not a finite number; give a finite value such as "
                                  "0.04 (no setting takes nan or inf).")
            return number
        if annotation is str:
            return str(value)
    except ValueError:
        raise ConfigError(
            f"{key.upper()}={value!r} is not a valid {annotation.__name__}; give a number like "
            f"{'512' if annotation is int else '0.04'}."
        ) from None
    raise AssertionError(f"unsupported config annotation {annotation!r} for {key}")


def closest_config_keys(key: str, limit: int = 3) -> list[str]:
    names = [name.upper() for name in config_field_index()]
    return difflib.get_close_matches(key.upper(), names, n=limit, cutoff=0.5)


def override_source_name(source: str, raw_key: str) -> str:
    """Where a value came from, in words a user can act on."""
    if source == "environment":
        return f"environment variable {raw_key.strip().upper()}"
    return source  # "command line", "config.json", "sweep arm ...": already a place


def apply_config_overrides(cfg: Config, overrides: Mapping[str, Any], *, source: str) -> Config:
    """Return ``cfg`` with flat-named overrides applied. ``source`` is named in error messages."""
    index = config_field_index()
    per_section: dict[str, dict[str, Any]] = {}
    for raw_key, raw_value in overrides.items():
        key = raw_key.strip().lower()
        if key not in index:
            hint = closest_config_keys(key)
            suggestion = f" Did you mean {', '.join(hint)}?" if hint else ""
            raise ConfigError(
                f"unknown config key {raw_key!r} (from {source}).{suggestion} "
                "Run `pgolf describe` to list every key."
            )
        section_name, _ = index[key]
        try:
            value = coerce_config_value(key, raw_value, _resolved_annotation(section_name, key))
        except ConfigError as error:  # say where the bad value came from: it is not always on the command line
            raise ConfigError(f"{override_source_name(source, raw_key)}: {error}") from None
        per_section.setdefault(section_name, {})[key] = value
    changes = {
        name: dataclasses.replace(getattr(cfg, name), **values) for name, values in per_section.items()
    }
    return dataclasses.replace(cfg, **changes)


def environment_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that name a config field (upper-case flat names)."""
    known = {name.upper() for name in config_field_index()}
    return {key: value for key, value in environ.items() if key in known}


def parse_cli_overrides(items: list[str]) -> dict[str, str]:
    """Parse ``KEY=value`` command-line items (keys in any case)."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=value on the command line, got {item!r} (example: NUM_LAYERS=4).")
        parsed[key.strip()] = value
    return parsed


def flatten_config(cfg: Config) -> dict[str, Any]:
    """Every leaf as ``{flat_name: value}`` (tuples stay tuples)."""
    flat: dict[str, Any] = {}
    for section in dataclasses.fields(cfg):
        flat.update(dataclasses.asdict(getattr(cfg, section.name)))
    return flat


def config_differences(cfg: Config, reference: Config) -> dict[str, tuple[Any, Any]]:
    """Leaves whose values differ: ``{name: (reference_value, value)}``."""
    mine, theirs = flatten_config(cfg), flatten_config(reference)
    return {name: (theirs[name], mine[name]) for name in mine if mine[name] != theirs[name]}


def config_to_json(cfg: Config) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)


def config_from_dict(sections: Mapping[str, Mapping[str, Any]]) -> Config:
    """Rebuild a Config from ``dataclasses.asdict`` output (for example a run's config.json).

    Leaves are read by their flat names whatever section holds them, so a file from an older pgolf
    loads too (COMPRESSOR and BYTE_SHUFFLE_STRIDE used to sit under "quant"); a missing leaf keeps
    its default."""
    flat = {leaf: value for section in sections.values() for leaf, value in section.items()}
    return apply_config_overrides(Config(), flat, source="config.json")


def _record_feature_problems(m: ModelConfig) -> list[str]:
    """Inconsistent settings of the optional model features."""
    problems = []
    head_dim = m.model_dim // m.num_heads if m.num_heads > 0 else 0
    if m.rope_dims < 0 or m.rope_dims % 2 or m.rope_dims > head_dim:
        problems.append(f"ROPE_DIMS={m.rope_dims} must be 0 (whole head) or an even number <= the head dim {head_dim}")
    if not 0 <= m.xsa_last_n <= m.num_layers:
        problems.append(f"XSA_LAST_N={m.xsa_last_n} must be in [0, NUM_LAYERS={m.num_layers}]")
    if m.num_loops < 0:
        problems.append(f"NUM_LOOPS={m.num_loops} must be >= 0 (0 = no depth recurrence)")
    elif m.num_loops > 0 and not 0 <= m.loop_start <= m.loop_end < m.num_layers:
        problems.append(f"LOOP_START={m.loop_start} and LOOP_END={m.loop_end} must satisfy "
                        f"0 <= LOOP_START <= LOOP_END < NUM_LAYERS={m.num_layers}")
    if m.parallel_residual_mode == "two_lane" and m.parallel_residual_start == -1:
        problems.append("PARALLEL_RESIDUAL_MODE=two_lane does nothing with PARALLEL_RESIDUAL_START=-1 (off); set "
                        "PARALLEL_RESIDUAL_START to the first two-lane layer, or leave the mode at single")
    if m.parallel_residual_start != -1 and not 0 <= m.parallel_residual_start < m.num_layers:
        problems.append(f"PARALLEL_RESIDUAL_START={m.parallel_residual_start} must be -1 (off) or a layer "
                        f"index in [0, {m.num_layers})")
    if m.rope_train_seq_len < 0:
        problems.append(f"ROPE_TRAIN_SEQ_LEN={m.rope_train_seq_len} must be >= 0 (0 = no NTK rescale)")
    elif m.rope_train_seq_len > 0 and (m.rope_dims or head_dim) <= 2:
        problems.append("ROPE_TRAIN_SEQ_LEN > 0 needs more than 2 rotated dims (the NTK exponent rd/(rd-2)); "
                        "raise ROPE_DIMS or set ROPE_TRAIN_SEQ_LEN=0")
    if m.smear_gate_enabled and m.model_dim < 12:
        problems.append(f"SMEAR_GATE_ENABLED reads the first 12 channels; MODEL_DIM={m.model_dim} is too small")
    if m.attn_out_gate in ("attn_out", "sparse") and m.model_dim < 12:
        problems.append(f"ATTN_OUT_GATE={m.attn_out_gate} reads the first 12 channels; MODEL_DIM={m.model_dim} is "
                        "too small (use ATTN_OUT_GATE=gated or none)")
    return problems


def _training_feature_problems(cfg: Config) -> list[str]:
    """Inconsistent settings of the optional optimizer and training features."""
    o, t = cfg.optim, cfg.train
    problems = [f"{name.upper()}={getattr(o, name)} must be >= 0"
                for name in ("muon_wd", "adam_wd", "embed_wd", "grad_clip_norm") if getattr(o, name) < 0]
    if not 0.0 <= o.muon_wd_taper_start < 1.0 or o.muon_wd_taper_final < 0:
        problems.append(f"MUON_WD_TAPER_START={o.muon_wd_taper_start} must be in [0, 1) and MUON_WD_TAPER_FINAL="
                        f"{o.muon_wd_taper_final} >= 0")
    if not 0.0 <= t.min_lr <= 1.0:
        problems.append(f"MIN_LR={t.min_lr} must be in [0, 1] (a fraction of each base LR)")
    if not 0.0 <= t.enable_looping_at <= 1.0:
        problems.append(f"ENABLE_LOOPING_AT={t.enable_looping_at} must be in [0, 1]")
    if not 0.0 <= t.ema_decay < 1.0:
        problems.append(f"EMA_DECAY={t.ema_decay} must be in [0, 1) (0 = no EMA)")
    if t.gptq_reserve_seconds < 0 or (t.max_wallclock_seconds > 0 and t.gptq_reserve_seconds >= t.max_wallclock_seconds):
        problems.append(f"GPTQ_RESERVE_SECONDS={t.gptq_reserve_seconds} must be >= 0 and less than "
                        f"MAX_WALLCLOCK_SECONDS={t.max_wallclock_seconds}")
    return problems


def _quant_problems(q: QuantConfig) -> list[str]:
    """Inconsistent quantization settings."""
    problems = [f"{name.upper()}={getattr(q, name)} must be between 2 and 8"
                for name in ("matrix_bits", "embed_bits") if not 2 <= getattr(q, name) <= 8]
    problems += [f"{name.upper()}={getattr(q, name)} must be >= 0" for name in
                 ("matrix_clip_sigmas", "mlp_clip_sigmas", "attn_clip_sigmas", "embed_clip_sigmas", "gptq_damping")
                 if getattr(q, name) < 0]
    if q.gptq_calibration_batches < 1 or q.gptq_block_size < 1:
        problems.append("GPTQ_CALIBRATION_BATCHES and GPTQ_BLOCK_SIZE must be >= 1")
    if q.lqer_top_k < 0 or q.lqer_rank < 1:
        problems.append(f"LQER_TOP_K={q.lqer_top_k} must be >= 0 and LQER_RANK={q.lqer_rank} >= 1")
    if not 0.0 <= q.qat_start_frac < 1.0:
        problems.append(f"QAT_START_FRAC={q.qat_start_frac} must be in [0, 1) (0 = no QAT)")
    return problems


def _evaluation_problems(cfg: Config) -> list[str]:
    """Inconsistent sliding-window and test-time-training settings."""
    e, t = cfg.eval, cfg.ttt
    problems = []
    window = e.eval_seq_len or cfg.train.train_seq_len
    if e.eval_seq_len < 0 or not 0 < e.eval_stride <= window:
        problems.append(f"EVAL_STRIDE={e.eval_stride} must be in [1, EVAL_SEQ_LEN={window}] and EVAL_SEQ_LEN >= 0")
    if e.eval_batch_windows < 1 or t.ttt_batch_seqs < 1:
        problems.append("EVAL_BATCH_WINDOWS and TTT_BATCH_SEQS must be >= 1")
    if t.ttt_chunk_tokens < window:
        problems.append(f"TTT_CHUNK_TOKENS={t.ttt_chunk_tokens} must be at least one window ({window} tokens)")
    if t.ttt_epochs < 1 or t.ttt_lr < 0 or not 0 <= t.ttt_momentum < 1 or t.ttt_grad_clip < 0:
        problems.append("TTT_EPOCHS must be >= 1, TTT_LR >= 0, TTT_MOMENTUM in [0, 1), TTT_GRAD_CLIP >= 0")
    if t.ttt_lora_chunk_tokens < 1 or t.ttt_lora_lr < 0 or t.ttt_lora_wd < 0:
        problems.append("TTT_LORA_CHUNK_TOKENS must be >= 1, TTT_LORA_LR and TTT_LORA_WD >= 0")
    if t.ttt_enabled and t.ttt_mode == "lora" and t.ttt_lora_chunk_tokens > window:
        problems.append(f"TTT_LORA_CHUNK_TOKENS={t.ttt_lora_chunk_tokens} must be at most the evaluation window "
                        f"EVAL_SEQ_LEN={window}: a chunk is scored inside one context window")
    if t.ttt_lora_rank < 1 or t.ttt_lora_alpha <= 0:
        problems.append(f"TTT_LORA_RANK={t.ttt_lora_rank} must be >= 1 and TTT_LORA_ALPHA > 0")
    if t.ttt_lora_batch_docs < 1:
        problems.append(f"TTT_LORA_BATCH_DOCS={t.ttt_lora_batch_docs} must be >= 1")
    if not 0.0 <= t.ttt_beta2 < 1.0:
        problems.append(f"TTT_BETA2={t.ttt_beta2} must be in [0, 1)")
    if t.ttt_phases < 0 or t.ttt_phase_prefix_docs < 1 or t.ttt_phase_lr < 0:
        problems.append(f"TTT_PHASES={t.ttt_phases} must be >= 0, TTT_PHASE_PREFIX_DOCS={t.ttt_phase_prefix_docs} "
                        f">= 1 and TTT_PHASE_LR={t.ttt_phase_lr} >= 0")
    return problems


def evaluation_window(cfg: Config) -> int:
    """The evaluation window length: EVAL_SEQ_LEN, or TRAIN_SEQ_LEN when it is 0. The plain evaluation
    scores non-overlapping windows of it (SPEC 2.8 uses TRAIN_SEQ_LEN, which the baseline has alone;
    the records' evaluator uses eval_seq_len, SPEC 4.12), the sliding and TTT phases slide it."""
    return cfg.eval.eval_seq_len or cfg.train.train_seq_len


def _val_max_tokens_problems(cfg: Config) -> list[str]:
    """VAL_MAX_TOKENS is 0 (the whole split) or at least one evaluation window: the subset is cut to whole
    windows, so a smaller value would silently score a full window instead."""
    limit, window = cfg.eval.val_max_tokens, evaluation_window(cfg)
    if limit < 0:
        return [f"VAL_MAX_TOKENS={limit} must be >= 0 (0 = the whole validation split, N > 0 = its first N tokens)"]
    if 0 < limit < window:
        return [f"VAL_MAX_TOKENS={limit} is less than one evaluation window (EVAL_SEQ_LEN, or TRAIN_SEQ_LEN when "
                f"0: {window} tokens); set it to 0 for the whole validation split or to at least {window}"]
    return []


def _checkpoint_problems(t: TrainConfig) -> list[str]:
    problems = []
    if t.checkpoint_every < 0 or t.checkpoint_every_seconds < 0:
        problems.append(f"CHECKPOINT_EVERY={t.checkpoint_every} and CHECKPOINT_EVERY_SECONDS="
                        f"{t.checkpoint_every_seconds} must be >= 0 (0 = off)")
    if t.checkpoint_keep < 1:
        problems.append(f"CHECKPOINT_KEEP={t.checkpoint_keep} must be >= 1 (the newest checkpoints kept)")
    return problems


def _choice_problems(cfg: Config) -> list[str]:
    """Choice fields whose value is not one of the declared names (possible in a Config built in Python)."""
    flat = flatten_config(cfg)
    return [f"{name.upper()}={flat[name]!r} is not one of {', '.join(choices)}"
            for name, choices in config_field_choices().items() if flat[name] not in choices]


def _artifact_problems(a: ArtifactConfig) -> list[str]:
    # The compression frame stores the stride in one byte.
    if not 0 <= a.byte_shuffle_stride <= 255:
        return [f"BYTE_SHUFFLE_STRIDE={a.byte_shuffle_stride} must be in [0, 255] (0 = no shuffle)"]
    return []


# SEED seeds Python's, NumPy's and torch's generators; NumPy's takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def _non_finite_problems(cfg: Config) -> list[str]:
    """Float fields holding nan or inf (possible in a Config built in Python; KEY=value refuses them)."""
    return [f"{name.upper()}={value} is not a finite number; give a finite value"
            for name, value in flatten_config(cfg).items() if isinstance(value, float) and not math.isfinite(value)]


def _range_problems(cfg: Config) -> list[str]:
    """Single settings outside the range where the model, the optimizers and training are defined."""
    m, o = cfg.model, cfg.optim
    problems = []
    if m.num_heads < 1 or m.model_dim < 1:
        problems.append(f"NUM_HEADS={m.num_heads} and MODEL_DIM={m.model_dim} must be >= 1")
    if math.isfinite(m.mlp_mult) and int(m.mlp_mult * m.model_dim) < 1:
        problems.append(f"MLP_MULT={m.mlp_mult} gives an MLP of int(MLP_MULT * MODEL_DIM) = "
                        f"{int(m.mlp_mult * m.model_dim)} units; it needs at least 1 (the baseline uses 2)")
    if m.tied_embed_init_std < 0:
        problems.append(f"TIED_EMBED_INIT_STD={m.tied_embed_init_std} must be >= 0 (a standard deviation)")
    if m.rope_base <= 0:
        problems.append(f"ROPE_BASE={m.rope_base} must be > 0 (the baseline uses 10000)")
    if not (0.0 <= o.beta1 < 1.0 and 0.0 <= o.beta2 < 1.0):
        problems.append(f"BETA1={o.beta1} and BETA2={o.beta2} must be in [0, 1) (Adam's decay rates)")
    if o.adam_eps < 0:
        problems.append(f"ADAM_EPS={o.adam_eps} must be >= 0")
    if o.muon_backend_steps < 1:
        problems.append(f"MUON_BACKEND_STEPS={o.muon_backend_steps} must be >= 1 (Newton-Schulz iterations; "
                        "the baseline uses 5)")
    if not (0.0 <= o.muon_momentum < 1.0 and 0.0 <= o.muon_momentum_warmup_start < 1.0):
        problems.append(f"MUON_MOMENTUM={o.muon_momentum} and MUON_MOMENTUM_WARMUP_START="
                        f"{o.muon_momentum_warmup_start} must be in [0, 1)")
    problems += [f"{name.upper()}={getattr(o, name)} must be >= 0 (a learning rate)"
                 for name in ("embed_lr", "head_lr", "tied_embed_lr", "matrix_lr", "scalar_lr") if getattr(o, name) < 0]
    counts = ("warmup_steps", "ema_start_step", "muon_momentum_warmup_steps")
    problems += [f"{name.upper()}={value} must be >= 0" for name, value in flatten_config(cfg).items()
                 if name in counts and value < 0]
    return problems


def run_setting_problems(cfg: Config) -> list[str]:
    """The settings each run picks for itself, which an exported script still reads from the environment
    (pgolf.export.bundle.ENVIRONMENT_FIELDS): checked by validate_config here, and by the exported script
    after the environment set them (it ships this check, not the whole of validate_config)."""
    t = cfg.train
    problems = []
    if not 0 <= t.seed <= MAX_SEED:
        problems.append(f"SEED={t.seed} must be in [0, {MAX_SEED}] (NumPy's seed range)")
    if t.iterations < 1:
        problems.append(f"ITERATIONS={t.iterations} must be >= 1: it is the most optimizer steps a run takes "
                        "(MAX_WALLCLOCK_SECONDS may stop it earlier)")
    if t.max_wallclock_seconds < 0:
        problems.append(f"MAX_WALLCLOCK_SECONDS={t.max_wallclock_seconds} must be >= 0 (0 = no time budget)")
    problems += [f"{name.upper()}={getattr(t, name)} must be >= 0 (0 = never)"
                 for name in ("train_log_every", "val_loss_every") if getattr(t, name) < 0]
    return problems + _val_max_tokens_problems(cfg)


def check_run_settings(cfg: Config) -> Config:
    """``cfg``, or an error listing what :func:`run_setting_problems` found."""
    problems = run_setting_problems(cfg)
    if problems:
        raise ConfigError("invalid run settings:\n  - " + "\n  - ".join(problems))
    return cfg


# Every optimizer step is split into world size x gradient-accumulation micro-batches, which is 8 on any
# world size (SPEC: grad_accum = 8 // WORLD_SIZE, and WORLD_SIZE must divide 8).
# pgolf.dist.REFERENCE_WORLD_SIZE is defined from it (this module stays free of torch).
MICRO_BATCHES_PER_STEP = 8


def _batch_split_problems(t: TrainConfig) -> list[str]:
    """TRAIN_BATCH_TOKENS must split into 8 micro-batches of whole TRAIN_SEQ_LEN sequences, whatever the
    world size: the training loader refuses the same values only when the first batch is drawn."""
    if t.train_seq_len <= 0:
        return [f"TRAIN_SEQ_LEN={t.train_seq_len} must be >= 1"]
    split = MICRO_BATCHES_PER_STEP * t.train_seq_len
    if t.train_batch_tokens <= 0 or t.train_batch_tokens % split:
        return [f"TRAIN_BATCH_TOKENS={t.train_batch_tokens} must be a positive multiple of {split} "
                f"({MICRO_BATCHES_PER_STEP} micro-batches x TRAIN_SEQ_LEN={t.train_seq_len}): each step is split "
                f"into world size x gradient accumulation = {MICRO_BATCHES_PER_STEP} micro-batches of whole "
                f"sequences (for example TRAIN_BATCH_TOKENS={max(t.train_batch_tokens // split, 1) * split})"]
    return []


def _ttt_lora_target_problems(t: TTTConfig) -> list[str]:
    unknown = [name for name in t.ttt_lora_targets if name not in TTT_LORA_TARGET_NAMES]
    if unknown:
        return [f"TTT_LORA_TARGETS has {', '.join(map(repr, unknown))}, which name nothing; choose from "
                f"{', '.join(TTT_LORA_TARGET_NAMES)}"]
    if t.ttt_mode == "lora" and not t.ttt_lora_targets:
        return [f"TTT_LORA_TARGETS is empty but TTT_MODE=lora; name at least one of {', '.join(TTT_LORA_TARGET_NAMES)}"]
    return []


def validate_config(cfg: Config) -> Config:
    """Check values that are individually valid but inconsistent together. Returns ``cfg``."""
    m, t = cfg.model, cfg.train
    problems = _choice_problems(cfg) + _non_finite_problems(cfg) + _range_problems(cfg)
    if m.num_heads >= 1 and m.model_dim % m.num_heads:  # NUM_HEADS < 1: _range_problems says so
        problems.append(f"MODEL_DIM={m.model_dim} must be divisible by NUM_HEADS={m.num_heads}")
    elif m.num_heads >= 1 and (m.model_dim // m.num_heads) % 2:
        problems.append(f"head dim MODEL_DIM/NUM_HEADS={m.model_dim // m.num_heads} must be even for RoPE")
    if m.num_kv_heads <= 0 or m.num_heads % m.num_kv_heads:
        problems.append(f"NUM_HEADS={m.num_heads} must be a multiple of NUM_KV_HEADS={m.num_kv_heads}")
    if m.logit_softcap <= 0:
        problems.append(f"LOGIT_SOFTCAP={m.logit_softcap} must be > 0")
    for name in ("vocab_size", "num_layers", "mlp_mult"):
        if getattr(m, name) <= 0:
            problems.append(f"{name.upper()}={getattr(m, name)} must be > 0")
    problems += _record_feature_problems(m)
    problems += _training_feature_problems(cfg)
    if not 0.0 <= t.warmdown_frac <= 1.0:
        problems.append(f"WARMDOWN_FRAC={t.warmdown_frac} must be in [0, 1]")
    problems += _batch_split_problems(t)
    problems += _quant_problems(cfg.quant)
    problems += _evaluation_problems(cfg)
    problems += run_setting_problems(cfg)
    problems += _checkpoint_problems(t)
    problems += _artifact_problems(cfg.artifact)
    problems += _ttt_lora_target_problems(cfg.ttt)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return cfg

