"""Node homes: keys are private and permanent, config has documented defaults."""

import stat

import pytest

from inferad.config import Config, ConfigError, load_config
from inferad.home import Home, HomeError


def test_init_creates_private_keys_and_commented_config(tmp_path):
    home = Home(tmp_path / "n1")
    created = {p.name for p in home.ensure()}
    assert created == {"config.toml", "node.key", "client.key", "eth.json"}
    for name in ("node.key", "client.key", "eth.json"):
        assert stat.S_IMODE((home.path / name).stat().st_mode) == 0o600
    assert home.eth_address.startswith("0x")
    assert home.config == Config()  # the template states the defaults
    assert "# Largest max_tokens a job may ask for." in home.config_path.read_text()


def test_init_never_overwrites_keys(tmp_path):
    home = Home(tmp_path / "n1")
    home.ensure()
    node_key, eth = bytes(home.node_key), home.eth_address
    assert home.ensure() == []
    assert bytes(home.node_key) == node_key and home.eth_address == eth


def test_missing_pieces_are_filled_in(tmp_path):
    home = Home(tmp_path / "n1")
    home.ensure()
    (home.path / "client.key").unlink()
    assert [p.name for p in home.ensure()] == ["client.key"]


def test_home_defaults_to_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERAD_HOME", str(tmp_path / "env-home"))
    assert Home().path == tmp_path / "env-home"


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(HomeError, match="foreign"):
        Home(tmp_path / "photos").ensure()


def test_home_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(HomeError, match="not a directory"):
        Home(tmp_path / "file").ensure()


def test_key_readable_by_others_is_refused(tmp_path):
    home = Home(tmp_path / "n1")
    home.ensure()
    home.node_key_path.chmod(0o644)
    with pytest.raises(HomeError, match="chmod 600"):
        _ = home.node_key


def test_garbled_key_file_is_a_clear_error(tmp_path):
    home = Home(tmp_path / "n1")
    home.ensure()
    home.client_key_path.write_text("ed25519:zz")
    with pytest.raises(HomeError, match="not an inferad key file"):
        _ = home.client_key


def test_eth_key_decrypts_with_the_passphrase(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERAD_PASSPHRASE", "")
    home = Home(tmp_path / "n1")
    home.ensure()
    assert home.eth_account().address == home.eth_address
    monkeypatch.setenv("INFERAD_PASSPHRASE", "wrong")
    with pytest.raises(HomeError, match="wrong INFERAD_PASSPHRASE"):
        home.eth_account()


@pytest.mark.parametrize("text, match", [
    ("[engine]\nmax_tokens = -1\n", "non-negative integer"),
    ("[engine]\nmodels = 'gemma'\n", "list of strings"),
    ("[engine]\ncolour = 1\n", "unknown key engine.colour"),
    ("[paint]\n", r"unknown section \[paint\]"),
    ("not toml =", "cannot read"),
])
def test_bad_config_names_file_and_key(tmp_path, text, match):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_config_values_override_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[engine]\nn_ctx = 512\n[node]\nlisten = ['/ip4/127.0.0.1/tcp/0']\n")
    config = load_config(path)
    assert config.n_ctx == 512 and config.listen == ("/ip4/127.0.0.1/tcp/0",)
    assert config.with_overrides(n_ctx=None, max_tokens=5).max_tokens == 5
