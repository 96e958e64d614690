"""The trio daemon: drives the sans-IO core on real sockets, disks and devices.

Public names are re-exported here; the modules behind them may change freely.
"""

from meshgpu.daemon.auth import Authenticator, Channel, Envelope, MeshKey, load_mesh_key
from meshgpu.daemon.framing import FrameStream
from meshgpu.daemon.journal import Journal
from meshgpu.daemon.modelstore import ModelStore
from meshgpu.daemon.payloads import PayloadStore, decode_tensors, encode_tensors
from meshgpu.daemon.rpc import RpcConnection, open_rpc
from meshgpu.daemon.settings import DaemonSettings

__all__ = [
    "Authenticator",
    "Channel",
    "DaemonSettings",
    "Envelope",
    "FrameStream",
    "Journal",
    "MeshKey",
    "ModelStore",
    "PayloadStore",
    "RpcConnection",
    "decode_tensors",
    "encode_tensors",
    "load_mesh_key",
    "open_rpc",
]
