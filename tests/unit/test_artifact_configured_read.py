"""The pipeline reads back only what its configuration writes; tooling reads any artifact (issue 15).

The round trip (``load_round_trip_model``) checks the blob's compressor, shuffle stride and quantization
format against the configuration and runs only their decoders, so ``pgolf export`` ships no other
decompressor. Tooling (``load_artifact_into_fresh_model``: ``pgolf eval``, ``check``, ``quantize``) still
follows whatever the blob records. The export checks fold the real package for a preset's configuration,
from an entry that writes and reads back an artifact as the pipeline does, and look at what is left."""

import ast
import importlib
import inspect

import pytest
import torch
from testkit import RecordingLogger

from pgolf.artifact.pack import pack_quantized_tensors
from pgolf.artifact.size import upper_bound_code_bytes
from pgolf.commands import check as check_command
from pgolf.commands import eval as eval_command
from pgolf.commands import quantize as quantize_command
from pgolf.config import ArtifactConfig, Config, ModelConfig, QuantConfig, apply_config_overrides
from pgolf.errors import ArtifactError
from pgolf.export.bundle import build_exported_script
from pgolf.export.facts import config_facts
from pgolf.export.flatten import flatten_core_modules
from pgolf.export.program import Program, Section
from pgolf.export.shake import ExternalBases, shake
from pgolf.export.specialize import fold_program
from pgolf.model.gpt import GPT
from pgolf.presets import preset_config
from pgolf.quant.model_artifact import (EXACT_CODE_BYTES_NOTE, UPPER_BOUND_CODE_BYTES_NOTE,
                                        load_artifact_into_fresh_model, load_round_trip_model, write_artifact)
from pgolf.quant.packing import pack_model_artifact
from pgolf.quant.rtn import quantize_state_dict_int8
from pgolf.runtime import Runtime

# tok_emb (1024 x 128) is large enough to be quantized per row, so every artifact holds codes and scales.
MODEL = ModelConfig(vocab_size=1024, num_layers=1, model_dim=128, num_heads=4, num_kv_heads=2)
RUNTIME = Runtime(torch.device("cpu"))
PIPELINE_MODULES = ("pgolf.run", "pgolf.steps", "pgolf.submission")
EVERY_PAIR = [("zlib", 0), ("lzma", 2), ("brotli", 2), ("zstd", 0), ("pergroup", 2), ("auto", 0)]


def config(compressor: str = "zlib", stride: int = 0, **quant) -> Config:
    return Config(model=MODEL, quant=QuantConfig(**quant),
                  artifact=ArtifactConfig(compressor=compressor, byte_shuffle_stride=stride))


def model_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return GPT(MODEL).state_dict()


def written(tmp_path, cfg: Config):
    path = tmp_path / f"{cfg.artifact.compressor}_{cfg.artifact.byte_shuffle_stride}.ptz"
    path.write_bytes(pack_model_artifact(model_state(), cfg.quant, cfg.artifact))
    return path


def same_weights(a: GPT, b: GPT) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("compressor, stride", EVERY_PAIR)
def test_the_pipeline_reads_back_what_it_writes_as_tooling_does(tmp_path, compressor, stride):
    cfg = config(compressor, stride)
    path = written(tmp_path, cfg)
    assert same_weights(load_round_trip_model(path, cfg, RUNTIME), load_artifact_into_fresh_model(path, MODEL, RUNTIME))


@pytest.mark.parametrize("written_as, read_as", [(("zlib", 0), ("brotli", 2)), (("brotli", 0), ("brotli", 2)),
                                                 (("lzma", 2), ("pergroup", 2)), (("pergroup", 2), ("zstd", 2))])
def test_an_artifact_of_another_compressor_or_stride_is_refused_naming_the_file_and_both(tmp_path, written_as, read_as):
    path = written(tmp_path, config(*written_as))
    with pytest.raises(ArtifactError) as refused:
        load_round_trip_model(path, config(*read_as), RUNTIME)
    message = str(refused.value)
    assert str(path) in message and "pgolf eval" in message
    assert f"is {written_as[0]} with shuffle stride {written_as[1]}" in message
    assert f"COMPRESSOR={read_as[0]} BYTE_SHUFFLE_STRIDE={read_as[1]}" in message
    load_artifact_into_fresh_model(path, MODEL, RUNTIME)  # tooling reads it all the same
    load_round_trip_model(path, config("auto", 0), RUNTIME)  # auto may have chosen any pair


def test_another_quantization_format_or_lqer_is_refused_but_tooling_reads_them(tmp_path):
    legacy = tmp_path / "final_model.int8.ptz"  # the baseline's int8 RTN meta, as older artifacts hold
    tensors, meta = quantize_state_dict_int8(model_state(), QuantConfig().int8_keep_float_fp32_name_patterns)
    legacy.write_bytes(pack_quantized_tensors(tensors, meta, "zlib", 0, {}))
    with pytest.raises(ArtifactError, match="format 'pgolf_int8_rtn_v1', expected 'pgolf_quant_v1'") as refused:
        load_round_trip_model(legacy, config(), RUNTIME)
    assert str(legacy) in str(refused.value)
    load_artifact_into_fresh_model(legacy, MODEL, RUNTIME)

    lqer = written(tmp_path, config(matrix_bits=6, embed_bits=6, clip_method="sdclip", lqer_enabled=True))
    with pytest.raises(ArtifactError, match="LQER corrections, which this configuration does not write") as refused:
        load_round_trip_model(lqer, config(matrix_bits=6, embed_bits=6, clip_method="sdclip"), RUNTIME)
    assert str(lqer) in str(refused.value)
    assert same_weights(load_round_trip_model(lqer, config(matrix_bits=6, embed_bits=6, clip_method="sdclip",
                                                           lqer_enabled=True), RUNTIME),
                        load_artifact_into_fresh_model(lqer, MODEL, RUNTIME))


def test_tooling_loads_artifacts_by_what_their_blob_records():
    for command in (eval_command, check_command, quantize_command):
        assert command.load_artifact_into_fresh_model is load_artifact_into_fresh_model
        assert "load_round_trip_model" not in inspect.getsource(command)


def test_code_bytes_are_exact_when_given_and_an_upper_bound_only_when_not(tmp_path):
    cfg = config()
    torch.manual_seed(0)
    model = GPT(MODEL)
    _, exact, _ = write_artifact(model, cfg, tmp_path / "exact", RecordingLogger(), None, 1234)
    assert (exact.code_bytes, exact.code_bytes_note) == (1234, EXACT_CODE_BYTES_NOTE)
    _, bound, _ = write_artifact(model, cfg, tmp_path / "bound", RecordingLogger(), None, None)
    assert (bound.code_bytes, bound.code_bytes_note) == (upper_bound_code_bytes(), UPPER_BOUND_CODE_BYTES_NOTE)


# ---- what the export keeps ---------------------------------------------------------------------------

# Writes and reads back an artifact as the pipeline does (pgolf/steps.py), with an exact code size.
PIPELINE_ENTRY = '''
def artifact_round_trip(cfg: Config, model, runtime, logger):
    path, _, _ = write_artifact(model, cfg, Path("run"), logger, None, 12345)
    return load_round_trip_model(path, cfg, runtime)


artifact_round_trip(Config(), None, None, None)
'''
STREAM_DECOMPRESSORS = {"zlib": "_zlib_decompress_bounded", "lzma": "_lzma_decompress_bounded",
                        "brotli": "_brotli_decompress_bounded", "zstd": "_zstd_decompress_bounded"}
# Readers of what a configuration never writes, and code of the other compressors' write paths.
NEVER_KEPT_FOR_ONE_STREAM_COMPRESSOR = {
    "decompress_model_bytes", "unpack_model_artifact", "dequantize_from_artifact", "dequantize_state_dict_int8",
    "auto_compress", "choose_smallest_compression", "available_model_compressor_names", "_pergroup_decompress",
    "split_container_by_role", "join_container_streams", "run_lrzip", "upper_bound_code_bytes",
    "source_bytes_of_modules", "lqer_unpack"}


def kept_names(cfg: Config) -> set[str]:
    """The top-level names the real package keeps, specialized to ``cfg``, for :data:`PIPELINE_ENTRY`."""
    flat = flatten_core_modules("pgolf.quant.model_artifact")
    sections = [Section("imports", "imports", ast.parse("\n".join(flat.import_lines)).body)]
    sections += [Section(module.name, module.label, ast.parse(text).body)
                 for module, text in zip(flat.modules, flat.sections)]
    program = Program([*sections, Section("entry", "entry", ast.parse(PIPELINE_ENTRY).body)])
    bases, results = ExternalBases(program), []
    facts = config_facts(cfg, program, frozenset())
    fold_program(program, facts, after_round=lambda folded: results.append(shake(folded, bases)))
    return results[-1].kept


def test_a_stream_compressor_configuration_keeps_only_its_own_code():
    kept = kept_names(preset_config("record_sp8192"))  # brotli, stride 2, GPTQ int6 SDClip, no LQER
    assert {name for name in STREAM_DECOMPRESSORS.values() if name in kept} == {"_brotli_decompress_bounded"}
    assert not kept & NEVER_KEPT_FOR_ONE_STREAM_COMPRESSOR
    assert "_zstandard_module_or_error" not in kept and {"byte_shuffle", "byte_unshuffle"} <= kept
    unshuffled = kept_names(config("zlib", 0, fit_to_cap=True))  # pruning compresses again, with zlib only
    assert {name for name in STREAM_DECOMPRESSORS.values() if name in unshuffled} == {"_zlib_decompress_bounded"}
    assert "prune_artifact_to_fit" in unshuffled
    assert not unshuffled & ({"byte_shuffle", "byte_unshuffle", "_brotli_module_or_error"}
                             | NEVER_KEPT_FOR_ONE_STREAM_COMPRESSOR)


def test_pergroup_lrzip_keeps_brotli_and_lrzip_only_and_pergroup_keeps_every_stream_decompressor():
    kept = kept_names(preset_config("top_sp8192"))  # pergroup_lrzip, stride 2, LQER
    assert {name for name in STREAM_DECOMPRESSORS.values() if name in kept} == {"_brotli_decompress_bounded"}
    assert {"run_lrzip", "_pergroup_decompress", "join_container_streams", "lqer_unpack"} <= kept
    assert not kept & {"choose_smallest_compression", "auto_compress", "_pergroup_role_stream",
                       "decompress_model_bytes", "dequantize_state_dict_int8", "upper_bound_code_bytes"}
    # pergroup's role streams are each the smallest of every stream compressor: all of them are reachable
    assert set(STREAM_DECOMPRESSORS.values()) <= kept_names(config("pergroup", 2))


def test_the_pipeline_reads_its_round_trip_as_configured_never_as_tooling_does():
    for name in PIPELINE_MODULES:
        source = inspect.getsource(importlib.import_module(name))
        assert "load_artifact_into_fresh_model" not in source, name
    assert "load_round_trip_model" in inspect.getsource(importlib.import_module("pgolf.steps"))


@pytest.mark.parametrize("preset", ["record_sp8192", "top_sp8192"])
def test_the_exported_script_ships_only_the_configured_decompressor(preset):
    cfg = apply_config_overrides(preset_config(preset), {"DATA_PATH": "./d", "TOKENIZER_PATH": "./t.model"},
                                 source="test")
    script = build_exported_script(cfg, preset_name=preset, verify=False)
    shipped = {node.name for node in ast.walk(ast.parse(script.readable)) if isinstance(node, ast.FunctionDef)}
    assert {name for name in STREAM_DECOMPRESSORS.values() if name in shipped} == {"_brotli_decompress_bounded"}
    assert not shipped & {"decompress_model_bytes", "choose_smallest_compression", "dequantize_state_dict_int8",
                          "source_bytes_of_modules"}
    assert ("pgolf.artifact.pergroup" in script.dropped_modules) == (cfg.artifact.compressor == "brotli")
