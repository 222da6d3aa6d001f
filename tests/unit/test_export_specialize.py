"""The exporter's specialization on small programs: what a configuration fixes is folded, what it never
runs is dropped, and what is dropped is provably unreached (pgolf/export/specialize.py, shake.py)."""

import ast
import dataclasses
import textwrap
from pathlib import Path

import pytest

from pgolf.config import Config, ModelConfig, flatten_config
from pgolf.export.facts import config_facts
from pgolf.export.flatten import ExportError, flatten_core_modules
from pgolf.export.program import Program, Section, collect_scopes, scope_bindings
from pgolf.export.shake import (ExternalBases, check_switches, declared_switch, drop_dangling_annotations, shake,
                                unresolved_names)
from pgolf.export.specialize import fold_program


def specialized(source: str, cfg: Config | None = None, *, live: frozenset = frozenset(), feature: str = "",
                switch: str = "", entry: str = "main()", opaque: frozenset = frozenset()) -> tuple[str, Program]:
    """``source`` as one module (after ``feature``, a module declaring ``switch``), specialized to ``cfg``
    from the entry ``entry``; returns the module's new text."""
    cfg = cfg or Config()
    program = Program([Section("feature", "feature.py", ast.parse(textwrap.dedent(feature)).body, switch),
                       Section("m", "m.py", ast.parse(textwrap.dedent(source)).body),
                       Section("entry", "entry", ast.parse(entry).body)])
    facts = config_facts(cfg, program, live)
    bases = ExternalBases(program)
    results = []
    fold_program(program, facts, after_round=lambda p: results.append(shake(p, bases)), opaque=opaque)
    drop_dangling_annotations(program)
    check_switches(program, flatten_config(cfg), results[-1])
    return "\n".join(ast.unparse(statement) for statement in program.sections[1].body), program


def defined(text: str) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


FEATURE_PROGRAM = '''
class Gate:
    def __call__(self, x):
        return x * 2


def fused(x):
    return x + 100


class Model:
    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.gate = Gate() if cfg.smear_gate_enabled else None

    def forward(self, x):
        if self.gate is not None:  # the construct-or-None pattern
            x = self.gate(x)
        if self.cfg.fused_mlp:
            x = fused(x)
        return x

    def never_called(self):
        return 1


def main(cfg: Config):
    m = cfg.model
    if m.num_loops > 0 and not m.tie_embeddings:
        raise ValueError("looped untied models are not supported")
    return Model(m).forward(3)
'''


def run_main(text: str, cfg: Config):
    namespace: dict = {"Config": Config, "ModelConfig": ModelConfig}
    exec(compile(text, "specialized.py", "exec"), namespace)
    return namespace["main"](cfg)


@pytest.mark.parametrize("gate, fused", [(False, False), (True, False), (True, True)])
def test_a_feature_off_leaves_no_code_and_on_brings_it_in_computing_the_same(gate, fused):
    cfg = dataclasses.replace(Config(), model=ModelConfig(smear_gate_enabled=gate, fused_mlp=fused))
    text, _ = specialized(FEATURE_PROGRAM, cfg, entry="main(Config())")
    names = defined(text)
    assert ("Gate" in names) == gate and ("fused" in names) == fused
    assert "never_called" not in names and "forward" in names and "ValueError" not in text  # num_loops = 0
    assert run_main(text, cfg) == run_main(textwrap.dedent(FEATURE_PROGRAM), cfg)


def test_values_that_follow_from_the_configuration_fold_too():
    source = '''
    TABLE = {"relu2": relu2, "leaky_relu2": leaky}
    def relu2(x):
        return x * x
    def leaky(x):
        return x * 0.5
    def activation_for(name):
        return TABLE[name]
    class Loader:
        pass
    class OtherLoader:
        pass
    def kind(loader):
        if isinstance(loader, OtherLoader):
            return "other"
        return "plain"
    def scaled(x, factor=1.0, *, shift):
        return x * factor + shift
    def main(cfg: Config):
        mode = "on" if cfg.model.ln_scale else "off"
        unused = cfg.model.num_layers * 2
        return activation_for(cfg.model.activation)(3), kind(Loader()), scaled(2, shift=1) + scaled(3, shift=1), mode
    '''
    text, _ = specialized(source, entry="main(Config())")
    assert defined(text) == {"relu2", "activation_for", "Loader", "kind", "scaled", "main"}
    assert "return relu2" in text and "'plain'" in text and "OtherLoader" not in text  # never instantiated
    assert "return x * 1.0 + 1" in text  # every call passes factor's default and shift=1
    assert "mode" not in text and "unused" not in text  # one constant, folded into its read; never read
    namespace: dict = {}
    exec(compile(text, "t.py", "exec"), namespace)
    assert namespace["main"](Config()) == (9, "plain", 7.0, "off")


def test_a_field_the_code_replaces_stays_a_live_read():
    source = '''
    import dataclasses
    def lr_of(cfg: TTTConfig):
        return cfg.ttt_lr * 2
    def main(cfg: Config):
        phase = dataclasses.replace(cfg.ttt, ttt_lr=1.0)
        return lr_of(cfg.ttt), lr_of(phase), cfg.ttt.ttt_epochs
    '''
    text, _ = specialized(source, entry="main(Config())")
    assert "cfg.ttt_lr * 2" in text and "return (lr_of(cfg.ttt), lr_of(phase), 3)" in text


def test_fields_left_to_the_environment_are_never_folded():
    text, _ = specialized("def main(cfg: Config):\n    return cfg.train.seed, cfg.train.iterations\n",
                          live=frozenset({"seed"}), entry="main(Config())")
    assert "cfg.train.seed" in text and "20000" in text


def test_an_opaque_value_travels_but_never_enters_arithmetic():
    source = '''
    def report(code_bytes):
        if code_bytes is None:
            return measure()
        return code_bytes + 1, -code_bytes
    def measure():
        return 0
    def main(code_bytes=None):
        return report(code_bytes)
    '''
    text, _ = specialized(source, entry="main(code_bytes=987654321)", opaque=frozenset({987654321}))
    # an operand stays the read it was: python-minifier would compute 987654321 + 1 itself
    assert "measure" not in defined(text) and "code_bytes + 1" in text and "-987654321" in text


def test_methods_a_framework_calls_stay_and_annotations_of_dropped_classes_go():
    source = '''
    import torch
    class Unused:
        pass
    class Net(torch.nn.Module):
        def forward(self, x: Unused) -> torch.Tensor:
            return x
        def extra_repr(self):
            return "net"
        def helper(self):
            return 0
    def main():
        return Net()(1)
    '''
    text, _ = specialized(source)
    assert {"forward", "extra_repr"} <= defined(text) and "helper" not in defined(text)
    assert "Unused" not in text and "def forward(self, x) -> torch.Tensor" in text


def test_a_switched_off_module_that_is_still_reached_fails_the_export_naming_the_reader():
    feature = "def smear(x):\n    return x * 2\n"
    seed_live = {"live": frozenset({"seed"}), "feature": feature, "switch": "smear_gate_enabled",
                 "entry": "main(Config())"}
    unguarded = "def main(cfg: Config):\n    return smear(cfg.train.seed)\n"
    with pytest.raises(ExportError, match=r"feature.py.*smear_gate_enabled.*smear \(needed by main\)"):
        specialized(unguarded, **seed_live)
    guarded = ("def main(cfg: Config):\n    x = cfg.train.seed\n"
               "    if cfg.model.smear_gate_enabled:\n        x = smear(x)\n    return x\n")
    _, program = specialized(guarded, **seed_live)
    assert program.sections[0].body == []


def test_the_switch_declaration_is_read_from_the_module():
    tree = ast.parse('SMEAR_GATE_EXPORT_SWITCH = "smear_gate_enabled"\nX = 1\n')
    assert declared_switch(tree, "m.py") == "smear_gate_enabled"
    with pytest.raises(ExportError, match="must be a string"):
        declared_switch(ast.parse("A_EXPORT_SWITCH = 1\n"), "m.py")


def test_unresolved_names_follow_pythons_own_scoping():
    source = textwrap.dedent('''
    import os
    def f(a):
        def g():
            return a + b + len(os.sep) + missing_one
        return g
    class C:
        x = 1
        y = x + missing_two
    b = 2
    ''')
    assert unresolved_names(source) == ["missing_one", "missing_two"]


def test_two_independent_scope_analyses_agree_on_the_real_package():
    """collect_scopes (one walk, used by the exporter) and scope_bindings (a walk per scope)."""
    flat = flatten_core_modules("pgolf.run")
    tree = ast.parse(flat.text)
    collected = collect_scopes(tree)
    assert len(collected.bindings) > 500
    for node, counts in collected.bindings.values():
        assert scope_bindings(node) == counts, getattr(node, "name", type(node).__name__)


def test_flattened_package_has_no_definition_a_shake_would_miss(tmp_path: Path):
    """A program whose only reader of a function is a method picked by name still keeps the function."""
    source = '''
    def helper():
        return sum([2, 3])
    class Box:
        def value(self):
            return helper()
    def main():
        return getattr(Box(), "value")()
    '''
    text, _ = specialized(source)
    assert {"helper", "value"} <= defined(text)
    namespace: dict = {}
    exec(compile(text, "t.py", "exec"), namespace)
    assert namespace["main"]() == 5


def test_a_module_level_constant_folds_where_functions_read_it():
    text, _ = specialized('''
        import sys

        AUTO = "auto"
        NAMES = ("zlib", "brotli")
        LONG = "a name far longer than forty characters, kept as a name"
        SHADOWED = "outer"


        def choose(name):
            if name == AUTO:
                return 1
            if "zstd" in NAMES:
                return 2
            return LONG


        def local(SHADOWED):
            return SHADOWED


        def main():
            return choose(sys.argv[0]), local(sys.argv[1])
        ''')
    assert "name == 'auto'" in text and "AUTO" not in text and "NAMES" not in text and "return 2" not in text
    assert "return LONG" in text  # too long to write at every read
    assert "return SHADOWED" in text  # a parameter of that name is not the module's constant


def test_isinstance_of_a_constant_against_builtin_types_is_decided():
    text, _ = specialized('''
        import sys

        def check(stride):
            if not isinstance(stride, int) or isinstance(stride, bool):
                raise ValueError("stride")
            return stride

        def check_any(value):
            return isinstance(value, (list, Box))

        class Box:
            pass

        def main():
            return check(2), check_any(Box()), isinstance(sys.argv, list)
        ''')
    assert "ValueError" not in text and "isinstance(2" not in text
    # near misses: a program class among the types, a value that is not a constant
    assert "isinstance(value, (list, Box))" in text and "isinstance(sys.argv, list)" in text


def test_a_builtin_type_name_the_program_rebinds_is_not_decided():
    text, _ = specialized('''
        def check(stride, int=str):
            return isinstance(stride, int)

        def main():
            return check(2)
        ''')
    assert "isinstance(2, int)" in text


def test_neutral_constants_leave_tests_but_not_values():
    text, _ = specialized('''
        import os

        def main(cfg: Config):
            if os.path.exists("x") and not cfg.model.fused_mlp:
                return 1
            while os.getcwd() == "/" or cfg.model.fused_mlp:
                break
            flag = os.path.exists("y") and not cfg.model.fused_mlp
            return [n for n in os.listdir(".") if n.startswith("a") or cfg.model.fused_mlp], flag
        ''', entry="main(Config())")
    assert "if os.path.exists('x'):" in text and "while os.getcwd() == '/':" in text
    assert "if n.startswith('a')]" in text
    assert "os.path.exists('y') and True" in text  # a value: `x and True` is True, not x, when x is truthy


def test_any_of_constant_false_over_a_container_is_false():
    source = '''
        import sys

        def sharded(optimizers: list[object]):
            return any(False for opt in optimizers)

        def listed():
            items = [sys.argv, sys.path]
            return all(True for item in items)

        def unknown(optimizers):
            return any(False for opt in optimizers)

        def generated():
            return any(False for line in open(sys.argv[0]))

        def main():
            return sharded(sys.argv), listed(), unknown(sys.argv), generated()
        '''
    text, _ = specialized(source)
    assert "return (False, True, unknown(sys.argv), generated())" in text
    # near misses: iterating an unannotated parameter or a call's result may run code
    assert text.count("any(") == 2


def test_dataclass_field_annotations_shrink_unless_something_reads_them():
    source = '''
        import dataclasses
        from dataclasses import dataclass
        from typing import ClassVar, Literal

        @dataclass(frozen=True)
        class Settings:
            mode: Literal["a", "b"] = "a"
            sizes: tuple[int, ...] = (1, 2)
            count: int = 3
            registry: ClassVar[dict[str, int]] = {}

        class Plain:
            tag: Literal["x"] = "x"

        def main():
            return Settings(), Plain(), ClassVar, Literal  # the names stay defined
        '''
    text, _ = specialized(source)
    assert "mode: object = 'a'" in text and "sizes: object = (1, 2)" in text and "count: int = 3" in text
    assert "registry: ClassVar[dict[str, int]]" in text  # dataclasses reads ClassVar
    assert "tag: Literal['x']" in text  # not a dataclass
    reader = source.replace("return Settings()", "return typing.get_type_hints(Settings)")
    text, _ = specialized("import typing\n" + textwrap.dedent(reader))
    assert "mode: Literal['a', 'b']" in text


def test_dataclass_field_annotations_stay_when_a_field_type_is_read():
    text, _ = specialized('''
        import dataclasses
        from dataclasses import dataclass

        @dataclass
        class Settings:
            sizes: tuple[int, ...] = (1, 2)

        def main():
            return [f.type for f in dataclasses.fields(Settings)]
        ''')
    assert "sizes: tuple[int, ...]" in text


def test_a_classvar_field_stays_a_classvar_when_nothing_else_reads_its_import():
    source = '''
        import typing
        from dataclasses import dataclass
        from typing import ClassVar

        class Dropped:
            pass

        @dataclass
        class Settings:
            registry: ClassVar[dict[str, int]] = {}
            others: typing.ClassVar[Dropped] = []
            count: int = 3

        def main():
            return Settings(len(sys.argv) + 3).count
        '''
    text, program = specialized("import sys\n" + textwrap.dedent(source))
    assert "registry: ClassVar" in text and "others: typing.ClassVar" in text and "Dropped" not in text
    assert "from typing import ClassVar" in text
    namespace: dict = {}
    exec(compile("\n".join(ast.unparse(s) for s in program.statements()), "program", "exec"), namespace)
    # count is the one field: a mutable default on a real field would raise when the class is made
    assert namespace["main"]() == len(namespace["sys"].argv) + 3


DATACLASS_PROGRAM = '''
import dataclasses
import sys
from dataclasses import dataclass, field


@dataclass
class Parts:
    model: object
    qat: object = None
    sharded: bool = False
    steps: list = field(default_factory=list)


@dataclass(frozen=True)
class Artifact:
    blob: bytes
    prune: object = None


def qat_active(parts: Parts) -> bool:
    return parts.qat is not None


def train(parts: Parts):
    out = []
    if qat_active(parts):
        out.append("qat")
    if parts.sharded:
        out.append("sharded")
    return out


def describe(artifact: Artifact):
    return "pruned" if artifact.prune is not None else "plain"


def main():
    parts = Parts(sys.argv, None, sharded=False)
    return train(parts), describe(Artifact(b"x")), parts.steps
'''


def test_a_dataclass_field_every_construction_leaves_constant_folds():
    text, _ = specialized(DATACLASS_PROGRAM)
    assert "qat_active" not in text and "'sharded'" not in text and "'pruned'" not in text
    assert "parts.steps" in text  # a default_factory is no constant


@pytest.mark.parametrize("change", [
    "parts = Parts(sys.argv, None, sharded=len(sys.argv) > 1)",  # not a constant
    "parts = Parts(sys.argv, None, sharded=False)\n    parts.sharded = True",  # assigned
    "parts = dataclasses.replace(Parts(sys.argv, None, sharded=False), sharded=True)",  # replaced by name
    "parts = Parts(sys.argv, None, sharded=False)\n    parts = dataclasses.replace(parts, **dict(sys.argv))",
    "parts = Parts(sys.argv, None, sharded=False)\n    parts = type(parts)(sys.argv, sharded=True)",
    "parts = Parts(sys.argv, None, sharded=False)\n    setattr(parts, sys.argv[1], True)",
    "parts = Parts(*sys.argv, sharded=False)",  # the positional fields are not known
    "make = Parts\n    parts = make(sys.argv, sharded=True)",  # the class as a value
    "parts = Parts(sys.argv, None, sharded=False)\n    parts = Parts(sys.argv, None, True)",  # two values
])
def test_a_dataclass_field_something_may_change_stays_a_read(change):
    source = DATACLASS_PROGRAM.replace("parts = Parts(sys.argv, None, sharded=False)", change)
    text, _ = specialized(source)
    assert "'sharded'" in text


def test_replacing_a_config_section_leaves_program_dataclasses_foldable():
    source = DATACLASS_PROGRAM + '''

def with_environment(baked: Config):
    return dataclasses.replace(baked, **{name: dataclasses.replace(getattr(baked, name), **dict(sys.argv))
                                         for name in ("model",)})
'''
    text, _ = specialized(source, entry="main(); with_environment(Config())")
    assert "'sharded'" not in text
    untyped = source.replace("baked: Config", "baked")
    text, _ = specialized(untyped, entry="main(); with_environment(Config())")
    assert "'sharded'" in text  # replace(<anything>, **changes) may rebuild a Parts


def test_a_default_every_call_passes_goes_with_what_only_it_reads():
    source = '''
        import sys

        def slow(x):
            return x

        def fast(x):
            return -x

        def run(x, scale=1, *, kernel=slow, note=""):
            return kernel(x) * scale, note

        class Opt:
            def __init__(self, lr, kernel=slow):
                self.kernel = kernel

        def main():
            return run(sys.argv, 2, kernel=fast), run(sys.argv, 3, kernel=fast, note="n"), Opt(1, kernel=fast)
        '''
    text, _ = specialized(source)
    assert "def slow" not in text and "def run(x, scale, *, kernel, note=''):" in text
    assert "def __init__(self, lr, kernel):" in text
    # near misses: a call that leaves the default to it, a call that unpacks **kwargs, a value use
    for other in ("run(sys.argv, 4)", "run(sys.argv, **{'kernel': fast})", "sys.exit(run)", "Opt(2)"):
        text, _ = specialized(source.replace("Opt(1, kernel=fast)", f"Opt(1, kernel=fast), {other}"))
        assert "def slow" in text


def test_an_opaque_value_read_from_a_field_stays_a_read_in_arithmetic():
    text, _ = specialized('''
        import sys
        from dataclasses import dataclass

        @dataclass
        class Size:
            code: int
            cap: int

        def main():
            size = Size(code=987654321, cap=16000000)
            return size.cap - size.code, size.code
        ''', opaque=frozenset({987654321}))
    assert "16000000 - size.code" in text and ", 987654321)" in text


def test_a_local_bound_once_to_a_global_is_that_global_for_the_rest_of_its_block():
    text, _ = specialized('''
        import sys

        class Muon:
            def __init__(self, lr, kernel=None):
                self.lr = lr

        def build(flag):
            if flag:
                chosen = Muon
                made = chosen(1, kernel=len)
                kind = Muon
            else:
                kind = dict
                made = None
            if sys.argv:
                other = Muon
            return made, other(2, kernel=len), kind(lr=3)

        def main():
            return build(sys.argv)
        ''')
    assert "made = Muon(1, kernel=len)" in text and "chosen" not in text
    # near misses: a read after the block that bound it (the branch may not have run), a local bound twice
    assert "other(2, kernel=len)" in text and "kind(lr=3)" in text
    assert "def __init__(self, lr, kernel=None):" in text  # other(...) may be a call without kernel


def test_a_local_bound_to_a_display_of_constants_and_never_read_goes():
    """``fields = {}`` left behind when its readers were folded away is a dead store; a display whose
    keys or elements are computed (hashing may run code) stays."""
    text, _ = specialized('''
        def key():
            return object()


        def main():
            empty = {}
            table = {"a": 1, "b": (2, 3)}
            names = {"x", "y"}
            computed = {key(): 1}
            return 0
    ''')
    assert "empty" not in text and "table" not in text and "names" not in text
    assert "computed = {key(): 1}" in text
