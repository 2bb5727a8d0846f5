"""The rewrite pipeline.  Each pass is one file that registers itself by name;
``load_all`` imports them so the registry is complete."""

import importlib
import pkgutil

from attncc.passes.pipeline import (DEFAULT_PIPELINE, PASSES, Pass, parse_pipeline,  # noqa: F401
                                    register_pass, run_pipeline)


def load_all():
    for m in pkgutil.iter_modules(__path__):
        if m.name != "pipeline" and not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")
