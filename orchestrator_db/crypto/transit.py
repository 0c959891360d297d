"""Vault/OpenBao Transit: the key-encryption key that never leaves the KMS.

Transit generates each data key (DEK) and hands back only its wrapped form,
which is what the database stores. A process unwraps the DEKs it needs once,
at startup, and keeps them in memory: encrypting and decrypting credentials
never calls Transit, so a Transit outage after startup stops nothing.
Rotating the Transit key and rewrapping the stored DEKs changes no
credential row.

Every failure is a KeyConfigError that names the setting to look at; no
token, secret id, wrapped or plaintext key is ever part of a message.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions
import requests

from orchestrator_db.errors import KeyConfigError
from orchestrator_db.settings import TransitSettings

_DEK_BITS = 256
#: Transit ciphertexts say which key version wrapped them: "vault:v3:...".
_WRAPPED = re.compile(r"^vault:v(\d+):[A-Za-z0-9+/=]+$")


@dataclass(frozen=True)
class WrappedKey:
    """A DEK as Transit wrapped it, and the Transit key version that did."""

    ciphertext: str
    key_version: int

    def __repr__(self) -> str:
        return f"WrappedKey(key_version={self.key_version})"


def wrapped_key_version(ciphertext: str) -> int:
    """The Transit key version named in a wrapped key's prefix."""
    match = _WRAPPED.fullmatch(ciphertext)
    if match is None:
        raise KeyConfigError("a stored data key is not a Transit ciphertext (vault:vN:...)")
    return int(match.group(1))


class TransitClient:
    """The four Transit calls the key ring needs: generate, unwrap, rewrap, read the key."""

    def __init__(self, settings: TransitSettings) -> None:
        self._settings = settings
        self._client = hvac.Client(url=settings.addr, timeout=settings.timeout)
        self._logged_in = False

    @property
    def key_name(self) -> str:
        return self._settings.key_name

    def __repr__(self) -> str:
        return f"TransitClient(addr={self._settings.addr!r}, key={self._settings.key_name!r})"

    # Transit operations #####################################################

    def generate_data_key(self) -> WrappedKey:
        """A new 256-bit DEK, wrapped; its plaintext never leaves Transit here."""
        response = self._call(
            "generate a data key",
            lambda transit: transit.generate_data_key(
                self._settings.key_name,
                key_type="wrapped",
                bits=_DEK_BITS,
                mount_point=self._settings.mount,
            ),
        )
        return self._wrapped(response)

    def unwrap(self, wrapped: str) -> bytes:
        """The DEK's 32 bytes; Transit refusing to unwrap it is a KeyConfigError."""
        response = self._call(
            "unwrap a data key",
            lambda transit: transit.decrypt_data(
                self._settings.key_name, wrapped, mount_point=self._settings.mount
            ),
        )
        try:
            key = base64.b64decode(response["data"]["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            key = b""
        if len(key) != _DEK_BITS // 8:
            raise KeyConfigError(
                f"Transit key {self._settings.key_name!r} unwrapped a data key that is "
                "not 32 bytes: the stored key is not one of ours"
            )
        return key

    def rewrap(self, wrapped: str) -> WrappedKey:
        """The same DEK, wrapped under the Transit key's latest version."""
        response = self._call(
            "rewrap a data key",
            lambda transit: transit.rewrap_data(
                self._settings.key_name, wrapped, mount_point=self._settings.mount
            ),
        )
        return self._wrapped(response)

    def latest_key_version(self) -> int:
        response = self._call(
            "read the Transit key",
            lambda transit: transit.read_key(
                self._settings.key_name, mount_point=self._settings.mount
            ),
        )
        return int(response["data"]["latest_version"])

    # Plumbing ###############################################################

    def _login(self) -> None:
        if self._logged_in:
            return
        settings = self._settings
        if settings.token:
            self._client.token = settings.token
        else:
            self._request(
                "log in with AppRole (ORCHESTRATOR_DB_TRANSIT_ROLE_ID / _SECRET_ID)",
                lambda: self._client.auth.approle.login(
                    role_id=settings.role_id,
                    secret_id=settings.secret_id,
                    mount_point=settings.approle_mount,
                ),
            )
        self._logged_in = True

    def _call(self, action: str, operation: Callable[[Any], Any]) -> Any:
        self._login()
        return self._request(action, lambda: operation(self._client.secrets.transit))

    def _request(self, action: str, operation: Callable[[], Any]) -> Any:
        """Run one request; every failure becomes a KeyConfigError naming the setting."""
        settings = self._settings
        try:
            return operation()
        except requests.exceptions.RequestException:
            problem = (
                f"cannot reach Transit at ORCHESTRATOR_DB_TRANSIT_ADDR={settings.addr} "
                f"to {action}"
            )
        except hvac.exceptions.Forbidden:
            problem = (
                f"Transit refused to {action}: permission denied. Check "
                "ORCHESTRATOR_DB_TRANSIT_TOKEN (or the AppRole's role id, secret id and "
                f"policy on {settings.mount}/.../{settings.key_name})"
            )
        except hvac.exceptions.Unauthorized:
            problem = f"Transit refused to {action}: not authenticated. Check the token or AppRole"
        except hvac.exceptions.InvalidPath:
            problem = (
                f"Transit has no mount {settings.mount!r} (ORCHESTRATOR_DB_TRANSIT_MOUNT) "
                f"or key {settings.key_name!r}; could not {action}"
            )
        except hvac.exceptions.InvalidRequest as error:
            problem = self._invalid_request(action, error)
        except hvac.exceptions.VaultError as error:
            problem = f"Transit could not {action} ({type(error).__name__})"
        raise KeyConfigError(problem)

    def _invalid_request(self, action: str, error: Exception) -> str:
        settings = self._settings
        text = str(error)
        if "encryption key not found" in text or "key not found" in text:
            return (
                f"Transit has no key {settings.key_name!r} under mount {settings.mount!r}: "
                f"create it, or fix ORCHESTRATOR_DB_TRANSIT_KEY; could not {action}"
            )
        return (
            f"Transit refused to {action} with key {settings.key_name!r}: the data key "
            "was not wrapped by this Transit key, or was altered"
        )

    @staticmethod
    def _wrapped(response: dict) -> WrappedKey:
        ciphertext = response["data"]["ciphertext"]
        return WrappedKey(ciphertext=ciphertext, key_version=wrapped_key_version(ciphertext))
