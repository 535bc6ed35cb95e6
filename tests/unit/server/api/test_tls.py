"""TLS credentials from settings: what turns TLS on, and start-up errors that name the setting.

The handshakes themselves (TLS, mTLS, a refused client) run against a real gateway process in
``tests/integration/test_tls.py``.
"""

from __future__ import annotations

import grpc
import pytest

from server.api import tls
from server.errors import InvalidArgument
from server.settings import SecuritySettings, TritonSettings, load_settings
from tests.tls_certs import SKIP_REASON, make_pki, openssl_available

pytestmark = pytest.mark.skipif(not openssl_available(), reason=SKIP_REASON)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("other"), name="another CA")


def test_no_tls_setting_means_plaintext():
    assert tls.server_credentials(SecuritySettings()) is None
    assert tls.triton_credentials(TritonSettings()) is None
    assert tls.client_credentials() is None


def test_cert_and_key_give_server_credentials_with_or_without_a_client_ca(pki):
    plain = SecuritySettings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    mutual = SecuritySettings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                              tls_client_ca=str(pki.ca))
    assert isinstance(tls.server_credentials(plain), grpc.ServerCredentials)
    assert isinstance(tls.server_credentials(mutual), grpc.ServerCredentials)


@pytest.mark.parametrize("given, field", [
    ({"tls_cert": "server_cert"}, "security.tls_key"),
    ({"tls_key": "server_key"}, "security.tls_cert"),
    ({"tls_client_ca": "ca"}, "security.tls_cert"),
])
def test_an_incomplete_pair_names_the_missing_setting(pki, given, field):
    settings = SecuritySettings(**{k: str(getattr(pki, v)) for k, v in given.items()})
    with pytest.raises(InvalidArgument) as err:
        tls.server_credentials(settings)
    assert err.value.field == field


def test_a_key_of_another_certificate_is_refused_naming_the_key(pki, other):
    settings = SecuritySettings(tls_cert=str(pki.server_cert), tls_key=str(other.server_key))
    with pytest.raises(InvalidArgument) as err:
        tls.server_credentials(settings)
    assert err.value.field == "security.tls_key"
    assert "is not the private key of security.tls_cert" in str(err.value)
    assert str(other.server_key) in str(err.value)


def test_unreadable_and_non_pem_files_name_their_setting(pki, tmp_path):
    missing = tmp_path / "nope.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(InvalidArgument) as err:
        tls.server_credentials(SecuritySettings(tls_cert=str(missing), tls_key=str(pki.server_key)))
    assert err.value.field == "security.tls_cert" and "cannot read" in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        tls.server_credentials(SecuritySettings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                                                tls_client_ca=str(junk)))
    assert err.value.field == "security.tls_client_ca" and "not a PEM file" in str(err.value)
    # A key where the certificate belongs: PEM, but no certificate in it.
    with pytest.raises(InvalidArgument) as err:
        tls.server_credentials(SecuritySettings(tls_cert=str(pki.server_key), tls_key=str(pki.server_key)))
    assert err.value.field == "security.tls_cert" and "no valid certificate" in str(err.value)
    # A certificate where the key belongs.
    with pytest.raises(InvalidArgument) as err:
        tls.server_credentials(SecuritySettings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_cert)))
    assert err.value.field == "security.tls_key"


def test_triton_tls_turns_on_from_the_environment_and_names_triton_settings(pki, tmp_path):
    on = load_settings(env={"RERANKD_TRITON_TLS": "true"})
    assert on.triton.tls is True
    assert isinstance(tls.triton_credentials(on.triton), grpc.ChannelCredentials)
    mutual = load_settings(env={"RERANKD_TRITON_TLS_CA": str(pki.ca),
                                "RERANKD_TRITON_TLS_CERT": str(pki.client_cert),
                                "RERANKD_TRITON_TLS_KEY": str(pki.client_key)})
    assert isinstance(tls.triton_credentials(mutual.triton), grpc.ChannelCredentials)
    with pytest.raises(InvalidArgument) as err:
        tls.triton_credentials(TritonSettings(tls_ca=str(tmp_path / "missing.pem")))
    assert err.value.field == "triton.tls_ca"
    with pytest.raises(InvalidArgument) as err:
        tls.triton_credentials(TritonSettings(tls_cert=str(pki.client_cert)))
    assert err.value.field == "triton.tls_key"


def test_client_flags_are_named_in_errors(pki):
    assert isinstance(tls.client_credentials(str(pki.ca)), grpc.ChannelCredentials)
    with pytest.raises(InvalidArgument) as err:
        tls.client_credentials(str(pki.ca), cert=str(pki.client_cert))
    assert err.value.field == "--tls-key"


def test_server_name_becomes_the_target_name_override():
    assert tls.channel_options("gateway.internal", [("a", 1)]) == [
        ("a", 1), ("grpc.ssl_target_name_override", "gateway.internal")]
    assert tls.channel_options() == []


def test_the_gateway_checks_tls_files_before_it_opens_anything(pki, tmp_path):
    from server.api.app import Gateway

    settings = load_settings(env={"RERANKD_SECURITY_TLS_CERT": str(pki.server_cert),
                                  "RERANKD_SECURITY_TLS_KEY": str(tmp_path / "gone.key"),
                                  "RERANKD_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}"})
    with pytest.raises(InvalidArgument) as err:
        Gateway(settings)
    assert err.value.field == "security.tls_key"
    assert not (tmp_path / "store.db").exists()
