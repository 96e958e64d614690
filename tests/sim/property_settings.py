"""How the generated-schedule property tests draw their examples.

The default run (the README's test command, CI) is derandomised: the same schedules on
every run, so a red build is a regression of the commit under test, never a new draw
that happens to find an old weakness. Searching for new cases is a separate, deliberate
run: set ``MESHGPU_PROPERTY_SEARCH=1`` (and raise the example count with
``MESHGPU_PROPERTY_EXAMPLES`` / ``MESHGPU_TASK_PROPERTY_EXAMPLES``); ``--hypothesis-seed=N``
replays a search. A failure prints the scenario's seed and the shrunk schedule as a
scenario file either way.
"""

from __future__ import annotations

import os

SEARCH = os.environ.get("MESHGPU_PROPERTY_SEARCH", "") not in ("", "0")
"""True: draw new schedules (and keep Hypothesis' example database); False: fixed ones."""
