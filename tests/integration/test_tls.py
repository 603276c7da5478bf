"""TLS on both listeners: boto3 over https with a real CA (trustme), the minimum version
enforced, plain HTTP on a TLS port refused without a hang, and clear config errors."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    FAULT_IMAGE,
    call,
    deploy,
    direct_model,
    invoke,
    make_config,
    running_router,
    tls_client,
    write_test_pki,
)

from mce_router.config import Listener, RouterConfig
from mce_router.errors import ConfigError


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_test_pki(tmp_path_factory.mktemp("pki"))


def _tls_config(tmp_path: Path, pki: dict[str, Path], **listen: str) -> RouterConfig:
    return make_config(
        tmp_path,
        listener=Listener(
            port=0,
            admin_port=0,
            tls_cert_file=str(pki["cert"]),
            tls_key_file=str(pki["key"]),
            **listen,
        ),
    )


async def test_boto3_over_https_on_both_listeners(tmp_path: Path, pki: dict[str, Path]) -> None:
    async with running_router(_tls_config(tmp_path, pki)) as router:
        assert router.runtime_url.startswith("https://")
        assert router.admin_url.startswith("https://")
        endpoint = await deploy(router, direct_model("tls-direct", ["a"], FAULT_IMAGE))
        runtime = tls_client("sagemaker-runtime", router.runtime_url, pki["ca"])
        answer = await invoke(
            runtime, EndpointName=endpoint, TargetContainerHostname="a", Body=b"over tls"
        )
        assert answer["Body"] == b"over tls"
        control = tls_client("sagemaker", router.admin_url, pki["ca"])
        listed = await call(control.list_endpoints)
        assert [e["EndpointName"] for e in listed["Endpoints"]] == [endpoint]


async def _handshake(port: int, ca: Path, maximum: ssl.TLSVersion) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    context.maximum_version = maximum
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context), 5
        )
    except ssl.SSLError as exc:
        return f"refused: {exc.reason}"
    except ConnectionError as exc:  # the server closed the handshake
        return f"refused: {type(exc).__name__}"
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    return str(version)


async def test_minimum_version_is_enforced(tmp_path: Path, pki: dict[str, Path]) -> None:
    async with running_router(_tls_config(tmp_path / "a", pki)) as router:
        assert await _handshake(router.runtime_port, pki["ca"], ssl.TLSVersion.TLSv1_2) == (
            "TLSv1.2"
        )
        assert await _handshake(router.admin_port, pki["ca"], ssl.TLSVersion.TLSv1_3) == ("TLSv1.3")
    strict = _tls_config(tmp_path / "b", pki, tls_min_version="1.3")
    async with running_router(strict) as router:
        for port in (router.runtime_port, router.admin_port):
            outcome = await _handshake(port, pki["ca"], ssl.TLSVersion.TLSv1_2)
            assert outcome.startswith("refused"), outcome


async def test_plain_http_on_a_tls_port_is_closed_not_hung(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    async with running_router(_tls_config(tmp_path, pki)) as router:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.runtime_port)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # EOF: the server gave up on it
        assert not data.startswith(b"HTTP/1.1 200")
        writer.close()
        # and the listener still serves TLS clients
        assert await _handshake(router.runtime_port, pki["ca"], ssl.TLSVersion.TLSv1_3) == (
            "TLSv1.3"
        )


def test_config_errors_name_the_setting(tmp_path: Path, pki: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="needs both tls_cert_file and tls_key_file"):
        RouterConfig(listener=Listener(tls_cert_file=str(pki["cert"])))
    with pytest.raises(ConfigError, match=r"tls_min_version: must be one of 1\.2, 1\.3"):
        RouterConfig(
            listener=Listener(
                tls_cert_file=str(pki["cert"]), tls_key_file=str(pki["key"]), tls_min_version="1"
            )
        )
    with pytest.raises(ConfigError, match="are not a PEM certificate chain and its private key"):
        RouterConfig(listener=Listener(tls_cert_file=str(pki["key"]), tls_key_file=str(pki["key"])))
    with pytest.raises(ConfigError, match="cannot read the TLS certificate"):
        RouterConfig(
            listener=Listener(tls_cert_file=str(tmp_path / "nope"), tls_key_file=str(pki["key"]))
        )
    config = tmp_path / "router.yaml"
    config.write_text("listen: {tls_cert_file: cert.pem, tls_key_file: key.pem}\n")
    with pytest.raises(ConfigError, match=str(tmp_path / "cert.pem")):
        RouterConfig.from_file(config)  # relative paths are the config file's folder's


def test_cli_tls_flags_one_line_error(tmp_path: Path, pki: dict[str, Path]) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mce_router",
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
            "--admin-port",
            "0",
            "--tls-cert",
            str(pki["cert"]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "mce-router: config.listen: TLS needs both tls_cert_file and tls_key_file (or "
        "--tls-cert and --tls-key); only one is set"
    ]
