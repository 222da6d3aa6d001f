"""Presets: a few key values each, and what every preset changes relative to the one it derives from."""

from pathlib import Path

import pytest

from pgolf.commands.data_fineweb import fineweb_dataset_dir
from pgolf.config import Config, config_differences
from pgolf.presets import GPU_PRESETS, ONE_GPU_TIME_FACTOR, PRESETS, preset_config


def changed(name: str, parent: Config) -> set[str]:
    return set(config_differences(preset_config(name), parent))


def test_baseline_is_the_default_config_with_data_and_compilation():
    assert changed("baseline_sp1024", Config()) == {"data_path", "tokenizer_path", "byte_sidecars", "compile"}
    cfg = preset_config("baseline_sp1024")
    assert (cfg.model.vocab_size, cfg.model.num_layers, cfg.model.model_dim, cfg.train.compile) == (1024, 9, 512, True)
    assert (cfg.artifact.compressor, cfg.quant.matrix_bits, cfg.quant.quant_method) == ("zlib", 8, "rtn")


@pytest.mark.parametrize("name,parent,fields", [
    ("tiny_cpu", "baseline_sp1024", {"data_path", "tokenizer_path", "num_layers", "model_dim", "num_heads",
                                     "num_kv_heads", "train_batch_tokens", "train_seq_len", "max_wallclock_seconds",
                                     "warmdown_frac", "warmup_steps", "train_log_every", "val_loss_every", "compile",
                                     "val_batch_size"}),
    ("t4", "baseline_sp1024", {"attention_backend", "autocast_dtype", "train_batch_tokens", "compile", "warmup_steps",
                               "val_batch_size"}),
    ("seq4096", "baseline_sp1024", {"tied_embed_lr", "matrix_lr", "scalar_lr", "muon_momentum",
                                    "muon_momentum_warmup_start", "muon_momentum_warmup_steps", "train_seq_len",
                                    "train_batch_tokens", "warmdown_frac"}),
    ("systematic_search", "seq4096", {"rope_base"}),
    ("sp4096_recur", "record_sp8192", {"vocab_size", "data_path", "tokenizer_path", "qk_gain_init", "muon_momentum",
                                       "ema_start_step"}),
    ("frontier_caseops", "record_sp8192", {"data_path", "tokenizer_path", "byte_sidecars", "qk_gain_init", "parallel_residual_start",
                                           "parallel_residual_mode", "doc_isolated_attention", "fused_mlp", "matrix_lr",
                                           "muon_momentum", "muon_wd_taper", "muon_sharded", "warmdown_frac",
                                           "gptq_reserve_seconds", "train_loader", "sliding_window_enabled", "ttt_mode",
                                           "ttt_lora_targets", "ttt_lora_per_slot", "ttt_phases", "embed_bits",
                                           "embed_clip_sigmas", "mlp_clip_sigmas", "attn_clip_sigmas",
                                           "gptq_calibration_batches"}),
    ("top_sp8192", "frontier_caseops", {"smear_gate_enabled", "attn_out_gate", "sparse_attn_gate_scale",
                                        "fused_cross_entropy", "muon_ns_coefficients", "beta2", "muon_wd_taper",
                                        "warmdown_frac", "min_lr", "gptq_reserve_seconds", "val_loss_every",
                                        "ttt_lora_rank", "ttt_beta2", "ttt_lora_wd", "ttt_lora_warm_start_a",
                                        "ttt_phase_prefix_docs", "mlp_clip_sigmas", "embed_clip_sigmas", "lqer_enabled",
                                        "compressor"}),
])
def test_each_preset_changes_only_what_it_says(name, parent, fields):
    assert changed(name, preset_config(parent)) == fields


def test_key_values():
    tiny, t4 = preset_config("tiny_cpu"), preset_config("t4")
    assert (tiny.data.data_path, tiny.model.num_layers, tiny.model.model_dim, tiny.train.max_wallclock_seconds) == (
        "", 4, 128, 120.0)
    assert (t4.train.autocast_dtype, t4.model.attention_backend, t4.train.train_batch_tokens) == (
        "fp16", "sdpa", 131_072)
    assert preset_config("seq4096").train.train_seq_len == 4096
    assert preset_config("systematic_search").model.rope_base == 200_000.0
    assert preset_config("sp4096_recur").model.vocab_size == 4096


def test_the_record_stack():
    cfg = preset_config("record_sp8192")
    assert (cfg.model.vocab_size, cfg.model.num_layers, cfg.model.mlp_mult, cfg.model.activation) == (
        8192, 11, 4.0, "leaky_relu2")
    assert (cfg.model.num_loops, cfg.model.loop_start, cfg.model.loop_end, cfg.model.parallel_residual_start) == (
        2, 3, 5, 7)
    assert (cfg.optim.matrix_lr, cfg.optim.muon_wd, cfg.train.ema_decay, cfg.train.train_loader) == (
        0.022, 0.095, 0.9965, "shuffled")
    assert (cfg.quant.quant_method, cfg.quant.matrix_bits, cfg.quant.clip_method, cfg.quant.embed_bits) == (
        "gptq", 6, "sdclip", 8)
    assert cfg.quant.int8_keep_float_fp32_name_patterns == ()
    assert (cfg.artifact.compressor, cfg.artifact.byte_shuffle_stride) == ("brotli", 2)
    assert cfg.eval.sliding_window_enabled and cfg.ttt.ttt_enabled
    assert (cfg.train.gptq_reserve_seconds, cfg.train.compile) == (12.0, True)


def test_the_caseops_stage():
    cfg = preset_config("frontier_caseops")
    assert (cfg.data.data_path, cfg.data.tokenizer_path) == (
        "./data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved",
        "./data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
    assert (cfg.model.parallel_residual_mode, cfg.model.parallel_residual_start, cfg.model.doc_isolated_attention) == (
        "two_lane", 8, True)
    assert (cfg.optim.muon_wd_taper, cfg.optim.muon_wd_taper_start, cfg.optim.muon_wd_taper_final) == (True, 0.70, 0.50)
    assert (cfg.quant.embed_bits, cfg.quant.embed_clip_sigmas, cfg.quant.mlp_clip_sigmas, cfg.quant.attn_clip_sigmas) == (
        7, 15.0, 12.0, 13.0)
    assert (cfg.ttt.ttt_mode, cfg.ttt.ttt_phases, cfg.ttt.ttt_phase_prefix_docs, cfg.ttt.ttt_lora_per_slot) == (
        "lora", 3, 2000, True)
    assert cfg.ttt.ttt_lora_targets == ("c_q", "c_k", "c_v", "attn", "mlp", "head")


def test_the_top_stack_and_its_nine_hyperparameters():
    cfg = preset_config("top_sp8192")
    # SPEC 5.12's greedy stack, each under its pgolf name
    nine = {"MLP_CLIP_SIGMAS": (cfg.quant.mlp_clip_sigmas, 11.5), "EMBED_CLIP_SIGMAS": (cfg.quant.embed_clip_sigmas, 14.0),
            "WARMDOWN_FRAC": (cfg.train.warmdown_frac, 0.85), "BETA2": (cfg.optim.beta2, 0.99),
            "TTT_BETA2": (cfg.ttt.ttt_beta2, 0.99), "TTT_WEIGHT_DECAY": (cfg.ttt.ttt_lora_wd, 0.5),
            "TTT_LORA_RANK": (cfg.ttt.ttt_lora_rank, 80),
            "SPARSE_ATTN_GATE_SCALE": (cfg.model.sparse_attn_gate_scale, 0.5),
            "PHASED_TTT_PREFIX_DOCS": (cfg.ttt.ttt_phase_prefix_docs, 2500)}
    assert {name: got for name, (got, _) in nine.items()} == {name: want for name, (_, want) in nine.items()}
    assert (cfg.model.smear_gate_enabled, cfg.model.attn_out_gate, cfg.model.fused_cross_entropy) == (True, "sparse", True)
    assert (cfg.optim.muon_ns_coefficients, cfg.train.min_lr, cfg.optim.muon_wd_taper) == ("polar_express", 0.10, False)
    assert (cfg.quant.lqer_enabled, cfg.quant.lqer_asym, cfg.quant.lqer_rank, cfg.quant.lqer_top_k) == (True, True, 4, 3)
    assert (cfg.train.gptq_reserve_seconds, cfg.quant.gptq_calibration_batches, cfg.quant.embed_bits) == (0.5, 16, 7)
    assert (cfg.artifact.compressor, cfg.ttt.ttt_lora_warm_start_a, cfg.model.qk_gain_init) == ("pergroup_lrzip", True, 5.0)


@pytest.mark.parametrize("name", sorted(GPU_PRESETS))
def test_one_gpu_variants_stretch_only_the_clock(name):
    eight, one = preset_config(name), preset_config(f"{name}_1gpu")
    assert changed(f"{name}_1gpu", eight) <= {"max_wallclock_seconds", "gptq_reserve_seconds"}
    assert one.train.max_wallclock_seconds == ONE_GPU_TIME_FACTOR * eight.train.max_wallclock_seconds
    assert one.train.gptq_reserve_seconds == ONE_GPU_TIME_FACTOR * eight.train.gptq_reserve_seconds


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_data_paths_name_the_vocabulary(name):
    cfg = preset_config(name)
    if cfg.data.data_path:
        vocab = cfg.model.vocab_size
        if "caseops" in cfg.data.data_path:  # the CaseOps variant and the records' CaseOps tokenizer
            assert cfg.data.data_path.endswith(f"_sp{vocab}_lossless_caps_caseops_v1_reserved")
            assert cfg.data.tokenizer_path.endswith(f"_{vocab}_bpe_lossless_caps_caseops_v1_reserved.model")
        else:
            assert cfg.data.data_path.endswith(f"_sp{vocab}") and cfg.data.tokenizer_path.endswith(f"_{vocab}_bpe.model")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_byte_sidecars_are_on_exactly_for_caseops_data(name):
    """CaseOps presets require the byte sidecars; every other preset's data (FineWeb sp1024/sp4096/sp8192,
    the embedded default dataset) has none, so it says ``off`` and its export ships no sidecar reader."""
    cfg = preset_config(name)
    caseops = "caseops" in cfg.data.data_path or "caseops" in cfg.data.tokenizer_path
    assert cfg.data.byte_sidecars == ("on" if caseops else "off")


def test_the_caseops_presets_read_where_the_download_writes():
    """`pgolf data fineweb --variant sp8192_caseops` then `pgolf train --preset frontier_caseops` must
    meet: the preset's folder is the one the download names after the hub's variant."""
    cfg = PRESETS["frontier_caseops"]()
    assert Path(cfg.data.data_path).name == fineweb_dataset_dir("sp8192_caseops")
    assert Path(cfg.data.data_path).parent == Path("./data/datasets")
