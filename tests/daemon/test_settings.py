"""``meshgpu join --config FILE``: the file sets any option, flags win, typos are errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshgpu.cli.join import join
from meshgpu.daemon.settings import (
    FILE_ONLY_KEYS,
    HTTP_FILE_ONLY_KEYS,
    JOIN_FILE_KEYS,
    DaemonSettings,
    read_config_file,
)
from meshgpu.errors import ConfigError

KEY_HEX = "ab" * 32


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meshgpu.toml"
    path.write_text(text)
    return path


def test_every_join_option_has_a_file_key() -> None:
    """The file covers the command: each option of `join` but --config has a key."""
    # --profile is the [mesh] table's `profile` key (the timing profile is a mesh setting).
    options = {parameter.name for parameter in join.params} - {"config_file", "profile"}
    named = {"peers": "peers", "no_mdns": "mdns"}
    file_keys = set(JOIN_FILE_KEYS) - FILE_ONLY_KEYS - set(HTTP_FILE_ONLY_KEYS)
    assert {named.get(option, option) for option in options} == file_keys


def test_file_values_are_checked_and_paths_resolved_against_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[daemon]
name = "gpu-01"
port = 7000
peers = ["10.0.0.5:7946", "gpu-02"]
mdns = false
key_file = "keys/mesh.key"
data_dir = "/var/lib/meshgpu"
backend = "onnxruntime"
slots = 2

[mesh]
probe_interval = 0.5
""",
    )
    config = read_config_file(path)
    assert config.daemon == {
        "name": "gpu-01",
        "port": 7000,
        "peers": ("10.0.0.5:7946", "gpu-02"),
        "mdns": False,
        "key_file": tmp_path / "keys" / "mesh.key",
        "data_dir": Path("/var/lib/meshgpu"),
        "backend": "onnxruntime",
        "slots": 2,
    }
    assert config.mesh.probe_interval == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon]\nslot = 2\n", r"\[daemon\] table: unknown key 'slot'; known keys are name"),
        ("[deamon]\nslots = 2\n", r"unknown table 'deamon'"),
        ("mesh_name = 'lab'\n", r"unknown key 'mesh_name'"),
        ("[mesh]\nprobe_intervall = 0.5\n", r"\[mesh\] table: .*unknown key\(s\) probe_intervall"),
        ("[daemon]\nslots = 0\n", r"slots must be integer >= 1 .*, got 0"),
        ("[daemon]\nport = '7946'\n", r"port must be integer 0-65535 .*, got '7946'"),
        ("[daemon]\nmdns = 'no'\n", r"mdns must be true or false"),
        ("[daemon]\npeers = '10.0.0.5:7946'\n", r"peers must be list of"),
        ("[daemon]\nbackend = 'cuda'\n", r"backend must be one of auto, opencl, onnxruntime"),
        ("[daemon]\nverbose = true\n", r"verbose must be integer"),
        ("[daemon]\napi_max_connections = 0\n", r"api_max_connections must be integer >= 1"),
        ("[daemon]\napi_idle_timeout_s = -1\n", r"api_idle_timeout_s must be number > 0"),
        ("[daemon\n", r"is not valid TOML"),
    ],
)
def test_mistakes_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        read_config_file(path)
    assert str(path) in str(caught.value)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[DaemonSettings]:
    """Run `join` up to the daemon: record the settings instead of serving."""
    seen: list[DaemonSettings] = []

    async def serve(daemon: Any, started: Callable[..., None]) -> None:
        seen.append(daemon.settings)

    monkeypatch.setattr("meshgpu.daemon.foreground.serve_until_signalled", serve)
    monkeypatch.delenv("MESHGPU_KEY", raising=False)
    return seen


def test_the_file_sets_options_and_flags_override_it(
    tmp_path: Path, captured: list[DaemonSettings]
) -> None:
    (tmp_path / "mesh.key").write_text(KEY_HEX + "\n")
    path = write(
        tmp_path,
        f"""
[daemon]
mesh = "lab"
port = 7000
peers = ["10.0.0.5:7946"]
mdns = false
key_file = "mesh.key"
data_dir = "{tmp_path / "from-file"}"
slots = 3
advertise = "10.0.0.12"
api_max_connections = 100
api_idle_timeout_s = 30
api_max_connections_per_client = 7
api_handshake_timeout_s = 2.5
http_max_connections = 9
http_header_timeout_s = 4

[mesh]
probe_interval = 0.4
""",
    )
    result = CliRunner().invoke(
        join, ["--config", str(path), "--slots", "2", "--peer", "10.0.0.9:7946"]
    )
    assert result.exit_code == 0, result.output
    (settings,) = captured
    assert settings.mesh == "lab"
    assert settings.port == 7000
    assert settings.mdns is False
    assert settings.key is not None
    assert settings.data_dir == tmp_path / "from-file"
    assert settings.advertise == "10.0.0.12"
    assert settings.api_max_connections == 100
    assert settings.api_idle_timeout_s == 30.0
    assert settings.api_max_connections_per_client == 7
    assert settings.api_handshake_timeout_s == 2.5
    assert settings.http is not None
    assert settings.http.max_connections == 9
    assert settings.http.header_timeout_s == 4.0
    assert settings.http.max_connections_per_client == 128  # not in the file: the default
    assert settings.mesh_config.probe_interval == 0.4
    assert settings.slots == 2  # the flag wins
    assert settings.peers == ("10.0.0.9:7946",)  # flags replace the file's list
    assert settings.bind == "0.0.0.0"  # neither: the default


def test_a_flag_equal_to_the_default_still_overrides_the_file(
    tmp_path: Path, captured: list[DaemonSettings]
) -> None:
    path = write(tmp_path, f'[daemon]\nmesh = "lab"\ndata_dir = "{tmp_path}"\n')
    result = CliRunner().invoke(join, ["--config", str(path), "--mesh", "default"])
    assert result.exit_code == 0, result.output
    assert captured[0].mesh == "default"


def test_no_mdns_flag_wins_over_mdns_true_in_the_file(
    tmp_path: Path, captured: list[DaemonSettings]
) -> None:
    path = write(tmp_path, f'[daemon]\nmdns = true\ndata_dir = "{tmp_path}"\n')
    result = CliRunner().invoke(join, ["--config", str(path), "--no-mdns"])
    assert result.exit_code == 0, result.output
    assert captured[0].mdns is False


def test_an_unknown_key_stops_join_with_a_message_naming_it(
    tmp_path: Path, captured: list[DaemonSettings]
) -> None:
    path = write(tmp_path, "[daemon]\nslot = 2\n")
    result = CliRunner().invoke(join, ["--config", str(path)])
    assert result.exit_code != 0
    assert "unknown key 'slot'" in result.output and str(path) in result.output
    assert captured == []


def test_a_bad_seed_in_the_file_is_refused_before_starting(
    tmp_path: Path, captured: list[DaemonSettings]
) -> None:
    path = write(tmp_path, f'[daemon]\npeers = ["host:notaport"]\ndata_dir = "{tmp_path}"\n')
    result = CliRunner().invoke(join, ["--config", str(path)])
    assert result.exit_code != 0
    assert "is not a number" in result.output
    assert captured == []


def test_help_says_the_file_can_set_every_option() -> None:
    result = CliRunner().invoke(join, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "[daemon] table" in text and "Flags given here override the file" in text


def test_labels_come_from_the_file_or_the_flags_and_bad_ones_are_refused(
    tmp_path: Path, captured: list[DaemonSettings]
) -> None:
    path = write(
        tmp_path, f'[daemon]\ndata_dir = "{tmp_path}"\nlabels = ["gpu=a100", "room=b12"]\n'
    )
    assert CliRunner().invoke(join, ["--config", str(path)]).exit_code == 0
    assert captured[-1].labels == (("gpu", "a100"), ("room", "b12"))
    result = CliRunner().invoke(join, ["--config", str(path), "--label", "gpu=h100"])
    assert result.exit_code == 0, result.output
    assert captured[-1].labels == (("gpu", "h100"),)  # flags replace the file's list
    result = CliRunner().invoke(join, ["--config", str(path), "--label", "gpu"])
    assert result.exit_code != 0 and "bad node label 'gpu': expected KEY=VALUE" in result.output


def test_the_profile_comes_from_the_mesh_table_and_the_flag_overrides_it(
    tmp_path: Path, captured: list[DaemonSettings]
) -> None:
    path = write(
        tmp_path,
        f'[daemon]\ndata_dir = "{tmp_path}"\n[mesh]\nprofile = "wan"\nprobe_timeout = 0.15\n',
    )
    assert CliRunner().invoke(join, ["--config", str(path)]).exit_code == 0
    config = captured[-1].mesh_config
    assert (config.probe_interval, config.probe_timeout) == (1.0, 0.15)
    result = CliRunner().invoke(join, ["--config", str(path), "--profile", "lan"])
    assert result.exit_code == 0, result.output
    config = captured[-1].mesh_config
    assert (config.probe_interval, config.probe_timeout) == (0.2, 0.15)  # the file's key stays
    result = CliRunner().invoke(join, ["--data-dir", str(tmp_path), "--profile", "wan"])
    assert result.exit_code == 0, result.output
    assert captured[-1].mesh_config.gossip_fanout == 4


def test_advertise_takes_host_or_host_port_and_a_bad_one_is_refused_before_starting(
    tmp_path: Path, captured: list[DaemonSettings]
) -> None:
    base = ["--data-dir", str(tmp_path)]
    result = CliRunner().invoke(join, [*base, "--advertise", "203.0.113.7:17946"])
    assert result.exit_code == 0, result.output
    assert captured[-1].advertise == "203.0.113.7:17946"
    result = CliRunner().invoke(join, [*base, "--advertise", "203.0.113.7:port"])
    assert result.exit_code != 0
    assert "--advertise '203.0.113.7:port' must look like HOST or HOST:PORT" in result.output
    assert len(captured) == 1


def test_the_encryption_switches_come_from_the_file_or_the_flags(
    tmp_path: Path, captured: list[DaemonSettings]
) -> None:
    path = write(
        tmp_path,
        f"[daemon]\nencrypt_verify_incoming = false\nencrypt_verify_outgoing = false\n"
        f'data_dir = "{tmp_path}"\n',
    )
    result = CliRunner().invoke(join, ["--config", str(path), "--encrypt-verify-outgoing"])
    assert result.exit_code == 0, result.output
    assert (captured[0].encrypt_verify_incoming, captured[0].encrypt_verify_outgoing) == (
        False,
        True,
    )
    with pytest.raises(ConfigError, match="encrypt_verify_incoming must be true or false"):
        read_config_file(write(tmp_path, "[daemon]\nencrypt_verify_incoming = 0\n"))


def test_join_exits_without_walking_every_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused start (here a twin) exits at once: the objects left are frozen before
    the interpreter's last garbage collection, which walked them all (seconds of a
    refused process's exit on a loaded machine)."""
    import gc

    from meshgpu.errors import DuplicateIdentityError

    async def refused(daemon: Any, started: Callable[..., None]) -> None:
        raise DuplicateIdentityError("node id n is already used by a live node")

    monkeypatch.setattr("meshgpu.daemon.foreground.serve_until_signalled", refused)
    monkeypatch.setattr("meshgpu.daemon.framing.keep_frame_memory", lambda: False)
    monkeypatch.delenv("MESHGPU_KEY", raising=False)
    gc.unfreeze()
    try:
        result = CliRunner().invoke(join, ["--data-dir", str(tmp_path / "d"), "--no-mdns"])
        assert result.exit_code == 1 and "already used" in result.output
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
