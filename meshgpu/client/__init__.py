"""The Python client of a meshgpu mesh.

::

    import meshgpu

    with meshgpu.Client() as client:                 # MESHGPU_PEER, a local daemon, or mDNS
        handle = client.submit("digits", {"pixels": batch}, priority="high")
        outputs = handle.result(timeout=30)           # {"probabilities": ndarray}
        for item in client.map("digits", ({"pixels": row[None]} for row in rows)):
            print(item.index, item.worker, item.outputs["probabilities"].argmax())

    async with meshgpu.client.AsyncClient("10.0.0.5:7946") as client:   # trio code
        handle = await client.submit(model_path, {"x": x})
        outputs = await handle.result()

The client fails over to another peer when the one it talks to dies, and delivers each
task's outcome exactly once. Usage and decisions: docs/client.md.
"""

from meshgpu.client.handles import AsyncTaskHandle, Completed, Outcome
from meshgpu.client.link import Failover
from meshgpu.client.mapping import MapInterrupted
from meshgpu.client.models import ModelBlob
from meshgpu.client.peers import Candidate, browse_mdns, failover_order, initial_candidates
from meshgpu.client.session import AsyncClient
from meshgpu.client.sync import Client, TaskHandle

__all__ = [
    "AsyncClient",
    "AsyncTaskHandle",
    "Candidate",
    "Client",
    "Completed",
    "Failover",
    "MapInterrupted",
    "ModelBlob",
    "Outcome",
    "TaskHandle",
    "browse_mdns",
    "failover_order",
    "initial_candidates",
]
