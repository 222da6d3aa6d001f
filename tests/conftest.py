"""pytest puts this folder on sys.path (it holds a conftest), so tests import shared helpers from
``testkit.py`` with ``from testkit import ...``.

The README's test command runs two pytest-xdist workers on a 2-core machine. Each worker computes with
one thread: two workers with torch's default of one thread per core each oversubscribe the cores, which
made small training steps about 30 times slower (docs/development.md)."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Before torch is imported by any test module (and inherited by the subprocesses tests start).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the thread setting above)

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
