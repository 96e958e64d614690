"""Parameter sweeps over scenarios: many runs, tables and figures (``meshgpu sweep``).

:func:`load_sweep` reads a sweep file (docs/research.md, "Sweeps"); :func:`run_sweep`
runs it in worker processes and writes ``runs.csv`` and ``summary.csv``;
:func:`draw_figures` draws its figures when matplotlib (the ``research`` extra) is there.
"""

from meshgpu.sim.sweep.figures import draw_figures, figures_available
from meshgpu.sim.sweep.runs import SweepResult, run_sweep
from meshgpu.sim.sweep.spec import SweepSpec, load_sweep

__all__ = [
    "SweepResult",
    "SweepSpec",
    "draw_figures",
    "figures_available",
    "load_sweep",
    "run_sweep",
]
