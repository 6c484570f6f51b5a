"""The shipped files' named choices, read from their source without importing them: the scheduler's (beta schedules,
variance types, prediction types, timestep spacings, from ``scheduling_ddpm_hf.py``) and the restoration pipelines'
methods (``INPAINT_METHODS``, ``SUPER_RESOLUTION_METHODS``: their ``METHODS``). Those files are shipped to the Hub as
self-contained remote code and import torch and diffusers, which the command line's parsers (``--help``) must not
pay for. The tuples are the owners' own, parsed, never re-typed."""

import ast
import functools
import os

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scheduling_ddpm_hf.py")
_NAMES = ("BETA_SCHEDULES", "VARIANCE_TYPES", "PREDICTION_TYPES", "TIMESTEP_SPACINGS")


# the restoration pipelines' METHODS, under the names this module gives them
_PIPELINE_CONSTANTS = {"INPAINT_METHODS": ("pipeline_ddpm_hf_inpaint.py", "METHODS"),
                       "SUPER_RESOLUTION_METHODS": ("pipeline_ddpm_hf_super_resolution.py", "METHODS")}


@functools.lru_cache(maxsize=None)
def _constants(filename, names):
    """{name: tuple} of the module-level tuple assignments ``names`` in the package file ``filename``."""
    path = os.path.join(os.path.dirname(_SOURCE), filename)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in names:
                found[node.targets[0].id] = tuple(ast.literal_eval(node.value))
    missing = set(names) - set(found)
    if missing:
        raise ImportError(f"{filename} defines no {', '.join(sorted(missing))}")
    return found


def __getattr__(name):
    if name in _NAMES:
        return _constants(os.path.basename(_SOURCE), _NAMES)[name]
    if name in _PIPELINE_CONSTANTS:
        filename, constant = _PIPELINE_CONSTANTS[name]
        return _constants(filename, (constant,))[constant]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
