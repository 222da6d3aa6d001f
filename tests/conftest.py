"""pytest puts this folder on sys.path (it holds a conftest), so tests import shared helpers from
``testkit.py`` with ``from testkit import ...``."""
