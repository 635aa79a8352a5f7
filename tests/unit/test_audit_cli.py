"""Spec of the audit key at the command line: `ballast server` refuses a key file it cannot use, naming it, before
it opens anything; `ballast audit keygen` makes a key only its owner reads and never overwrites one."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ballast.cli.main import cli
from ballast.core.audit_signing import Ed25519Signer, PublicKey


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture
def rsa_key(tmp_path: Path) -> Path:
    path = tmp_path / "rsa.pem"
    path.write_bytes(rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


@pytest.mark.parametrize(("key", "expected"), [
    ("missing.pem", "error: --audit-key {dir}/missing.pem: cannot read it (No such file or directory)"),
    ("garbage.pem", "error: --audit-key {dir}/garbage.pem: not an unencrypted PEM private key"),
    ("rsa.pem", "error: --audit-key {dir}/rsa.pem: an RSA key, expected an Ed25519 private key"),
    ("key.pem.pub", "error: --audit-key {dir}/key.pem.pub: not an unencrypted PEM private key"),
])
def test_the_server_refuses_a_key_file_it_cannot_sign_with_naming_it(tmp_path: Path, rsa_key: Path, key: str,
                                                                       expected: str) -> None:
    (tmp_path / "garbage.pem").write_text("not a key\n")
    assert run("audit", "keygen", "--out", str(tmp_path / "key.pem"))[0] == 0
    with socket.socket() as taken:       # were the key accepted, the server would stop at its port, not run on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, out = run("server", "--store", f"sqlite:///{tmp_path}/never.db",
                        "--listen", f"127.0.0.1:{taken.getsockname()[1]}", "--audit-key", str(tmp_path / key))
    assert code != 0 and expected.format(dir=tmp_path) in out, out
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "audit-checkpoints").exists()


def test_checkpoints_without_a_key_are_refused(tmp_path: Path) -> None:
    code, out = run("server", "--store", f"sqlite:///{tmp_path}/never.db", "--audit-checkpoints", str(tmp_path))
    assert code == 2 and "--audit-checkpoints needs --audit-key" in out, out


def test_keygen_makes_a_private_key_only_its_owner_reads_and_never_overwrites_it(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "audit.pem"
    code, out = run("audit", "keygen", "--out", str(key))
    assert code == 0, out
    signer = Ed25519Signer.from_pem(key.read_bytes(), str(key))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert PublicKey.from_pem((tmp_path / "keys" / "audit.pem.pub").read_bytes(), "pub").key_id == signer.key_id
    assert signer.key_id in out
    before = key.read_bytes()
    code, out = run("audit", "keygen", "--out", str(key))
    assert code == 2 and "the file exists; a signing key is never overwritten" in out, out
    assert key.read_bytes() == before


def test_an_independent_check_needs_the_checkpoints_and_the_key_together(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text("")
    code, out = run("--server", "http://127.0.0.1:1", "--token", "t", "audit", "verify", "--checkpoints",
                    str(tmp_path / "c.jsonl"))
    assert code == 2 and "--checkpoints and --public-key go together" in out, out


def test_the_server_refuses_a_checkpoint_directory_it_cannot_write_naming_it(tmp_path: Path) -> None:
    assert run("audit", "keygen", "--out", str(tmp_path / "key.pem"))[0] == 0
    (tmp_path / "a-file").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, out = run("server", "--store", f"sqlite:///{tmp_path}/never.db",
                        "--listen", f"127.0.0.1:{taken.getsockname()[1]}", "--audit-key", str(tmp_path / "key.pem"),
                        "--audit-checkpoints", str(tmp_path / "a-file" / "checkpoints"))
    assert code != 0 and f"error: audit checkpoints {tmp_path}/a-file/checkpoints/checkpoints.jsonl: " in out, out
    assert not (tmp_path / "never.db").exists()
