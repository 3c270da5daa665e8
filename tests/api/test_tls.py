"""HTTPS: a real `ferryman serve` over TLS with a certificate made here, rotated while it serves; plain
HTTP refused when required; HSTS; and upstream TLS verified against a CA bundle."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ferryman.errors import ConfigError
from ferryman.settings import settings_from_mapping
from ferryman.testing import FakeOpenAI
from tests.processes import free_port, gateway_process, stop_process_group, stopping_at_once

FAKE = {"name": "fake-model", "deployments": [{"provider": "fake", "model": "fake-model"}]}
HSTS = "max-age=31536000; includeSubDomains"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}


@dataclass
class CertificateAuthority:
    """A throwaway CA for one test, issuing loopback server certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ferryman test CA")])
        cert = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str) -> tuple[bytes, bytes, int]:
        """A certificate for 127.0.0.1 / localhost: (cert PEM, key PEM, serial)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        cert = (
            _builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert.serial_number

    def client_context(self) -> ssl.SSLContext:
        """What a client trusting only this CA verifies with."""
        return ssl.create_default_context(cadata=self.pem.decode())

    def server_context(self, directory: Path) -> ssl.SSLContext:
        """A server context presenting a fresh certificate from this CA (files kept in `directory`)."""
        cert_path, key_path, _ = write_pair(directory, self, "upstream")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def write_pair(directory: Path, ca: CertificateAuthority, common_name: str) -> tuple[Path, Path, int]:
    cert, key, serial = ca.issue(common_name)
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    replace_file(cert_path, cert)
    replace_file(key_path, key)
    return cert_path, key_path, serial


def replace_file(path: Path, content: bytes) -> None:
    """Swap in new content in one rename, as secret mounts and cert-manager do."""
    staging = path.with_name(f".{path.name}.new")
    staging.write_bytes(content)
    os.replace(staging, path)


@contextmanager
def https_gateway(config: dict[str, Any], tmp_path: Path, ca: CertificateAuthority) -> Iterator[str]:
    """`ferryman serve` for `config` (which sets `server.tls`); yields its https:// base URL."""
    config = stopping_at_once({"data_dir": str(tmp_path / "data"), **config})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    command = [sys.executable, "-m", "ferryman.cli", "serve", "--config", str(path), "--port", str(port)]
    with (tmp_path / "gateway.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"https://127.0.0.1:{port}"
        try:
            _wait_until_live(url, process, ca.client_context())
            yield url
        finally:
            stop_process_group(process)


def _wait_until_live(url: str, process: subprocess.Popen[bytes], verify: ssl.SSLContext) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}")
        try:
            if httpx.get(url + "/health/live", verify=verify, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("gateway did not become live")


def served_certificate(url: str, ca: CertificateAuthority) -> tuple[str, int]:
    """The common name and serial of the certificate a new connection to `url` is shown."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    assert port is not None
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ca.client_context().wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return str(common_name), cert.serial_number


def tls_config(cert: Path, key: Path, **server: Any) -> dict[str, Any]:
    return {
        "models": [FAKE],
        "server": {"tls": {"cert_file": str(cert), "key_file": str(key), **server}},
    }


# -- serving HTTPS -------------------------------------------------------------------------------


def test_gateway_serves_https_to_the_openai_sdk_with_hsts(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert, key, serial = write_pair(tmp_path, ca, "first")
    with https_gateway(tls_config(cert, key), tmp_path, ca) as url:
        with openai.DefaultHttpxClient(verify=ca.client_context(), timeout=10) as http:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", http_client=http)
            raw = client.chat.completions.with_raw_response.create(
                model="fake-model", messages=[{"role": "user", "content": "over tls"}]
            )
            assert raw.http_request.url.scheme == "https"
            assert raw.headers["strict-transport-security"] == HSTS
            assert "over tls" in (raw.parse().choices[0].message.content or "")
        assert served_certificate(url, ca) == ("first", serial)
        with pytest.raises(httpx.ConnectError):  # a client not trusting the test CA refuses it
            httpx.get(url + "/health/live", timeout=5)


def test_rotated_certificate_is_served_with_no_restart_and_no_failed_request(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    cert, key, first_serial = write_pair(tmp_path, ca, "first")
    with https_gateway(tls_config(cert, key, reload_seconds=0.2), tmp_path, ca) as url:
        assert served_certificate(url, ca) == ("first", first_serial)
        failures: list[BaseException] = []
        answered = 0
        stop = threading.Event()

        def keep_calling() -> None:
            nonlocal answered
            kept_alive = httpx.Client(verify=ca.client_context(), timeout=10)
            with kept_alive:
                while not stop.is_set():
                    try:  # one request on a kept-alive connection, one on a new connection
                        assert kept_alive.post(url + "/v1/chat/completions", json=CHAT).status_code == 200
                        fresh = httpx.post(
                            url + "/v1/chat/completions", json=CHAT, verify=ca.client_context(), timeout=10
                        )
                        assert fresh.status_code == 200
                        answered += 2
                    except (AssertionError, httpx.HTTPError) as exc:
                        failures.append(exc)

        caller = threading.Thread(target=keep_calling)
        caller.start()
        try:
            time.sleep(0.5)
            # The certificate first, then its key: for a moment the pair does not match, and the
            # gateway must keep the old certificate through it.
            second_cert, second_key, second_serial = ca.issue("second")
            replace_file(cert, second_cert)
            time.sleep(0.5)
            assert served_certificate(url, ca) == ("first", first_serial)
            replace_file(key, second_key)
            deadline = time.monotonic() + 10
            while served_certificate(url, ca)[1] != second_serial and time.monotonic() < deadline:
                time.sleep(0.1)
            assert served_certificate(url, ca) == ("second", second_serial)
            time.sleep(0.5)
        finally:
            stop.set()
            caller.join(timeout=30)
        assert not failures, failures[:3]
        assert answered >= 10
    log = (tmp_path / "gateway.log").read_text()
    assert "keeping the current certificate" in log
    assert "reloaded the TLS certificate" in log


def test_hsts_can_be_configured(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert, key, _ = write_pair(tmp_path, ca, "first")
    config = tls_config(cert, key)
    config["server"]["hsts"] = {"max_age_seconds": 600, "include_subdomains": False, "preload": True}
    with https_gateway(config, tmp_path, ca) as url:
        response = httpx.get(url + "/health/live", verify=ca.client_context(), timeout=5)
        assert response.headers["strict-transport-security"] == "max-age=600; preload"


def test_check_config_refuses_a_certificate_and_key_that_do_not_match(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    cert, _, _ = write_pair(tmp_path, ca, "first")
    other_key = tmp_path / "other.key"
    other_key.write_bytes(ca.issue("other")[1])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tls_config(cert, other_key)))
    result = subprocess.run(
        [sys.executable, "-m", "ferryman.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "server.tls" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_certificate_file_is_named_by_its_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"server": {"tls": {"cert_file": str(tmp_path / "absent.crt")}}})
    assert [path for path, _ in caught.value.problems] == ["server.tls.cert_file"]


# -- plain HTTP under require_https ----------------------------------------------------------------


@pytest.fixture
def https_only(tmp_path: Path) -> Iterator[str]:
    """A plain-HTTP gateway requiring HTTPS, behind a proxy at 10.0.0.0/8 (so loopback is untrusted)."""
    config = {"models": [FAKE], "server": {"require_https": True, "trusted_proxies": ["10.0.0.0/8"]}}
    with gateway_process(config, tmp_path) as (_, url):
        yield url


def test_plain_http_is_refused_when_https_is_required(https_only: str) -> None:
    response = httpx.post(https_only + "/v1/chat/completions", json=CHAT, timeout=10)
    assert response.status_code == 403
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("permission_error", "https_required")
    assert "strict-transport-security" not in response.headers  # meaningless over plain HTTP
    assert "x-request-id" in response.headers


def test_the_openai_sdk_sees_https_required_as_a_permission_error(https_only: str) -> None:
    client = openai.OpenAI(base_url=https_only + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "https_required"


def test_health_probes_still_answer_over_plain_http(https_only: str) -> None:
    assert httpx.get(https_only + "/health/live", timeout=5).status_code == 200
    assert httpx.get(https_only + "/health/ready", timeout=5).status_code == 200
    assert httpx.get(https_only + "/health", timeout=5).status_code == 403
    assert httpx.get(https_only + "/metrics", timeout=5).status_code == 403


def test_an_untrusted_peer_cannot_claim_https(https_only: str) -> None:
    headers = {"x-forwarded-proto": "https"}
    response = httpx.post(https_only + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "https_required"


def test_a_trusted_proxy_saying_https_is_served_with_hsts(tmp_path: Path) -> None:
    config = {"models": [FAKE], "server": {"require_https": True, "trusted_proxies": ["127.0.0.1"]}}
    with gateway_process(config, tmp_path) as (_, url):
        proxied = {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"}
        response = httpx.post(url + "/v1/chat/completions", json=CHAT, headers=proxied, timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["strict-transport-security"] == HSTS
        # The proxy's own plain-HTTP hop is still refused.
        plain = {"x-forwarded-proto": "http"}
        refused = httpx.post(url + "/v1/chat/completions", json=CHAT, headers=plain, timeout=10)
        assert refused.status_code == 403


# -- TLS to upstreams ------------------------------------------------------------------------------


@pytest.fixture
def tls_upstream(ca: CertificateAuthority, tmp_path: Path) -> Iterator[FakeOpenAI]:
    directory = tmp_path / "upstream"
    directory.mkdir()
    with FakeOpenAI(ssl_context=ca.server_context(directory)) as fake:
        yield fake


class RefusedUpstream:
    """An HTTPS listener presenting a certificate from `ca`, counting the handshakes that succeed.

    For the calls the gateway must refuse: nothing is served behind the handshake, and the counts
    show whether the gateway went past it (it must hang up before sending a request, or its key).
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.handshakes = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def __enter__(self) -> RefusedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                try:
                    with self.context.wrap_socket(connection, server_side=True):
                        self.handshakes += 1
                except (ssl.SSLError, OSError):
                    self.refused += 1


@pytest.fixture
def refused_upstream(ca: CertificateAuthority, tmp_path: Path) -> Iterator[RefusedUpstream]:
    directory = tmp_path / "refused"
    directory.mkdir()
    with RefusedUpstream(ca.server_context(directory)) as upstream:
        yield upstream


def upstream_config(base_url: str, **deployment: Any) -> dict[str, Any]:
    target = {
        "provider": "openai-compatible",
        "model": "gpt-4o-mini",
        "api_base": base_url,
        "api_key": "k",
        **deployment,
    }
    return {"models": [{"name": "m", "deployments": [target]}], "retries": {"max_attempts_per_deployment": 1}}


def ask(gateway: Any) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": "through tls"}]}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=20)


def test_upstream_certificate_from_an_unknown_ca_is_a_clear_502(
    gateway_factory: Any, refused_upstream: RefusedUpstream
) -> None:
    response = ask(gateway_factory(upstream_config(refused_upstream.base_url)))
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_certificate_invalid"
    assert "TLS certificate" in error["message"] and "ca_bundle" in error["message"]
    assert "Traceback" not in response.text
    # The gateway hung up in the handshake: nothing (no key) was sent to an unverified upstream.
    deadline = time.monotonic() + 5
    while refused_upstream.refused == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the listener counts the aborted handshake just after the gateway answers
    assert refused_upstream.refused >= 1
    assert refused_upstream.handshakes == 0


@pytest.mark.parametrize("where", ["deployment", "global"])
def test_upstream_verified_against_the_configured_ca_bundle(
    gateway_factory: Any, tls_upstream: FakeOpenAI, ca: CertificateAuthority, tmp_path: Path, where: str
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.pem)
    if where == "deployment":
        config = upstream_config(tls_upstream.base_url, ca_bundle=str(bundle))
    else:
        config = {**upstream_config(tls_upstream.base_url), "upstream_ca_bundle": str(bundle)}
    response = ask(gateway_factory(config))
    assert response.status_code == 200, response.text
    assert "through tls" in response.json()["choices"][0]["message"]["content"]
    assert len(tls_upstream.requests) == 1


def test_a_deployment_bundle_wins_over_the_global_one(
    gateway_factory: Any, refused_upstream: RefusedUpstream, ca: CertificateAuthority, tmp_path: Path
) -> None:
    right, wrong = tmp_path / "right.pem", tmp_path / "wrong.pem"
    right.write_bytes(ca.pem)
    wrong.write_bytes(CertificateAuthority.create().pem)
    deployment = upstream_config(refused_upstream.base_url, ca_bundle=str(wrong))
    response = ask(gateway_factory({**deployment, "upstream_ca_bundle": str(right)}))
    assert response.json()["error"]["code"] == "upstream_certificate_invalid"
    assert refused_upstream.handshakes == 0


def test_verification_can_be_turned_off_for_one_deployment(
    gateway_factory: Any, tls_upstream: FakeOpenAI
) -> None:
    response = ask(gateway_factory(upstream_config(tls_upstream.base_url, verify_tls=False)))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("where", ["deployment", "global"])
def test_a_ca_bundle_that_is_not_pem_is_named_by_its_key_path(tmp_path: Path, where: str) -> None:
    bundle = tmp_path / "not-a-bundle.pem"
    bundle.write_text("not a certificate")
    deployment: dict[str, Any] = {"provider": "openai", "model": "gpt-4o-mini", "api_key": "k"}
    config: dict[str, Any] = {"models": [{"name": "m", "deployments": [deployment]}]}
    if where == "deployment":
        deployment["ca_bundle"] = str(bundle)
    else:
        config["upstream_ca_bundle"] = str(bundle)
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(config)
    expected = "models[0].deployments[0].ca_bundle" if where == "deployment" else "upstream_ca_bundle"
    assert [path for path, _ in caught.value.problems] == [expected]
    assert "cannot load CA certificates" in caught.value.problems[0][1]


def test_served_request_is_logged_with_the_client_address(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert, key, _ = write_pair(tmp_path, ca, "first")
    with https_gateway(tls_config(cert, key), tmp_path, ca) as url:
        response = httpx.post(url + "/v1/chat/completions", json=CHAT, verify=ca.client_context(), timeout=10)
        assert response.status_code == 200
    lines = [
        json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines() if line[:1] == "{"
    ]
    assert [line["client_ip"] for line in lines if line.get("model") == "fake-model"] == ["127.0.0.1"]
