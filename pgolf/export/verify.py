"""Run the minified program against the readable one before the script ships (tooling).

Between the readable file and the counted script stand the messages' removal, the unused parameters'
removal (:mod:`pgolf.export.parameters`) and python-minifier, which rewrites names and layout; a bug in
any of them would ship a different program. So both
programs are loaded, as modules, into one fresh Python process (``python -c``: nothing of this
process leaks in, ``import pgolf`` is never needed) and put through the same probe: the baked
configuration's model is built from one seed, scores a random batch (forward and backward), and its
optimizers take one step. Losses, gradients and the updated weights must agree bit for bit; anything
else stops the export with both programs' numbers.

The minified program's names are not the readable one's (python-minifier renames globals), but its
top-level functions and classes come in the order of the program it was given (the counted program,
which has the readable one's names but not all its definitions): the probe maps names by that position.
The probe shrinks the baked model to CPU size through the fields the exporter leaves live for that
(:data:`PROBE_SIZE_FIELDS`: vocabulary, width, heads), so every feature the configuration switches on
runs, at a size that takes a second.
"""

import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pgolf.export.flatten import ExportError

VERIFY_TIMEOUT_SECONDS = 600
PROBE_BATCH, PROBE_SEQ = 2, 32
PROBE_NAMES = ("Config", "build_model", "Runtime", "build_optimizers")
# Model fields the exporter does not fold, so that the probe can shrink the baked model (they decide no
# code; the script still refuses them from the environment).
PROBE_SIZE_FIELDS = frozenset({"vocab_size", "model_dim", "num_heads", "num_kv_heads"})

# The probe, run once per program in the child process. ``names`` maps the readable names to the
# program's own; every value it returns is a plain float list, compared exactly.
PROBE_SOURCE = r'''
import ast, dataclasses, json, sys, types
import torch

def top_level_names(source):
    return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]

def load(source, name):
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, "<" + name + ">", "exec"), module.__dict__)
    return module

def probe(module, names, batch, seq):
    get = lambda name: getattr(module, names[name])
    cfg = get("Config")()
    m = cfg.model
    width = max(64, 2 * m.rope_dims)  # two heads of at least the rotated dims; linears >= 64 get ortho init
    small = dataclasses.replace(m, vocab_size=min(m.vocab_size, 256), model_dim=width, num_heads=2,
                                num_kv_heads=1 if m.num_kv_heads < m.num_heads else 2)
    cfg = dataclasses.replace(cfg, model=small)
    torch.manual_seed(0)
    model = get("build_model")(cfg.model, get("Runtime")(torch.device("cpu")))
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(1))
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    grads = [float(p.grad.double().sum()) for p in model.parameters() if p.grad is not None]
    result = {"loss": float(loss), "grads": grads}
    if "build_optimizers" in names:
        optimizers = get("build_optimizers")(model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings,
                                              control_patterns=cfg.model.control_tensor_name_patterns)
        for optimizer in optimizers:
            optimizer.step()
        result["weights"] = [float(p.detach().double().sum()) for p in model.parameters()]
    return result

readable_path, minified_path, minified_from_path, wanted, batch, seq = sys.argv[1:7]
readable, minified = open(readable_path).read(), open(minified_path).read()
order_readable, order_minified = top_level_names(open(minified_from_path).read()), top_level_names(minified)
if len(order_readable) != len(order_minified):
    print(json.dumps({"error": f"{len(order_readable)} top-level definitions in the readable program, "
                               f"{len(order_minified)} in the minified one"}))
    sys.exit(0)
renamed = dict(zip(order_readable, order_minified))
wanted = [name for name in wanted.split(",") if name in renamed]
results = {}
for label, source, names in (("readable", readable, {n: n for n in wanted}),
                             ("minified", minified, {n: renamed[n] for n in wanted})):
    results[label] = probe(load(source, "pgolf_export_probe_" + label), names, int(batch), int(seq))
print(json.dumps(results))
'''


def probe_names_available(readable: str) -> list[str]:
    defined = {n.name for n in ast.parse(readable).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return [name for name in PROBE_NAMES if name in defined]


def verify_minified(readable: str, minified: str, minified_from: str | None = None) -> dict:
    """Run the probe on both programs in a fresh process; ExportError when they differ. ``minified_from``:
    the program python-minifier was given, when it is not ``readable`` (the counted program, which lacks
    the messages, what only they used and unread parameters): its top-level names, in order, map the
    readable names to the minified ones."""
    names = probe_names_available(readable)
    if not {"Config", "build_model", "Runtime"} <= set(names):
        return {"skipped": "the program has no Config/build_model/Runtime to probe"}
    with tempfile.TemporaryDirectory(prefix="pgolf_export_verify_") as folder:
        readable_path, minified_path = Path(folder) / "readable.py", Path(folder) / "minified.py"
        minified_from_path = Path(folder) / "minified_from.py"
        readable_path.write_text(readable, encoding="utf-8")
        minified_path.write_text(minified, encoding="utf-8")
        minified_from_path.write_text(minified_from or readable, encoding="utf-8")
        environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH",)}
        environment.setdefault("OMP_NUM_THREADS", "1")
        try:
            completed = subprocess.run(
                [sys.executable, "-c", PROBE_SOURCE, str(readable_path), str(minified_path), str(minified_from_path),
                 ",".join(names),
                 str(PROBE_BATCH), str(PROBE_SEQ)],
                cwd=folder, env=environment, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise ExportError(f"checking the minified program took over {VERIFY_TIMEOUT_SECONDS} s; the export "
                              "stops.") from None
    if completed.returncode != 0:
        raise ExportError("running the exported program for its check failed:\n" + completed.stderr[-3000:])
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    if "error" in results:
        raise ExportError(f"the minified program does not match the readable one: {results['error']}.")
    if results["readable"] != results["minified"]:
        raise ExportError("the minified program computes differently from the readable one (python-minifier "
                          f"changed its behaviour); the export stops. readable loss {results['readable']['loss']!r}, "
                          f"minified loss {results['minified']['loss']!r}.")
    return results["readable"]
