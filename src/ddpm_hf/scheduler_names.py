"""The scheduler's named choices (beta schedules, variance types, prediction types, timestep spacings), read from
``scheduling_ddpm_hf.py``'s source without importing it: that file is shipped to the Hub as self-contained remote
code and imports torch and diffusers, which the command line's parsers (``--help``) must not pay for. The tuples are
the scheduler's own, parsed, never re-typed."""

import ast
import functools
import os

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scheduling_ddpm_hf.py")
_NAMES = ("BETA_SCHEDULES", "VARIANCE_TYPES", "PREDICTION_TYPES", "TIMESTEP_SPACINGS")


@functools.lru_cache(maxsize=1)
def _constants():
    with open(_SOURCE, encoding="utf-8") as f:
        tree = ast.parse(f.read(), _SOURCE)
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in _NAMES:
                found[node.targets[0].id] = tuple(ast.literal_eval(node.value))
    missing = set(_NAMES) - set(found)
    if missing:
        raise ImportError(f"scheduling_ddpm_hf.py defines no {', '.join(sorted(missing))}")
    return found


def __getattr__(name):
    if name in _NAMES:
        return _constants()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
