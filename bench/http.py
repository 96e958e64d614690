"""HTTP inference: meshgpu's Open Inference Protocol endpoint against Ray Serve.

``python bench/http.py [--json] [--seconds S] [--concurrency 1,8,64]`` runs
``bench/http_inference.py`` (where the benchmark and its options are described).

Any script run from bench/ has bench/ first on ``sys.path``, where this file shadows the
standard library's ``http`` package (``urllib``, ``http.client`` and starlette import it).
Imported under that name, it puts the real package in its own place in ``sys.modules``
(the import system then hands that out); run as a script, it takes bench/ off the path
and runs the benchmark.
"""

import importlib.machinery
import importlib.util
import os
import runpy
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ELSEWHERE = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

if __name__ == "http":
    _spec = importlib.machinery.PathFinder.find_spec("http", _ELSEWHERE)
    if _spec is None or _spec.loader is None:
        raise ImportError("the standard library's http package is not on sys.path")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["http"] = _module
    _spec.loader.exec_module(_module)
elif __name__ == "__main__":
    sys.path[:] = _ELSEWHERE
    runpy.run_path(os.path.join(_HERE, "http_inference.py"), run_name="__main__")
