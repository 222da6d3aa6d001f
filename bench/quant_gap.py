"""The quantization gap of the main schemes, and the cost of pergroup and of fitting to the cap.

Three sections (each prints Markdown for docs/BENCHMARKS.md and a JSON line):

    python bench/quant_gap.py                     # train a small model, then the gap table (~4 min)
    python bench/quant_gap.py --run runs/<id>     # the gap table of an existing run (with final_weights.pgtc)
    python bench/quant_gap.py --chain [--full]    # greedy L1 row chain of an 8192 x 512 embedding
    python bench/quant_gap.py --fit               # fit-to-cap search on a ~16 MB record-shaped state

Gap table: a tiny_cpu model with its MLP widened to 5x (so the 640 x 128 MLP matrices and the
1024 x 128 tied embedding are above the 65,536-weight passthrough limit and really get quantized) is
trained for a fixed number of steps on the embedded default data. Its full-precision weights are scored
once (pre-quant BPB), then each scheme of :data:`GAP_SCHEMES` is quantized, compressed, saved, loaded
back into a fresh model and scored over the whole validation split, exactly as ``pgolf quantize`` does.
Bytes are code (the exported train_gpt.py, exact) + model.

Fit-to-cap: a state with the record's shapes (11 layers, width 512, MLP 4x, vocabulary 8192; random
weights with log-normal row scales) quantized as R1081 (int6 SDClip blocks, int8 embedding), then the
plain binary search and the estimate-guided one prune it to ``--cut`` bytes below its size.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgolf.artifact.container import pack_tensor_container  # noqa: E402
from pgolf.artifact.compress import compress_model_bytes, decompress_model_bytes  # noqa: E402
from pgolf.artifact.pergroup import greedy_l1_row_chain, split_container_by_role  # noqa: E402
from pgolf.commands.configuration import fill_default_data, resolve_config  # noqa: E402
from pgolf.commands.quantize import ToolLog, code_bytes_of, gptq_hessians_for, new_output_dir, open_session  # noqa: E402
from pgolf.config import QuantConfig, apply_config_overrides, validate_config  # noqa: E402
from pgolf.export.bundle import exported_code_bytes  # noqa: E402
from pgolf.quant.artifact_quant import quantize_for_artifact  # noqa: E402
from pgolf.quant.prune import prune_codes_to_fit  # noqa: E402
from pgolf.quant.model_artifact import load_artifact_into_fresh_model, write_quantized_artifact  # noqa: E402
from pgolf.run import main as run_main  # noqa: E402

TRAIN_SETTINGS = ["MLP_MULT=5", "TRAIN_BATCH_TOKENS=8192", "MAX_WALLCLOCK_SECONDS=0"]
GPTQ_INT6 = {"QUANT_METHOD": "gptq", "MATRIX_BITS": "6", "CLIP_METHOD": "sdclip", "BYTE_SHUFFLE_STRIDE": "2"}
GAP_SCHEMES: dict[str, dict[str, str]] = {
    "rtn int8 percentile + zlib (baseline)": {"QUANT_METHOD": "rtn", "MATRIX_BITS": "8", "CLIP_METHOD": "percentile",
                                              "COMPRESSOR": "zlib", "BYTE_SHUFFLE_STRIDE": "0"},
    "rtn int6 sdclip + brotli": {"QUANT_METHOD": "rtn", "MATRIX_BITS": "6", "CLIP_METHOD": "sdclip",
                                 "COMPRESSOR": "brotli", "BYTE_SHUFFLE_STRIDE": "2"},
    "gptq int6 sdclip + brotli (R1081)": {**GPTQ_INT6, "COMPRESSOR": "brotli"},
    "gptq int6 sdclip + auto": {**GPTQ_INT6, "COMPRESSOR": "auto"},
    "gptq int6 sdclip + pergroup": {**GPTQ_INT6, "COMPRESSOR": "pergroup"},
}


def machine_line() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return (f"machine: {platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}; "
            f"date {time.strftime('%Y-%m-%d')}; commit {commit}")


def train_run(iterations: int, extra: list[str]) -> Path:
    cfg, preset, name = resolve_config("tiny_cpu", TRAIN_SETTINGS + [f"ITERATIONS={iterations}"] + extra, environ={})
    cfg = fill_default_data(cfg)
    started = time.perf_counter()
    report = run_main(cfg, preset_name=name, preset_cfg=preset, echo=False, code_bytes=exported_code_bytes(cfg, preset_name=name))
    print(f"trained {report['run_dir']}: {report['steps']} steps in {time.perf_counter() - started:.0f}s, "
          f"{report['val_tokens']:,} validation tokens")
    return Path(report["run_dir"])


def gap_rows(run_dir: Path) -> tuple[float, list[dict]]:
    """(pre-quant BPB, one row per scheme), one session: the weights are scored once, Hessians collected once."""
    log = ToolLog(echo=False)
    session = open_session(run_dir, {}, log)
    hessians, rows = None, []
    for index, (label, settings) in enumerate(GAP_SCHEMES.items()):
        cfg = validate_config(apply_config_overrides(session.cfg, settings, source=f"scheme {label!r}"))
        if cfg.quant.quant_method == "gptq" and hessians is None:
            hessians, _ = gptq_hessians_for(session, cfg, log)
        out_dir = new_output_dir(run_dir, None, prefix=f"gap{index}_")
        started = time.perf_counter()
        path, size, fields = write_quantized_artifact(session.state, cfg, out_dir, log, hessians=hessians,
                                                      looping=session.looping, code_bytes=code_bytes_of(run_dir, cfg))
        seconds = time.perf_counter() - started
        sums = session.evaluate(load_artifact_into_fresh_model(path, cfg.model, session.ctx.runtime))
        rows.append({"scheme": label, "val_bpb": sums.val_bpb, "gap": sums.val_bpb - session.prequant.val_bpb,
                     "compressor": fields["artifact_compressor"], "stride": fields["artifact_shuffle_stride"],
                     "model_bytes": size.model_bytes, "code_bytes": size.code_bytes, "total_bytes": size.total_bytes,
                     "quantize_seconds": round(seconds, 1)})
        print(f"{label}: val_bpb {sums.val_bpb:.4f}, {size.model_bytes:,} model bytes ({seconds:.1f}s)", flush=True)
    return session.prequant.val_bpb, rows


def gap_section(args) -> dict:
    run_dir = Path(args.run) if args.run else train_run(args.iterations, args.overrides)
    prequant, rows = gap_rows(run_dir)
    print(f"\npre-quant val_bpb {prequant:.4f}; {machine_line()}\n")
    print("| scheme | compressor used | round-trip val_bpb | gap | model bytes | code bytes | total bytes |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['scheme']} | {row['compressor']} (stride {row['stride']}) | {row['val_bpb']:.4f} | "
              f"{row['gap']:+.4f} | {row['model_bytes']:,} | {row['code_bytes']:,} | {row['total_bytes']:,} |")
    return {"section": "gap", "run_dir": str(run_dir), "val_bpb_prequant": prequant, "rows": rows}


def record_shaped_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """R1081's matrix shapes, random weights with log-normal row scales (also bench/lrzip_pergroup.py's)."""
    g = torch.Generator().manual_seed(seed)

    def matrix(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * (0.02 * torch.exp(0.3 * torch.randn(rows, 1, generator=g)))

    state = {"tok_emb.weight": matrix(8192, 512)}
    for i in range(11):
        for name, shape in [("attn.c_q", (512, 512)), ("attn.c_k", (256, 512)), ("attn.c_v", (256, 512)),
                            ("attn.proj", (512, 512)), ("mlp.fc", (2048, 512)), ("mlp.proj", (512, 2048))]:
            state[f"blocks.{i}.{name}.weight"] = matrix(*shape)
        state[f"blocks.{i}.attn_scale"] = torch.ones(512)
    return state


def record_shaped_codes(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """R1081's matrix shapes, random weights with log-normal row scales, quantized as R1081."""
    state = record_shaped_state(seed)
    cfg = QuantConfig(matrix_bits=6, clip_method="sdclip", matrix_clip_sigmas=12.85, embed_bits=8, embed_clip_sigmas=20.0)
    return quantize_for_artifact(state, cfg)


def chain_section(args) -> dict:
    tensors, meta = record_shaped_codes()
    started = time.perf_counter()
    greedy_l1_row_chain(tensors["tok_emb.weight.q"])
    chain_seconds = time.perf_counter() - started
    container = pack_tensor_container(tensors, {"quant": meta})
    started = time.perf_counter()
    streams = split_container_by_role(container)
    split_seconds = time.perf_counter() - started
    print(f"greedy L1 chain of the 8192 x 512 int8 embedding: {chain_seconds:.1f}s; whole record-shaped split "
          f"(embedding + 11 c_q + 11 fc chains, {len(container):,}-byte container, {len(streams)} streams): "
          f"{split_seconds:.1f}s; {machine_line()}", flush=True)
    result = {"section": "chain", "chain_seconds": chain_seconds, "split_seconds": split_seconds}
    if args.full:  # the whole pergroup compression and decompression, against brotli (slow: minutes)
        for compressor in ("pergroup", "brotli"):
            started = time.perf_counter()
            blob = compress_model_bytes(container, compressor, 2)
            packed = time.perf_counter() - started
            started = time.perf_counter()
            assert decompress_model_bytes(blob) == container
            result[compressor] = {"bytes": len(blob), "compress_s": packed, "decompress_s": time.perf_counter() - started}
            print(f"{compressor} (stride 2): {len(blob):,} bytes, compress {packed:.0f}s, decompress "
                  f"{result[compressor]['decompress_s']:.1f}s", flush=True)
    return result


def fit_section(args) -> dict:
    tensors, meta = record_shaped_codes()
    extra = {"quant": meta, "extra": {}}

    def size_of(candidate: dict[str, torch.Tensor]) -> int:
        return len(compress_model_bytes(pack_tensor_container(candidate, extra), args.compressor, args.stride))

    started = time.perf_counter()
    unpruned = size_of(tensors)
    one = time.perf_counter() - started
    print(f"{args.compressor} stride {args.stride}: unpruned model {unpruned:,} bytes, one compression {one:.1f}s",
          flush=True)
    result = {"section": "fit", "compressor": args.compressor, "unpruned_bytes": unpruned, "one_compression_s": one}
    for search in (["estimated", "plain"] if args.plain else ["estimated"]):
        started = time.perf_counter()
        _, pruned = prune_codes_to_fit(tensors, meta, size_of, unpruned - args.cut, initial_size=unpruned,
                                       workers=args.workers, plain_bisection=search == "plain")
        seconds = time.perf_counter() - started
        result[search] = {**pruned.as_dict(), "seconds": seconds, "per_tensor": len(pruned.per_tensor)}
        print(f"{search}: pruned {pruned.pruned:,} of {pruned.candidates:,} -> {pruned.size_bytes:,} bytes; "
              f"{pruned.measured_sizes} real compressions in {pruned.measurement_rounds} rounds, "
              f"{pruned.estimated_sizes} estimates, {seconds:.0f}s", flush=True)
    print(machine_line())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="the gap table of this existing run instead of training one")
    parser.add_argument("--iterations", type=int, default=100, help="training steps of the new run (default 100)")
    parser.add_argument("--chain", action="store_true", help="time the greedy row chain instead")
    parser.add_argument("--full", action="store_true", help="--chain: also time whole pergroup and brotli round trips")
    parser.add_argument("--fit", action="store_true", help="time the fit-to-cap search instead")
    parser.add_argument("--compressor", default="zlib", help="--fit: the compressor (default zlib)")
    parser.add_argument("--stride", type=int, default=2, help="--fit: byte-shuffle stride (default 2)")
    parser.add_argument("--cut", type=int, default=100_000, help="--fit: bytes to remove (default 100,000)")
    parser.add_argument("--workers", type=int, default=1, help="--fit: threads for parallel measurements (default 1)")
    parser.add_argument("--plain", action="store_true", help="--fit: also run the plain binary search")
    parser.add_argument("overrides", nargs="*", metavar="KEY=value", help="extra settings of the new run")
    args = parser.parse_args()
    section = chain_section if args.chain else fit_section if args.fit else gap_section
    print(json.dumps(section(args), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
