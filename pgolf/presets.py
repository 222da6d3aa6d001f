"""Named presets: plain functions that return a :class:`~pgolf.config.Config`.

Presets derive from one another with ``dataclasses.replace`` so each one states only what it changes.
``PRESETS`` is the explicit table the command line resolves names through.
"""

from dataclasses import replace
from typing import Callable

from pgolf.config import Config
from pgolf.errors import ConfigError

# One GPU doing the work of eight: the same global batch through 8 micro-batches of accumulation
# (automatic: 8 // world_size), so it needs about 8 times the wall clock for the same number of steps.
ONE_GPU_TIME_FACTOR = 8


def with_fineweb_vocabulary(base: Config, vocab_size: int) -> Config:
    """``base`` on the challenge's FineWeb shards and tokenizer of a ``vocab_size``-piece vocabulary
    (where ``pgolf data fineweb --variant sp<vocab_size>`` puts them). Those shards have no byte
    sidecars, so ``BYTE_SIDECARS=off``: the tokenizer's byte tables, CaseOps data refused, and no sidecar
    reader in the exported script."""
    return replace(
        base,
        data=replace(base.data, data_path=f"./data/datasets/fineweb10B_sp{vocab_size}",
                     tokenizer_path=f"./data/tokenizers/fineweb_{vocab_size}_bpe.model", byte_sidecars="off"),
        model=replace(base.model, vocab_size=vocab_size),
    )


def baseline_sp1024() -> Config:
    """The challenge's naive baseline (SPEC 2.1): 9x512, sp1024, int8 + zlib, 600 s on 8xH100.
    ``Config()`` holds the baseline's values; the preset adds the data and compilation."""
    base = with_fineweb_vocabulary(Config(), 1024)
    return replace(base, train=replace(base.train, compile=True))


def tiny_cpu() -> Config:
    """A few-minute run on a 2-core CPU over the embedded default data (Python's own documentation).
    That data has no byte sidecars, so ``BYTE_SIDECARS=off`` stays (from ``baseline_sp1024``); a CaseOps
    dataset (``pgolf data build --caseops``) needs ``BYTE_SIDECARS=on`` beside its ``DATA_PATH``.

    Same architecture family and optimizers as the baseline, shrunk: 4 layers of width 128, sequences
    of 256, a 2-minute training budget. It exists to check the whole pipeline, not to set records.
    """
    base = baseline_sp1024()
    return replace(
        base,
        data=replace(base.data, data_path="", tokenizer_path=""),
        model=replace(base.model, num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2),
        train=replace(
            base.train,
            train_batch_tokens=16_384,
            train_seq_len=256,
            max_wallclock_seconds=120.0,
            warmdown_frac=0.3,
            warmup_steps=0,
            train_log_every=10,
            val_loss_every=0,
            compile=False,
        ),
        eval=replace(base.eval, val_batch_size=32_768),
    )


def t4() -> Config:
    """The baseline on one 16 GB T4 (Colab/Kaggle class, compute capability 7.5): no bf16, so fp16 autocast
    with loss scaling; no FlashAttention, so PyTorch SDPA. The global batch is a quarter of the baseline's
    (131,072 tokens, through the automatic 8-way accumulation on one GPU: 16 sequences of 1,024 per
    micro-batch) so activations fit in 16 GB and a step takes well under a second. Compilation is off
    (a first run never waits on Triton; COMPILE=1 is usually faster once it works). A development proxy,
    not a record run: results do not transfer to 8xH100 one for one."""
    base = baseline_sp1024()
    return replace(
        base,
        model=replace(base.model, attention_backend="sdpa"),
        train=replace(base.train, train_batch_tokens=131_072, autocast_dtype="fp16", compile=False, warmup_steps=0),
        eval=replace(base.eval, val_batch_size=131_072),
    )


def seq4096() -> Config:
    """Record 2026-03-19_TrainingOptSeq4096 (SPEC 3, val_bpb 1.2014): the baseline's code with longer
    sequences, a 3/4 batch, lower LRs and more momentum. Its ``WARMDOWN_ITERS=3000`` of the 8,394 steps
    it ran is ``WARMDOWN_FRAC=0.357`` here (pgolf's warm-down is a fraction of the budget)."""
    base = baseline_sp1024()
    return replace(
        base,
        optim=replace(base.optim, tied_embed_lr=0.030, matrix_lr=0.020, scalar_lr=0.020, muon_momentum=0.99,
                      muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500),
        train=replace(base.train, train_seq_len=4096, train_batch_tokens=393_216, warmdown_frac=0.357),
    )


def systematic_search() -> Config:
    """``seq4096`` with the RoPE base raised to 200,000 for the 4,096-token context (the settings a
    systematic search of the baseline's knobs settled on: MATRIX_LR 0.02, MUON_MOMENTUM 0.99, warm-down
    3,000 steps' worth, ROPE_BASE 200000, sequences of 4,096)."""
    base = seq4096()
    return replace(base, model=replace(base.model, rope_base=200_000.0))


def record_sp8192() -> Config:
    """Record R1081 (SPEC 4, val_bpb 1.0810 with TTT; 1.0827 sliding window): SP8192, 11 x 512, MLP 4x,
    LeakyReLU(0.5)^2, partial RoPE 16/64, LN scale, XSA on all layers, skip gates, blocks 3-5 looped twice
    more from 35% of training, GPT-J parallel residuals from block 7, QK gain 5.25, MuonEq-R with weight
    decay, AdamW, grad clip 0.3, EMA 0.9965, shuffled-sequence loader, GPTQ int6 SDClip (int8 embedding),
    brotli with byte shuffle, 35,944,536 parameters. Every constant is SPEC 4.2's (QK_GAIN_INIT as in the
    logged runs). Those not written here are the baseline preset's, which SPEC 4.2 shares: width 512,
    8 heads / 4 KV heads, tied embeddings, RoPE base 10000, softcap 30, 20,000 iterations, 600 s,
    compiled, sliding-window stride 64, TTT's defaults, GPTQ on 64 batches, SDClip k=12.85 blocks and an
    int8 k=20 embedding."""
    base = with_fineweb_vocabulary(baseline_sp1024(), 8192)
    return replace(
        base,
        model=replace(base.model, num_layers=11, mlp_mult=4.0, qk_gain_init=5.25, activation="leaky_relu2",
                      rope_dims=16, rope_train_seq_len=2048, ln_scale=True, xsa_last_n=11, skip_gates_enabled=True,
                      num_loops=2, loop_start=3, loop_end=5, parallel_residual_start=7, ortho_init=True),
        optim=replace(base.optim, tied_embed_lr=0.03, matrix_lr=0.022, scalar_lr=0.02, muon_momentum=0.99,
                      muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500, grad_clip_norm=0.3,
                      muon_row_normalize=True, muon_wd=0.095, adam_wd=0.02, embed_wd=0.085),
        train=replace(base.train, train_batch_tokens=786_432, train_seq_len=2048, warmdown_frac=0.72,
                      train_log_every=500, val_loss_every=4000, gptq_reserve_seconds=12.0, enable_looping_at=0.35,
                      ema_decay=0.9965, train_loader="shuffled"),
        # The logged runs: sliding windows of 2048 every 64 tokens, then score-first TTT (SPEC 4.12-4.13).
        eval=replace(base.eval, sliding_window_enabled=True),
        ttt=replace(base.ttt, ttt_enabled=True),
        # SPEC 4.10/4.11: GPTQ on 64 training batches, int6 SDClip k=12.85 blocks, int8 k=20 embedding
        # (calibration fits in the 12 s GPTQ reserve). Small tensors, the control tensors included, are
        # stored fp16 (SPEC 4.10 routing: "passthrough (float16)").
        quant=replace(base.quant, quant_method="gptq", matrix_bits=6, clip_method="sdclip",
                      int8_keep_float_fp32_name_patterns=()),
        # Byte shuffle + brotli.
        artifact=replace(base.artifact, compressor="brotli", byte_shuffle_stride=2),
    )


def sp4096_recur() -> Config:
    """The SP4096 stage of the lineage (SPEC 7: 2026-04-01 Vocab4096 with skip gates and QK gain 4,
    then 2026-04-03 MuonEq-R + recurrence): SP4096, 11 layers, MLP 4x, blocks 3-5 looped, GPT-J parallel
    residuals from block 7, gated U-Net skips, LeakyReLU(0.5)^2, softcap 30, partial RoPE 16/64, Muon LR
    0.022 / momentum 0.95 / weight decay 0.095, EMA 0.9965 from step 100. XSA on all layers and LN scale
    are inherited from the earlier records of the lineage (2026-03-21, 2026-03-25). Where the lineage is
    silent it takes ``record_sp8192``'s values (sequence 2048, batch 786,432, warm-down 0.72, loader,
    clip, compression)."""
    base = with_fineweb_vocabulary(record_sp8192(), 4096)
    return replace(
        base,
        model=replace(base.model, qk_gain_init=4.0),
        optim=replace(base.optim, muon_momentum=0.95),
        train=replace(base.train, ema_start_step=100),
    )


# Where `pgolf data fineweb --variant sp8192_caseops` puts the CaseOps shards (with their validation byte
# sidecars) and the records' CaseOps tokenizer (SPEC 5.10); the folder carries the hub's variant name.
CASEOPS_DATA_PATH = "./data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
CASEOPS_TOKENIZER_PATH = "./data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
# TOP's LoRA TTT adapters (SPEC 5.3): Q, K, V, O and MLP (d -> d from each branch's input) for every
# virtual layer slot, plus the output head.
TOP_TTT_LORA_TARGETS = ("c_q", "c_k", "c_v", "attn", "mlp", "head")


def frontier_caseops() -> Config:
    """The CaseOps stage of the lineage (SPEC 5, 7): record 2026-04-18_PR1626_CaseOps_Taper (#1729, val_bpb
    1.06780), which is #1626's stack (1.07193) on the CaseOps tokenizer and data with the Muon weight-decay
    taper. From ``record_sp8192``: CaseOps SP8192 data, scored with its byte sidecars (``BYTE_SIDECARS=on``);
    VarLen document-isolated attention, the fused MLP and the two-lane parallel decoder from block 8 (#1530); QK
    gain 5.0, Muon momentum 0.97, MATRIX_LR 0.026, warm-down 0.75 and sharded Muon without DDP (SPEC 5.1; the
    same steps as the replicated optimizer); the document-packing loader reads shards in order (``sequential``);
    GPTQ on 16 batches with a 4 s reserve, int7 embedding k=15, MLP k=12, attention k=13 (#1586, the record's
    defaults); the taper 0.70 -> 0.50 (#1729; MUON_WD_TAPER's defaults). The score is phased LoRA TTT (3 phases
    over the first 2000 documents, #1626) with SPEC 5.3's adapters (Q, K, V, O, MLP per virtual layer slot, and
    the head); no sliding window. 35,944,602 parameters (``record_sp8192`` + the two-lane lambdas). Record #1736
    (1.06549) is about this stage with ``ATTN_OUT_GATE=gated`` (its int8 "quant gate" is automatic), without the
    taper and, by its README, with blocks 4-5 looped once more instead of 3-5 twice."""
    base = record_sp8192()
    return replace(
        base,
        data=replace(base.data, data_path=CASEOPS_DATA_PATH, tokenizer_path=CASEOPS_TOKENIZER_PATH, byte_sidecars="on"),
        model=replace(base.model, qk_gain_init=5.0, parallel_residual_start=8, parallel_residual_mode="two_lane",
                      doc_isolated_attention=True, fused_mlp=True),
        optim=replace(base.optim, matrix_lr=0.026, muon_momentum=0.97, muon_wd_taper=True, muon_sharded=True),
        train=replace(base.train, warmdown_frac=0.75, gptq_reserve_seconds=4.0, train_loader="sequential"),
        eval=replace(base.eval, sliding_window_enabled=False),
        ttt=replace(base.ttt, ttt_mode="lora", ttt_lora_targets=TOP_TTT_LORA_TARGETS, ttt_lora_per_slot=True,
                    ttt_phases=3, ttt_phase_prefix_docs=2000),
        quant=replace(base.quant, embed_bits=7, embed_clip_sigmas=15.0, mlp_clip_sigmas=12.0, attn_clip_sigmas=13.0,
                      gptq_calibration_batches=16),
    )


def top_sp8192() -> Config:
    """The leaderboard top (SPEC 5, 5.13): record 2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611
    (#1855, val_bpb 1.06108 over 3 seeds), 35,945,671 parameters. From ``frontier_caseops``: SmearGate with
    the BOS fix (#1667, #1851), the sparse attention output gate, Polar Express Newton-Schulz, MIN_LR 0.10
    and the fused softcapped cross-entropy (#1787), asymmetric LQER rank 4 on the 3 worst tensors (#1797;
    LQER's defaults), warm-start A in LoRA TTT (#1767), a 0.5 s GPTQ reserve, no validation during
    training, per-group compression with lrzip ZPAQ role streams (needs the ``lrzip`` program), no
    weight-decay taper (SPEC 5.12: not in TOP), and the 9-hparam greedy stack (SPEC 5.12): MLP_CLIP_SIGMAS
    11.5, EMBED_CLIP_SIGMAS 14, WARMDOWN_FRAC 0.85, BETA2 0.99, TTT_BETA2 0.99, TTT_WEIGHT_DECAY 0.5
    (``TTT_LORA_WD``), TTT_LORA_RANK 80, SPARSE_ATTN_GATE_SCALE 0.5, PHASED_TTT_PREFIX_DOCS 2500
    (``TTT_PHASE_PREFIX_DOCS``)."""
    base = frontier_caseops()
    return replace(
        base,
        model=replace(base.model, smear_gate_enabled=True, attn_out_gate="sparse", sparse_attn_gate_scale=0.5,
                      fused_cross_entropy=True),
        optim=replace(base.optim, muon_ns_coefficients="polar_express", beta2=0.99, muon_wd_taper=False),
        train=replace(base.train, warmdown_frac=0.85, min_lr=0.10, gptq_reserve_seconds=0.5, val_loss_every=0),
        ttt=replace(base.ttt, ttt_lora_rank=80, ttt_beta2=0.99, ttt_lora_wd=0.5, ttt_lora_warm_start_a=True,
                    ttt_phase_prefix_docs=2500),
        quant=replace(base.quant, mlp_clip_sigmas=11.5, embed_clip_sigmas=14.0, lqer_enabled=True),
        artifact=replace(base.artifact, compressor="pergroup_lrzip"),
    )


def one_gpu_variant(preset: Callable[[], Config]) -> Callable[[], Config]:
    """``<preset>_1gpu``: the same run on one GPU. Gradient accumulation (8 // world_size = 8) keeps every
    optimizer step identical to the 8-GPU one; the wall-clock budget and the GPTQ reserve are multiplied
    by 8 so the same number of steps fits and the wall-clock schedules (warm-down, recurrence switch,
    EMA) fire at the same steps. A non-record run: the challenge times 8xH100."""

    def variant() -> Config:
        base = preset()
        return replace(base, train=replace(
            base.train,
            max_wallclock_seconds=base.train.max_wallclock_seconds * ONE_GPU_TIME_FACTOR,
            gptq_reserve_seconds=base.train.gptq_reserve_seconds * ONE_GPU_TIME_FACTOR,
        ))

    variant.__name__ = f"{preset.__name__}_1gpu"
    variant.__doc__ = f"{preset.__name__} on one GPU (see one_gpu_variant)."
    return variant


GPU_PRESETS: dict[str, Callable[[], Config]] = {
    "baseline_sp1024": baseline_sp1024,
    "seq4096": seq4096,
    "systematic_search": systematic_search,
    "sp4096_recur": sp4096_recur,
    "record_sp8192": record_sp8192,
    "frontier_caseops": frontier_caseops,
    "top_sp8192": top_sp8192,
}

PRESETS: dict[str, Callable[[], Config]] = {
    "tiny_cpu": tiny_cpu,
    "t4": t4,
    **GPU_PRESETS,
    **{f"{name}_1gpu": one_gpu_variant(preset) for name, preset in GPU_PRESETS.items()},
}

DEFAULT_PRESET = "tiny_cpu"


def preset_config(name: str) -> Config:
    """The preset called ``name``; an unknown name is an error listing the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}.")
    return PRESETS[name]()
