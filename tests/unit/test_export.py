"""``pgolf export``: dependency order, flattening, minification, the wrapper, baking, refusals, the cache.

Small synthetic ``pgolf`` packages written into tmp folders exercise each flattening rule; the real
package is exported for tiny_cpu once (module fixture) for the checks on what actually ships. How the
exporter specializes a program is tested on small programs in test_export_specialize.py; the exported
script of every preset is run against the package in tests/e2e/test_export_script.py.
"""

import ast
import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from pgolf.cli import main as cli_main
from pgolf.config import Config, apply_config_overrides, config_to_json
from pgolf.errors import ConfigError, PgolfError
from pgolf.export import bundle
from pgolf.export.bundle import (CODE_BYTES_PLACEHOLDER, ENVIRONMENT_FIELDS, SCRIPT_SEED, _settle_code_bytes,
                                 baked_config_values,
                                 build_exported_script, counted_source, export_cache_key, export_ready_config,
                                 exported_code_bytes, module_costs, write_exported_script)
from pgolf.export.flatten import ExportError, core_module_order, flatten_core_modules
from pgolf.export.minify import minify_source, unwrap_script, wrap_codec, wrap_source
from pgolf.export.verify import verify_minified
from pgolf.presets import tiny_cpu
from pgolf.provenance import pgolf_code_hash

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "pgolf"
# Written out here rather than imported, so the test does not trust the implementation's own rule:
# tooling is everything under these packages (folders) and the two entry modules.
TOOLING_PREFIXES = ("pgolf.commands.", "pgolf.exp.", "pgolf.export.", "pgolf.cli", "pgolf.__main__")
DATA = {"DATA_PATH": "/data/datasets/fineweb10B_sp1024", "TOKENIZER_PATH": "/data/tokenizers/sp1024.model"}


def make_package(root: Path, files: dict[str, str]) -> Path:
    """A throwaway ``pgolf`` package (never imported: the exporter only reads files)."""
    package = root / "pgolf"
    for relative, text in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    for folder in [package, *[p for p in package.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return package


def pgolf_imports(path: Path, top_level_only: bool) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    return [node.module for node in nodes if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pgolf.")]


@pytest.fixture(scope="module")
def real_script():
    """tiny_cpu, exported with the check that runs the minified program against the readable one."""
    cfg = apply_config_overrides(tiny_cpu(), {**DATA, "RUN_ID": "fixed_run"}, source="test")
    return cfg, build_exported_script(cfg, preset_name="tiny_cpu", verify=True)


def test_real_package_order_every_module_after_its_imports_and_no_tooling():
    names = [module.name for module in core_module_order("pgolf.run")]
    assert len(names) == len(set(names)) and "pgolf.run" in names
    for name in names:
        assert not name.startswith(TOOLING_PREFIXES), name
        path = PACKAGE_DIR.joinpath(*name.split(".")[1:]).with_suffix(".py")
        for dep in pgolf_imports(path, top_level_only=True):
            assert names.index(dep) < names.index(name), f"{name} comes before its import {dep}"
    # Independent closure: everything pgolf.run imports, at any depth, is bundled, and nothing else.
    closure, todo = set(), ["pgolf.run"]
    while todo:
        name = todo.pop()
        if name not in closure:
            closure.add(name)
            todo += pgolf_imports(PACKAGE_DIR.joinpath(*name.split(".")[1:]).with_suffix(".py"), top_level_only=False)
    assert set(names) == closure


@pytest.mark.parametrize("tooling", ["commands/brand_new_command.py", "exp/stats.py", "export/minify.py", "cli.py"])
def test_a_core_module_importing_tooling_is_refused(tmp_path, tooling):
    """By folder: a module nobody listed anywhere (a new command) is tooling because of where it lives."""
    module = "pgolf." + tooling.removesuffix(".py").replace("/", ".")
    package = make_package(tmp_path, {
        "run.py": f"def main():\n    from {module} import helper\n",
        tooling: "def helper():\n    pass\n"})
    with pytest.raises(ExportError, match="tooling"):
        core_module_order("pgolf.run", package)


def test_flattened_fake_package_keeps_aliases_nested_imports_and_type_checking(tmp_path):
    package = make_package(tmp_path, {
        "errors.py": "class BoomError(Exception):\n    pass\n",
        "util.py": '''
            import math
            from typing import Callable


            def double(x):
                """Twice x."""
                return 2 * x  # a comment


            SCALE = math.pi
            ''',
        "run.py": '''
            import math
            from collections.abc import Callable
            from typing import TYPE_CHECKING

            from pgolf.util import SCALE, double as twice

            if TYPE_CHECKING:
                from pgolf.errors import BoomError


            def main(x):
                from pgolf.errors import BoomError as Boom
                if x < 0:
                    raise Boom("negative")
                return twice(x) * SCALE + math.floor(0.5)
            '''})
    flat = flatten_core_modules("pgolf.run", package)
    assert [m.name for m in flat.modules] == ["pgolf.util", "pgolf.run", "pgolf.errors"]
    assert "from pgolf" not in flat.text and flat.text.count("import math\n") == 1
    namespace: dict = {}
    exec(compile(flat.text, "flat.py", "exec"), namespace)
    assert namespace["main"](3) == 6 * math.pi and namespace["twice"] is namespace["double"]
    with pytest.raises(namespace["BoomError"], match="negative"):
        namespace["main"](-1)


@pytest.mark.parametrize("files, message", [
    ({"run.py": "import pgolf.util\n", "util.py": "X = 1\n"}, "from pgolf.x import name"),
    ({"run.py": "from .util import X\n", "util.py": "X = 1\n"}, "relative import"),
    ({"run.py": "from os import path\nfrom pgolf.util import X\n", "util.py": "from sys import path\nX = 1\n"},
     "one namespace"),
    ({"run.py": "from pgolf.util import X\n\n\ndef path():\n    pass\n", "util.py": "from os import path\nX = 1\n"},
     "rename one"),
    ({"run.py": "from pgolf.util import X\nX2 = 2\n", "util.py": "X2 = 1\nX = 1\n"}, "unique"),
    ({"run.py": "from pgolf.model import gpt\n", "model/gpt.py": "X = 1\n"}, "not defined"),
    ({"run.py": "import os; from pgolf.util import X\n", "util.py": "X = 1\n"}, "lines of its own"),
])
def test_what_cannot_be_flattened_faithfully_is_refused(tmp_path, files, message):
    with pytest.raises(ExportError, match=message):
        flatten_core_modules("pgolf.run", make_package(tmp_path, files))


MINIFY_SAMPLE = '''
\"\"\"Module docstring.\"\"\"
import math


def tricky(n, word="a # not a comment"):
    \"\"\"Docstring.

    With a blank line.\"\"\"
    # a comment
    text = \"\"\"keep

    these   lines\"\"\"
    values = [1 if n else 2, n * 2, -n, n ** -1 if n else 0, 1.5e3, 0x1F, math.floor(2.5), (1).real]
    label = f"{n!r:>5} {{braces}} {word}"
    if not n:
        "a literal statement"
    return values, text, label, not n, n in (1, 2), [x for x in range(3) if x is not None]


class Box:
    "only a docstring"


RESULT = [tricky(0), tricky(3), tricky(2, word="w"), Box.__name__]
'''


def test_minified_source_behaves_identically_and_is_smaller():
    minified = minify_source(MINIFY_SAMPLE)
    original, compact = {}, {}
    exec(compile(MINIFY_SAMPLE, "original.py", "exec"), original)
    exec(compile(minified, "minified.py", "exec"), compact)
    result = next(value for name, value in compact.items() if isinstance(value, list) and not name.startswith("__"))
    assert result[:3] == original["RESULT"][:3]  # python-minifier renames globals, so the class is not "Box"
    assert "Docstring" not in minified and "# a comment" not in minified and "literal statement" not in minified
    assert len(minified) < 0.6 * len(MINIFY_SAMPLE)


def test_a_minifier_failure_stops_the_export_with_a_clear_error(monkeypatch):
    def broken(source, **options):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("pgolf.export.minify.python_minifier.minify", broken)
    with pytest.raises(ExportError, match="python-minifier failed.*RecursionError"):
        minify_source("x = 1\n")
    monkeypatch.setattr("pgolf.export.minify.python_minifier.minify", lambda source, **options: "def (:\n")
    with pytest.raises(ExportError, match="does not compile"):
        minify_source("x = 1\n")


@pytest.mark.parametrize("codec", ["lzma", "brotli"])
@pytest.mark.parametrize("source, register", [("X = 1\n", False), ("import triton\nX = 1\n", True)])
def test_every_wrapper_form_round_trips_and_runs(source, register, codec):
    wrapped = wrap_source(source, codec=codec)
    assert unwrap_script(wrapped) == source and wrapped.startswith(f"import {codec},base64".encode())
    assert (b"linecache" in wrapped) == register  # only a program with Triton kernels registers its source
    assert len(wrapped.splitlines()) == (4 if register else 2)
    if not register:  # (the other form needs triton installed to run)
        namespace: dict = {}
        exec(wrapped.decode("ascii"), namespace)
        assert namespace["X"] == 1


def test_brotli_wraps_only_a_program_that_imports_it_and_only_when_smaller():
    words = " ".join(f"value_{index} = index_of_the_word({index}, 'the quick brown fox')" for index in range(300))
    plain = f"def index_of_the_word(i, w):\n    return i\n\n{words}\n"
    assert wrap_codec(plain) == "lzma"  # brotli is not a dependency this program has
    uses_brotli = "def load():\n    import brotli\n    return brotli\n\n" + plain
    smaller = min(("lzma", "brotli"), key=lambda codec: len(wrap_source(uses_brotli, codec=codec)))
    assert wrap_codec(uses_brotli) == smaller and wrap_source(uses_brotli) == wrap_source(uses_brotli, codec=smaller)


def test_wrapped_file_decompresses_to_the_minified_source_and_counts_its_disk_bytes(real_script, tmp_path):
    _, script = real_script
    assert unwrap_script(script.wrapped) == script.minified
    # The readable file is the same program; the counted one has line numbers where its messages were.
    assert minify_source(counted_source(script.readable, script.program)) == script.minified
    compile(script.readable, "train_gpt.readable.py", "exec")
    lines = script.wrapped.rstrip(b"\n").decode("ascii").splitlines()  # (less any padding to its own size)
    assert len(lines) == 2 and lines[0] == f"import {script.wrap_codec},base64"  # no kernels: the records' form
    wrapped, readable = write_exported_script(script, tmp_path / "train_gpt.py")
    assert wrapped.stat().st_size == script.wrapped_bytes == len(wrapped.read_bytes())
    assert readable.name == "train_gpt.readable.py" and readable.read_text() == script.readable
    assert script.wrapped_bytes < script.minified_bytes < script.readable_bytes
    assert not any(isinstance(node, (ast.Import, ast.ImportFrom)) and "pgolf" in ast.unparse(node)
                   for node in ast.walk(ast.parse(script.minified)))


def test_what_tiny_cpu_never_runs_is_not_shipped(real_script):
    _, script = real_script
    for module in ("pgolf.model.features.smear_gate", "pgolf.model.kernels.fused_mlp", "pgolf.optim.sharded",
                   "pgolf.quant.qat", "pgolf.eval.ttt_lora", "pgolf.quant.prune_search"):
        assert module in script.dropped_modules and module not in script.modules
    # Gradient sync is imported by the loop and dropped only by folding TrainingParts.sharded_gradients (a
    # dataclass field every construction sets to False): a type(x) of an unknown x anywhere in the program
    # (once, in the entry's error printer) made every class rebuildable and shipped it.
    assert "pgolf.optim.grad_sync" not in script.modules
    assert "def relu_squared" in script.readable and "def leaky_relu_squared" not in script.readable
    assert "pgolf.model.gpt" in script.modules and "train_seq_len" in script.fixed_fields


def test_the_minified_program_is_checked_by_running_it(real_script):
    _, script = real_script
    counted = counted_source(script.readable, script.program)  # what was minified (messages as line numbers)
    result = verify_minified(script.readable, script.minified, counted)
    assert math.isfinite(result["loss"]) and result["grads"] and result["weights"]
    # TIED_EMBED_INIT_STD is folded into the embedding's init; a minifier that changed it would change the run.
    assert script.minified.count("std=.005") == 1, "the baked init scale is not where the test expects it"
    broken = script.minified.replace("std=.005", "std=.006")
    with pytest.raises(ExportError, match="computes differently"):
        verify_minified(script.readable, broken, counted)


def test_an_existing_file_is_never_overwritten(real_script, tmp_path):
    _, script = real_script
    (tmp_path / "train_gpt.readable.py").write_text("mine")
    with pytest.raises(PgolfError, match="already exists"):
        write_exported_script(script, tmp_path / "train_gpt.py")
    assert not (tmp_path / "train_gpt.py").exists() and (tmp_path / "train_gpt.readable.py").read_text() == "mine"
    write_exported_script(script, tmp_path / "other.py")
    with pytest.raises(PgolfError, match="already exists"):
        write_exported_script(script, tmp_path / "other.py")


def test_entry_bakes_the_config_and_the_environment_sets_only_what_it_may(real_script, monkeypatch, capsys):
    cfg, script = real_script
    module = types.ModuleType("exported_train_gpt_under_test")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(script.readable, "train_gpt.readable.py", "exec"), module.__dict__)
    calls = []
    module.run_submission = lambda cfg, **kwargs: calls.append((cfg, kwargs))
    for key in ("NUM_LAYERS", "MATRIX_LR", "RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SEED", "42")
    assert module._run_exported_script() == 0
    ran, kwargs = calls[0]
    assert ran.train.seed == 42 and module.Config().train.seed == 1337 and kwargs["preset_name"] == "tiny_cpu"
    assert kwargs["code_bytes"] == script.wrapped_bytes
    assert (ran.model.num_layers, ran.model.model_dim, ran.data.data_path) == (4, 128, DATA["DATA_PATH"])
    assert ran.run.run_id == "" and cfg.run.run_id == "fixed_run"  # each run of the script picks its own id
    assert script.code_hash == pgolf_code_hash() and repr(script.code_hash) in script.readable  # baked
    monkeypatch.setenv("SEED", "not_a_number")
    assert module._run_exported_script() == 2 and "SEED" in capsys.readouterr().err
    monkeypatch.setenv("SEED", "42")
    monkeypatch.setenv("NUM_LAYERS", "4")  # the baked value: allowed
    assert module._run_exported_script() == 0
    monkeypatch.setenv("NUM_LAYERS", "6")
    monkeypatch.setenv("MATRIX_LR", "0.01")
    assert module._run_exported_script() == 2
    assert "NUM_LAYERS, MATRIX_LR cannot change in this train_gpt.py" in capsys.readouterr().err
    assert len(calls) == 2 and {"seed", "run_id", "data_path"} <= ENVIRONMENT_FIELDS
    for key in ("NUM_LAYERS", "MATRIX_LR"):
        monkeypatch.delenv(key)
    baked_targets = ",".join(module.Config().ttt.ttt_lora_targets)
    monkeypatch.setenv("TTT_LORA_TARGETS", baked_targets)  # a tuple field, at its baked value: allowed
    monkeypatch.setenv("MAX_WALLCLOCK_SECONDS", "1.5")
    assert module._run_exported_script() == 0 and calls[-1][0].train.max_wallclock_seconds == 1.5
    monkeypatch.setenv("TTT_LORA_TARGETS", "c_q")
    assert module._run_exported_script() == 2 and "TTT_LORA_TARGETS cannot change" in capsys.readouterr().err


def test_baked_values_are_the_differences_from_the_defaults(real_script):
    cfg, _ = real_script
    values = baked_config_values(export_ready_config(cfg))
    assert values["NUM_LAYERS"] == 4 and values["DATA_PATH"] == DATA["DATA_PATH"]
    assert "RUN_ID" not in values and "SEED" not in values and "VOCAB_SIZE" not in values
    with pytest.raises(ConfigError, match="DATA_PATH"):
        export_ready_config(tiny_cpu())


@pytest.mark.parametrize("padding", [0, 1, 500, 5000])
def test_a_script_that_states_its_own_size_states_it_exactly(padding):
    template = minify_source(f"PAD = {'x' * padding!r}\nSIZE = {CODE_BYTES_PLACEHOLDER}\nALSO = {CODE_BYTES_PLACEHOLDER}\n")
    _, stated, wrapped = _settle_code_bytes(template)
    namespace: dict = {}
    exec(unwrap_script(wrapped), namespace)
    values = [value for name, value in namespace.items() if isinstance(value, int) and not name.startswith("__")]
    assert values == [stated, stated] and stated == len(wrapped)


def test_a_size_that_never_settles_is_padded_to_the_largest_seen(monkeypatch):
    """A wrapper whose size flips between 100 and 101 bytes with the number it states: no fixed point,
    so the exporter states 101 and pads the 100-byte file with one newline."""
    def flipping_wrap(source: str, register_source=None, codec=None) -> bytes:
        stated = int(source.rsplit("=", 1)[1])
        return b"x" * (101 if stated == 100 else 100)

    monkeypatch.setattr("pgolf.export.bundle.wrap_source", flipping_wrap)
    source, stated, wrapped = _settle_code_bytes(f"x=1\nB={CODE_BYTES_PLACEHOLDER}\n")
    assert stated == 101 == len(wrapped) and wrapped.endswith(b"x\n") and "B=101" in source


def test_main_with_a_code_bytes_parameter_receives_the_scripts_own_size(tmp_path):
    package = make_package(tmp_path, {
        "errors.py": "class PgolfError(Exception):\n    pass\n\n\nclass ConfigError(PgolfError):\n    pass\n",
        "config.py": '''
            from dataclasses import dataclass, field


            @dataclass(frozen=True)
            class TrainConfig:
                seed: int = 1337


            @dataclass(frozen=True)
            class Config:
                train: TrainConfig = field(default_factory=TrainConfig)


            def coerce_config_value(key, value, annotation):
                return annotation(value)


            def check_run_settings(cfg):
                return cfg
            ''',
        "submission.py": '''
            from pgolf.config import Config
            from pgolf.errors import PgolfError

            CALLS = []


            def run_submission(cfg, *, preset_name, code_bytes=None):
                CALLS.append((cfg, preset_name, code_bytes))
            '''})
    cfg = apply_config_overrides(tiny_cpu(), DATA, source="test")
    script = build_exported_script(cfg, preset_name="tiny_cpu", package_dir=package, code_hash="0" * 16)
    assert script.baked_code_bytes
    assert minify_source(counted_source(script.readable, script.program)) == script.minified
    namespace = {"__name__": "__main__"}
    with pytest.raises(SystemExit) as exit_info:
        exec(unwrap_script(script.wrapped), namespace)
    assert exit_info.value.code == 0
    calls = next(value for value in namespace.values() if isinstance(value, list) and value)
    _, preset, code_bytes = calls[0]
    assert code_bytes == script.wrapped_bytes and preset == "tiny_cpu"


def test_switching_a_feature_on_brings_its_module_in(real_script):
    cfg, script = real_script
    with_gate = build_exported_script(apply_config_overrides(cfg, {"SMEAR_GATE_ENABLED": "1"}, source="test"),
                                      preset_name="tiny_cpu", verify=False)
    assert "pgolf.model.features.smear_gate" in with_gate.modules
    assert "pgolf.model.features.smear_gate" in script.dropped_modules
    assert with_gate.wrapped_bytes > script.wrapped_bytes and with_gate.readable_bytes > script.readable_bytes
    costs = module_costs(with_gate)
    assert 0 < costs["pgolf.model.features.smear_gate"][1] < costs["pgolf.model.gpt"][1]
    shipped = {m.name: m for m in with_gate.shipped}
    assert shipped["pgolf.model.features.smear_gate"].why == "switch smear_gate_enabled is on"


def test_exported_code_bytes_is_the_written_files_size_and_is_cached(real_script, tmp_path, monkeypatch):
    cfg, script = real_script
    cached = apply_config_overrides(cfg, {"PGOLF_CACHE_DIR": str(tmp_path)}, source="test")
    built = []

    def build(*args, **kwargs):
        built.append(kwargs)
        return script

    monkeypatch.setattr(bundle, "build_exported_script", build)
    assert exported_code_bytes(cached, preset_name="tiny_cpu") == script.wrapped_bytes
    assert exported_code_bytes(cached, preset_name="tiny_cpu") == script.wrapped_bytes
    assert len(built) == 1 and len(list((tmp_path / "export").glob("*.json"))) == 1
    exported_code_bytes(apply_config_overrides(cached, {"NUM_LAYERS": "5"}, source="test"), preset_name="tiny_cpu")
    assert len(built) == 2  # another configuration: another entry
    # The file may carry a few newlines of padding to state its own size exactly.
    unpadded = wrap_source(script.minified, codec=script.wrap_codec)
    assert script.wrapped.rstrip(b"\n") + b"\n" == unpadded and len(script.wrapped) == script.wrapped_bytes


def test_full_records_are_part_of_the_cache_key(real_script, tmp_path, monkeypatch):
    cfg, script = real_script
    ready = export_ready_config(cfg)
    assert export_cache_key(ready, "tiny_cpu", "0" * 16) == export_cache_key(ready, "tiny_cpu", "0" * 16, False)
    assert export_cache_key(ready, "tiny_cpu", "0" * 16, True) != export_cache_key(ready, "tiny_cpu", "0" * 16)
    cached = apply_config_overrides(cfg, {"PGOLF_CACHE_DIR": str(tmp_path)}, source="test")
    built = []

    def build(*args, **kwargs):
        built.append(kwargs["full_records"])
        return script

    monkeypatch.setattr(bundle, "build_exported_script", build)
    for full_records in (False, True, False, True):
        exported_code_bytes(cached, preset_name="tiny_cpu", full_records=full_records)
    assert built == [False, True] and len(list((tmp_path / "export").glob("*.json"))) == 2


def test_a_lean_script_leaves_the_bookkeeping_out_and_full_records_bring_it(real_script):
    cfg, script = real_script
    assert "full_records=False)" in script.readable and not script.full_records
    full = build_exported_script(cfg, preset_name="tiny_cpu", verify=False, full_records=True)
    assert "full_records=True)" in full.readable and full.summary()["full_records"]
    lean, records = counted_source(script.readable, script.program), counted_source(full.readable, full.program)
    for definition in ("def build_report", "def publish_report", "def json_safe_report", "def environment_summary",
                       "def format_quant_plan", "def format_quantized_weights", "def describe_artifact_pruning",
                       "def calibration_budget_fields", "def evaluation_budget"):
        assert definition not in lean and definition in records, definition
    for kept in ("def refuse_non_finite_scores", "def check_artifact_fits", "Total submission size", "Code size:"):
        assert kept in lean, kept
    assert full.wrapped_bytes > script.wrapped_bytes


def test_cli_exports_a_preset_and_a_run_directory(real_script, tmp_path, capsys, monkeypatch):
    _, script = real_script
    asked = []

    def build(cfg, preset_name, keep_messages, wrapper, full_records):
        asked.append(full_records)
        return script

    monkeypatch.setattr("pgolf.commands.export.build_exported_script", build)
    monkeypatch.delenv("SEED", raising=False)
    overrides = [f"{key}={value}" for key, value in DATA.items()]
    assert cli_main(["export", "tiny_cpu", *overrides, "-o", str(tmp_path / "a.py"), "--json", "--explain"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["wrapped_bytes"] == (tmp_path / "a.py").stat().st_size and report["preset"] == "tiny_cpu"
    assert (tmp_path / "a.readable.py").is_file()
    rows = {row["module"]: row for row in report["explain"]["modules"]}
    assert rows["pgolf/steps.py"]["why"].startswith("needed by") and "quant/qat" not in str(rows)
    assert "pgolf.quant.qat" in report["explain"]["dropped_modules"]
    assert cli_main(["export", "tiny_cpu", *overrides, "-o", str(tmp_path / "a.py")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["export", "tiny_cpu", *overrides, "-o", str(tmp_path / "c.py"), "--explain"]) == 0
    printed = capsys.readouterr().out
    assert "pgolf/model/gpt.py" in printed and "not shipped (this configuration never runs them)" in printed
    assert "records: lean" in printed and report["full_records"] is False and report["explain"]["full_records"] is False
    assert cli_main(["export", "tiny_cpu", *overrides, "-o", str(tmp_path / "d.py"), "--full-records"]) == 0
    assert asked == [False, False, True] and "wrote" in capsys.readouterr().out

    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(config_to_json(apply_config_overrides(tiny_cpu(), DATA, source="test")))
    (run_dir / "report.json").write_text(json.dumps({"preset": "tiny_cpu"}))
    assert cli_main(["export", str(run_dir), "-o", str(tmp_path / "b.py"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["wrapped_bytes"] == report["wrapped_bytes"]
    assert cli_main(["export", "no_such_preset_or_dir"]) == 2
    assert "neither a run directory nor a preset" in capsys.readouterr().err


def test_a_bare_preset_name_is_the_preset_even_beside_a_folder_of_that_name(tmp_path, capsys, monkeypatch):
    """``pgolf export tiny_cpu`` where ./tiny_cpu is a run: the preset, with a note naming ./tiny_cpu, the
    spelling of the folder (the folder won silently before)."""
    exported = []

    def build(cfg, **_):  # the configuration the command resolved, then stop before the (slow) export
        exported.append(cfg)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr("pgolf.commands.export.build_exported_script", build)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_cpu").mkdir()
    run_cfg = apply_config_overrides(tiny_cpu(), {**DATA, "NUM_LAYERS": "3"}, source="test")
    (tmp_path / "tiny_cpu" / "config.json").write_text(config_to_json(run_cfg))
    overrides = [f"{key}={value}" for key, value in DATA.items()]
    assert cli_main(["export", "tiny_cpu", *overrides]) == 2
    assert "note: exporting the preset tiny_cpu; for the folder of that name write ./tiny_cpu" in capsys.readouterr().err
    assert exported[-1].model.num_layers == tiny_cpu().model.num_layers != 3
    assert cli_main(["export", "./tiny_cpu"]) == 2
    assert exported[-1].model.num_layers == 3 and "note:" not in capsys.readouterr().err


def test_a_submission_ships_no_resume_or_checkpoints_unless_the_configuration_asks(real_script):
    cfg, script = real_script
    assert "run_submission(cfg, preset_name='tiny_cpu'" in script.readable
    for module in ("pgolf.run", "pgolf.train.resume", "pgolf.train.memory"):
        assert module not in script.modules  # the submission's entry does not even import them
    for definition in ("class CheckpointManager", "class InterruptRequest", "def lock_run_directory", "def log_header"):
        assert definition not in script.readable  # (the loop's TrainingPosition ships from checkpoint.py)
    checkpointed = build_exported_script(apply_config_overrides(cfg, {"CHECKPOINT_EVERY": "5"}, source="test"),
                                         preset_name="tiny_cpu", verify=False)
    assert "main(cfg, preset_name='tiny_cpu', preset_cfg=baked" in checkpointed.readable
    assert {"pgolf.train.checkpoint", "pgolf.train.resume"} <= set(checkpointed.modules)
    assert "class CheckpointManager" in checkpointed.readable
    assert checkpointed.wrapped_bytes > script.wrapped_bytes


def test_the_counted_script_points_at_the_readable_line_of_each_message(real_script, monkeypatch, capsys):
    _, script = real_script
    assert "is not a valid" in script.readable and "is not a valid" not in script.minified
    module = types.ModuleType("exported_minified_under_test")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(script.minified, "train_gpt.py", "exec"), module.__dict__)
    monkeypatch.setenv("SEED", "not_a_number")
    main_guard = ast.parse(script.minified).body[-1]  # if __name__ == '__main__': sys.exit(<entry>())
    entry = main_guard.body[0].value.args[0].func.id
    assert getattr(module, entry)() == 2
    error = capsys.readouterr().err
    line = int(error.split("see line ")[1].split()[0])
    assert "of train_gpt.readable.py" in error
    assert "is not a valid" in script.readable.splitlines()[line - 1]  # the message, at the line named
    assert "'not_a_number'" in error  # and the value the message quoted, so the error names what was wrong


def test_the_counted_script_names_a_fixed_field_the_environment_tried_to_change(real_script, monkeypatch, capsys):
    _, script = real_script
    module = types.ModuleType("exported_minified_fixed_field")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(script.minified, "train_gpt.py", "exec"), module.__dict__)
    monkeypatch.setenv("NUM_LAYERS", "3")
    main_guard = ast.parse(script.minified).body[-1]
    assert getattr(module, main_guard.body[0].value.args[0].func.id)() == 2
    error = capsys.readouterr().err
    assert "'NUM_LAYERS'" in error and "see line" in error


def test_the_counted_script_refuses_run_settings_pgolf_train_refuses(real_script, monkeypatch, capsys):
    _, script = real_script
    module = types.ModuleType("exported_minified_run_settings")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(script.minified, "train_gpt.py", "exec"), module.__dict__)
    entry = getattr(module, ast.parse(script.minified).body[-1].body[0].value.args[0].func.id)
    for key, value, words in (("ITERATIONS", "0", "ITERATIONS=0 must be >= 1"),
                              ("MAX_WALLCLOCK_SECONDS", "-5", "MAX_WALLCLOCK_SECONDS=-5.0 must be >= 0"),
                              ("VAL_MAX_TOKENS", "-1", "VAL_MAX_TOKENS=-1 must be >= 0")):
        monkeypatch.setenv(key, value)
        assert entry() == 2
        assert words in capsys.readouterr().err
        monkeypatch.delenv(key)


def test_what_only_worded_a_message_is_not_in_the_counted_script(real_script):
    _, script = real_script
    # fsutil words its write errors in a helper: raise PgolfError(describe_write_failure(path, error, size))
    assert "def describe_write_failure" in script.readable
    counted = counted_source(script.readable, script.program)
    assert "describe_write_failure" not in counted and "def write_bytes_atomic" in counted


def test_a_forced_wrapper_is_used_and_still_states_its_own_size(real_script):
    cfg, script = real_script
    other = "lzma" if script.wrap_codec == "brotli" else "brotli"
    forced = build_exported_script(cfg, preset_name="tiny_cpu", verify=False, wrapper=other)
    assert forced.wrap_codec == other and unwrap_script(forced.wrapped) == forced.minified
    # the size is a literal where the script logs it (the entry passes it positionally, or not at all)
    assert f"Code size: {{{forced.wrapped_bytes}}} bytes" in forced.minified
    with pytest.raises(ConfigError, match="unknown wrapper"):
        build_exported_script(cfg, preset_name="tiny_cpu", verify=False, wrapper="zip")


def test_keep_messages_keeps_them_in_the_counted_script(real_script):
    cfg, script = real_script
    kept = build_exported_script(cfg, preset_name="tiny_cpu", verify=False, keep_messages=True)
    assert "is not a valid" in kept.minified and kept.wrapped_bytes > script.wrapped_bytes
    assert minify_source(kept.readable) == kept.minified


EXPORT_DIGEST_PROGRAM = """
import hashlib
from pgolf.config import apply_config_overrides
from pgolf.export.bundle import build_exported_script
from pgolf.presets import record_sp8192
cfg = apply_config_overrides(record_sp8192(), {"DATA_PATH": "/d", "TOKENIZER_PATH": "/t.model"}, source="test")
print(hashlib.sha256(build_exported_script(cfg, preset_name="record_sp8192", verify=False).wrapped).hexdigest())
"""


@pytest.mark.slow
def test_the_export_is_the_same_whatever_the_string_hash_seed():
    """`pgolf train` logs the size of its own export as exact, and `pgolf export` runs in another process:
    nothing in the export may follow set or dict order that depends on Python's string hashing."""
    digests = set()
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", EXPORT_DIGEST_PROGRAM], capture_output=True, text=True,
                                env={**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        digests.add(result.stdout.strip())
    assert len(digests) == 1, digests


def test_every_seed_of_a_configuration_has_one_script():
    # SEED is given at run time (SEED=42 python train_gpt.py), never baked: the seeds of a record share
    # one train_gpt.py, so every seed's run logs the size of the script the record ships.
    from_run = apply_config_overrides(tiny_cpu(), {"SEED": "42", "DATA_PATH": "d", "TOKENIZER_PATH": "t.model"},
                                      source="test")
    other_seed = dataclasses.replace(from_run, train=dataclasses.replace(from_run.train, seed=7))
    assert export_ready_config(from_run) == export_ready_config(other_seed)
    assert export_ready_config(from_run).train.seed == SCRIPT_SEED == Config().train.seed
