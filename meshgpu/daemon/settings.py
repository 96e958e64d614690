"""How a daemon runs: every knob of ``meshgpu join`` in one frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from meshgpu.core.config import MeshConfig
from meshgpu.daemon.auth import MeshKey
from meshgpu.daemon.framing import DEFAULT_MAX_FRAME_BYTES


@dataclass(frozen=True)
class DaemonSettings:
    """How one daemon runs; ``meshgpu join`` builds this from its flags."""

    data_dir: Path
    name: str | None = None
    bind: str = "0.0.0.0"
    port: int = 7946
    peers: tuple[str, ...] = ()
    mdns: bool = True
    mesh: str = "default"
    key: MeshKey | None = None
    slots: int = 1
    backend: str = "auto"
    device: str | None = None
    interface: str | None = None
    advertise: str | None = None
    mesh_config: MeshConfig = field(default_factory=MeshConfig)
    model_cache_bytes: int = 4 << 30
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    seed_interval: float = 2.0
    load_interval: float = 0.5
    drain_timeout: float = 30.0
    duplicate_grace: float = 15.0
    max_clock_skew: float = 120.0
