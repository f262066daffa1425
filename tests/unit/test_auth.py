"""Bearer tokens (tierroute.runtime.auth): the tokens file, the environment variable, and who a
presented token belongs to."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from tierroute.runtime.auth import AuthConfigError, add_client, load_clients


def test_a_new_client_s_token_is_shown_once_and_only_its_hash_is_kept(tmp_path: Path) -> None:
    tokens = tmp_path / "secrets" / "tokens.yaml"
    first = add_client(tokens, "billing-app")
    second = add_client(tokens, "search")
    assert first != second and first.startswith("trk_") and len(first) > 40
    text = tokens.read_text()
    assert first not in text and second not in text
    assert hashlib.sha256(first.encode()).hexdigest() in text
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    clients = load_clients(tokens, "NO_SUCH_VAR", environ={})
    assert clients is not None and clients.names == ["billing-app", "search"]
    assert clients.identify(first) == "billing-app"
    assert clients.identify(second) == "search"
    assert clients.identify(first + "x") is None
    assert clients.from_header(f"Bearer {second}") == "search"
    assert clients.from_header(f"bearer  {second} ") == "search"
    for header in (None, "", second, f"Basic {second}", "Bearer ", f"Bearer {first[:-1]}"):
        assert clients.from_header(header) is None, header
    with pytest.raises(AuthConfigError, match="already has a client 'search'"):
        add_client(tokens, "search")


def test_tokens_from_the_environment_are_hashed_and_join_the_file_s(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    from_file = add_client(tokens, "app")
    env = {"TOKENS": "ci=0123456789abcdef-ci, ops=0123456789abcdef-ops"}
    clients = load_clients(tokens, "TOKENS", environ=env)
    assert clients is not None and clients.names == ["app", "ci", "ops"]
    assert clients.identify("0123456789abcdef-ops") == "ops"
    assert clients.identify(from_file) == "app"
    assert all("0123456789abcdef" not in repr(h) for _, h in clients.hashes)
    assert load_clients(None, "TOKENS", environ={}) is None  # no clients: the API is open


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("clients: 3\n", "needs `clients:`"),
        ("clients:\n  - name: app\n", "needs exactly `name` and `sha256`"),
        ("clients:\n  - {name: app, sha256: trk_plaintext}\n", "never the token itself"),
        (f"clients:\n  - {{name: 'bad name', sha256: {'a' * 64}}}\n", "name must be"),
        (
            f"clients:\n  - {{name: a, sha256: {'a' * 64}}}\n  - {{name: a, sha256: {'b' * 64}}}\n",
            "repeated: a",
        ),
        ("clients: [\n", "cannot read it"),
    ],
)
def test_a_tokens_file_that_cannot_be_used_says_what_to_fix(
    tmp_path: Path, content: str, says: str
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(content)
    with pytest.raises(AuthConfigError, match=says):
        load_clients(tokens, "NONE", environ={})


def test_a_missing_file_or_a_bad_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="does not exist: create it with `tierroute token"):
        load_clients(tmp_path / "nothing.yaml", "NONE", environ={})
    with pytest.raises(AuthConfigError, match="TOKENS: entry 2 must be name=token"):
        load_clients(None, "TOKENS", environ={"TOKENS": "a=0123456789abcdef,short=abc"})
