"""The keyring across the mesh: ``meshgpu keyring`` ops, and exchanges that converge it.

A keyring operation (``keyring_install``, ``keyring_use``, ``keyring_remove``) is applied
by the node that receives it, then pushed to every live member at once; the answer says,
node by node, which took it. A push is one ``keyring_sync`` request: the pusher's whole
keyring (auth/keyring.py), which the receiver merges before answering with its own, which
the pusher merges in turn. Keys travel only inside encrypted frames: a request that came
without a key is refused, and exchanges are sealed with a key whatever
``verify_outgoing`` says.

The same exchange, with one random live member every ``EXCHANGE_INTERVAL`` seconds and
at once with a peer heard sealing with another key than our primary (a node that missed an
operation while down, or one that is ahead of us), brings a node that was down up to date
at its first exchange: no operation is lost to a node that was away, as long as it still
holds one key the mesh holds. One that holds only removed keys is refused with a refusal
naming the removed key (auth/handshake.py) and must be restarted with the current key.

``keyring_list`` asks every live member for its keyring's summary (fingerprints only).

Contract: the part takes the keyring, the authenticator, this node's id, a callable
listing the live members' addresses and the daemon's counter; its ops join the API
table, and the authenticator reports peers on another key to it (``on_other_key``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import trio

from meshgpu.core.types import Address, NodeId
from meshgpu.daemon.api import Handler, Message, Responder, request_field
from meshgpu.daemon.auth import Authenticator, Keyring, MeshKey
from meshgpu.daemon.rpc import open_rpc
from meshgpu.errors import ConfigError, KeyringError, MeshError

logger = logging.getLogger("meshgpu.daemon")

EXCHANGE_INTERVAL = 15.0
"""Seconds between two exchanges with a random live member (jittered by a quarter)."""
PROMPT_INTERVAL = 5.0
"""Seconds between two prompted exchanges with one address (a peer on another key)."""
PUSH_TIMEOUT = 10.0
"""Seconds one member has to take a pushed keyring before it is reported as not reached."""


class KeyringExchange:
    """The keyring ops of one daemon and the exchanges that keep the keyring converged."""

    def __init__(
        self,
        keyring: Keyring,
        authenticator: Authenticator,
        node_id: NodeId,
        members: Callable[[], Mapping[NodeId, Address]],
        count: Callable[[str], None],
        rng: random.Random | None = None,
    ) -> None:
        self.keyring = keyring
        self.authenticator = authenticator
        self.node_id = node_id
        self._members = members
        self._count = count
        self._rng = rng or random.Random()
        self._prompted: dict[Address, float] = {}
        self._wanted: dict[Address, bytes | None] = {}
        """Addresses to exchange with now, and the key each was heard sealing with."""
        self._wake = trio.Event()
        authenticator.on_other_key = self.peer_on_other_key

    def table(self) -> dict[str, Handler]:
        return {
            "keyring_sync": self.op_keyring_sync,
            "keyring_summary": self.op_keyring_summary,
            "keyring_list": self.op_keyring_list,
            "keyring_install": self.op_keyring_install,
            "keyring_use": self.op_keyring_use,
            "keyring_remove": self.op_keyring_remove,
        }

    # --- background exchanges ------------------------------------------------------

    def peer_on_other_key(self, source: Address | None, key_id: bytes) -> None:
        """Invoked by the envelope when a datagram from ``source`` was sealed with key
        ``key_id``, not our primary: exchange keyrings with it soon (at most every
        ``PROMPT_INTERVAL`` per address), sealed with its key if we hold it."""
        if source is None or not self.keyring.keyed:
            return
        now = trio.current_time()
        if now - self._prompted.get(source, -PROMPT_INTERVAL) < PROMPT_INTERVAL:
            return
        if len(self._prompted) > 1024:
            self._prompted.clear()
        self._prompted[source] = now
        self._wanted[source] = key_id
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Exchange with a random member now and then, and with prompted peers at once."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            next_round = trio.current_time() + self._interval()
            while True:
                with trio.move_on_at(next_round):
                    await self._wake.wait()
                self._wake = trio.Event()
                wanted, self._wanted = self._wanted, {}
                if trio.current_time() >= next_round:
                    next_round = trio.current_time() + self._interval()
                    members = list(self._members().values())
                    # Migrating (sending without the key): some members may hold no key
                    # yet, so exchange only with peers heard sealing with one.
                    if members and self.authenticator.verify_outgoing:
                        wanted.setdefault(self._rng.choice(members), None)
                if self.keyring.keyed:
                    for address, key_id in wanted.items():
                        nursery.start_soon(self._quiet_exchange, address, key_id)

    def _interval(self) -> float:
        return EXCHANGE_INTERVAL * self._rng.uniform(0.75, 1.25)

    async def _quiet_exchange(self, address: Address, key_id: bytes | None) -> None:
        try:
            with trio.fail_after(PUSH_TIMEOUT):
                await self.exchange(address, key_id)
        except (MeshError, trio.TooSlowError, OSError) as error:
            self._count("keyring_exchange_failures")
            logger.debug("keyring exchange with %s:%d failed: %s", *address, error)

    async def exchange(self, address: Address, key_id: bytes | None = None) -> dict[str, Any]:
        """Push our keyring to ``address``, merge its answer; its summary afterwards.

        Sealed with ``key_id`` (the key the peer was heard sealing with) if it is
        installed: a peer behind us cannot open our primary yet; else with our primary."""
        if key_id is None or key_id not in self.keyring.ciphers:
            key_id = self.authenticator.primary_id
        async with open_rpc(address, self.authenticator, key_id=key_id) as rpc:
            answer = await rpc.call("keyring_sync", keyring=self.keyring.to_wire())
        if self.keyring.merge(answer.get("keyring")):
            self._count("keyring_merges")
            logger.info("keyring updated from %s:%d: %s", *address, self._describe())
        self._count("keyring_exchanges")
        return dict(answer.get("summary") or {})

    def _describe(self) -> str:
        summary = self.keyring.summary()
        return f"primary {summary['primary']}, installed {', '.join(summary['keys'])}"

    async def push_all(self) -> list[dict[str, Any]]:
        """Push the keyring to every live member at once; one outcome per member."""
        outcomes: list[dict[str, Any]] = []

        async def push(node_id: NodeId, address: Address) -> None:
            try:
                with trio.fail_after(PUSH_TIMEOUT):
                    summary = await self.exchange(address)
                outcomes.append({"node_id": node_id, "ok": True, **summary})
            except (MeshError, trio.TooSlowError, OSError) as error:
                outcomes.append({"node_id": node_id, "ok": False, "error": str(error) or "timeout"})

        async with trio.open_nursery() as nursery:
            for node_id, address in self._members().items():
                nursery.start_soon(push, node_id, address)
        outcomes.append({"node_id": self.node_id, "ok": True, **self.keyring.summary()})
        return sorted(outcomes, key=lambda outcome: outcome["node_id"])

    # --- ops -----------------------------------------------------------------------

    def _require_key(self, responder: Responder) -> None:
        if not self.keyring.keyed:
            raise KeyringError(
                "this node runs without a mesh key (an open mesh): start every node with "
                "--key-file first (docs/operations.md, migrating an open mesh)"
            )
        if not responder.key_id:
            raise KeyringError(
                "keyring requests carry keys and must be encrypted: give the client the "
                "mesh key (--key-file or MESHGPU_KEY)"
            )

    async def op_keyring_sync(self, request: Message, responder: Responder) -> Message:
        """A peer pushes its keyring: merge it and answer with ours (and our summary)."""
        self._require_key(responder)
        if self.keyring.merge(request.get("keyring")):
            self._count("keyring_merges")
            logger.info("keyring updated by %s: %s", responder.peer, self._describe())
        return {"keyring": self.keyring.to_wire(), "summary": self.keyring.summary()}

    async def op_keyring_summary(self, request: Message, responder: Responder) -> Message:
        return {"summary": self.keyring.summary()}

    async def op_keyring_list(self, request: Message, responder: Responder) -> Message:
        """Every live member's keyring (fingerprints), asked now."""
        nodes: list[dict[str, Any]] = [
            {"node_id": self.node_id, "ok": True, **self.keyring.summary()}
        ]

        async def ask(node_id: NodeId, address: Address) -> None:
            try:
                with trio.fail_after(PUSH_TIMEOUT):
                    async with open_rpc(
                        address, self.authenticator, key_id=self.authenticator.primary_id or None
                    ) as rpc:
                        answer = await rpc.call("keyring_summary")
                nodes.append({"node_id": node_id, "ok": True, **answer["summary"]})
            except (MeshError, trio.TooSlowError, OSError, KeyError) as error:
                nodes.append({"node_id": node_id, "ok": False, "error": str(error) or "timeout"})

        async with trio.open_nursery() as nursery:
            for node_id, address in self._members().items():
                nursery.start_soon(ask, node_id, address)
        return {"nodes": sorted(nodes, key=lambda node: node["node_id"])}

    async def op_keyring_install(self, request: Message, responder: Responder) -> Message:
        self._require_key(responder)
        secret = request_field(request, "key", bytes)
        try:
            key = MeshKey(secret)
        except ConfigError as error:
            raise KeyringError(str(error)) from None
        self.keyring.install(key)
        logger.info("keyring: installed key %s", key.fingerprint)
        return {"key": key.fingerprint, "nodes": await self.push_all()}

    async def op_keyring_use(self, request: Message, responder: Responder) -> Message:
        self._require_key(responder)
        key = self.keyring.use(request_field(request, "key_id", str), self.node_id)
        logger.info("keyring: key %s is now the primary", key.fingerprint)
        return {"key": key.fingerprint, "nodes": await self.push_all()}

    async def op_keyring_remove(self, request: Message, responder: Responder) -> Message:
        self._require_key(responder)
        key = self.keyring.remove(request_field(request, "key_id", str))
        logger.info("keyring: removed key %s", key.fingerprint)
        return {"key": key.fingerprint, "nodes": await self.push_all()}
