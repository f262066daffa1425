"""Configuration: typed loading, environment overrides, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierroute.core.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_default_config_loads_with_two_tiers_and_paths_resolved() -> None:
    cfg = load_config(ROOT / "configs" / "default.yaml", environ={})
    assert [t.name for t in cfg.tiers] == ["small", "large"]
    assert cfg.router.model == (ROOT / "models" / "minilm-l6-v2-int8").resolve()
    assert cfg.tier_bounds() == [4.0, 10.0]
    assert cfg.escalation.min_confidence == pytest.approx(0.70)


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "router:\n  cache_ttl_secs: 10\n")
    with pytest.raises(
        ConfigError, match=r"router\.cache_ttl_secs: unknown key.*cache_ttl_seconds"
    ):
        load_config(path, environ={})


def test_bad_value_names_the_key_and_the_rule(tmp_path: Path) -> None:
    path = write(tmp_path, "router:\n  complexity_threshold: 12\n")
    with pytest.raises(
        ConfigError, match=r"router\.complexity_threshold: .*less than or equal to 10"
    ):
        load_config(path, environ={})


def test_unknown_key_inside_a_tier_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "tiers:\n  - {name: a, address: 'x:1', model: m, temprature: 0}\n")
    with pytest.raises(ConfigError, match=r"tiers\.0\.temprature: unknown key.*temperature"):
        load_config(path, environ={})


def test_environment_overrides_single_keys_including_list_items(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tiers:\n  - {name: a, address: 'x:1', model: m}\n"
        "  - {name: b, address: 'y:1', model: m}\n",
    )
    cfg = load_config(
        path,
        environ={
            "TIERROUTE__ROUTER__CACHE_TTL_SECONDS": "60",
            "TIERROUTE__TIERS__1__ADDRESS": "10.0.0.5:50062",
            "TIERROUTE__ROUTER__SCORER": "centroid",
        },
    )
    assert cfg.router.cache_ttl_seconds == 60
    assert cfg.tiers[1].address == "10.0.0.5:50062"
    assert cfg.router.scorer == "centroid"


def test_environment_override_of_a_missing_list_item_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "tiers:\n  - {name: a, address: 'x:1', model: m}\n")
    with pytest.raises(ConfigError, match=r"TIERROUTE__TIERS__3__ADDRESS: no list item tiers\.3"):
        load_config(path, environ={"TIERROUTE__TIERS__3__ADDRESS": "h:1"})


def test_duplicate_tier_names_and_unordered_bounds_are_rejected(tmp_path: Path) -> None:
    dup = write(
        tmp_path,
        "tiers:\n  - {name: a, address: 'x:1', model: m}\n"
        "  - {name: a, address: 'y:1', model: m}\n",
    )
    with pytest.raises(ConfigError, match="repeated: a"):
        load_config(dup, environ={})
    unordered = write(
        tmp_path,
        "tiers:\n  - {name: a, address: 'x:1', model: m, max_score: 6}\n"
        "  - {name: b, address: 'y:1', model: m, max_score: 3}\n"
        "  - {name: c, address: 'z:1', model: m}\n",
    )
    with pytest.raises(ConfigError, match="increasing max_score"):
        load_config(unordered, environ={})


def test_routing_version_changes_with_the_threshold(tmp_path: Path) -> None:
    body = (
        "tiers:\n  - {name: a, address: 'x:1', model: m}\n  - {name: b, address: 'y:1', model: m}\n"
    )
    a = load_config(write(tmp_path, body), environ={})
    b = load_config(write(tmp_path, body), environ={"TIERROUTE__ROUTER__COMPLEXITY_THRESHOLD": "5"})
    assert a.routing_version() != b.routing_version()


def test_missing_or_malformed_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "router: [unclosed\n"), environ={})


def test_environment_keeps_case_below_env_and_text_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tiers:\n  - {name: a, address: 'x:1', model: m, env: {VLLM_CPU_KVCACHE_SPACE: '1'}}\n",
    )
    cfg = load_config(
        path,
        environ={
            "TIERROUTE__TIERS__0__ENV__VLLM_CPU_KVCACHE_SPACE": "4",
            "TIERROUTE__TIERS__0__ENGINE_ARGS__max_model_len": "4096",
            "TIERROUTE__ROUTER__LISTEN": "[::]:50051",
        },
    )
    assert cfg.tiers[0].env == {"VLLM_CPU_KVCACHE_SPACE": "4"}
    assert cfg.tiers[0].engine_args == {"max_model_len": 4096}
    assert cfg.router.listen == "[::]:50051"


def test_equal_bounds_and_a_bounded_last_tier_are_rejected(tmp_path: Path) -> None:
    equal = write(
        tmp_path,
        "tiers:\n  - {name: a, address: 'x:1', model: m, max_score: 4}\n"
        "  - {name: b, address: 'y:1', model: m, max_score: 4}\n"
        "  - {name: c, address: 'z:1', model: m}\n",
    )
    with pytest.raises(ConfigError, match="strictly increasing"):
        load_config(equal, environ={})
    last = write(
        tmp_path,
        "tiers:\n  - {name: a, address: 'x:1', model: m}\n"
        "  - {name: b, address: 'y:1', model: m, max_score: 8}\n",
    )
    with pytest.raises(ConfigError, match="the last tier serves every score up to 10"):
        load_config(last, environ={})


def test_each_process_reads_and_validates_only_its_own_part(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "router:\n  complexity_treshold: 3\n"
        "tiers:\n  - {name: small, address: 'x:1', model: m}\n"
        "validator:\n  listen: '127.0.0.1:0'\n",
    )
    with pytest.raises(ConfigError, match="complexity_treshold"):
        load_config(path, environ={}, part="router")
    assert [t.name for t in load_config(path, environ={}, part="tier").tiers] == ["small"]
    assert load_config(path, environ={}, part="validator").validator.listen == "127.0.0.1:0"


def test_renamed_keys_are_still_read_under_their_old_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path,
        "escalation:\n  timeout_ms: 1234\n"
        "tiers:\n  - {name: small, address: 'x:1', model: m, structured_output: true}\n"
        "  - {name: large, address: 'x:2', model: m}\n",
    )
    with caplog.at_level("WARNING"):
        cfg = load_config(path, environ={})
    assert cfg.escalation.first_tier_timeout_ms == 1234
    assert cfg.tiers[0].validation == "self_reported" and cfg.tiers[1].validation == "none"
    assert "timeout_ms is now called first_tier_timeout_ms" in caplog.text
    both = write(tmp_path, "escalation:\n  timeout_ms: 1\n  first_tier_timeout_ms: 2\n")
    with pytest.raises(ConfigError, match="set only first_tier_timeout_ms"):
        load_config(both, environ={})


def test_a_tier_binds_where_it_is_told_and_is_dialled_at_its_address(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tiers:\n  - {name: small, address: 'tier-small:50061', listen: '0.0.0.0:50061', "
        "model: m}\n  - {name: large, address: 'tier-large:50062', model: m}\n",
    )
    cfg = load_config(path, environ={})
    assert (cfg.tiers[0].bind(), cfg.tiers[0].address) == ("0.0.0.0:50061", "tier-small:50061")
    assert cfg.tiers[1].bind() == "tier-large:50062"
    assert cfg.validator.dial() == cfg.validator.listen


def test_prefix_commit_needs_logprob_validation(tmp_path: Path) -> None:
    tiers = (
        "tiers:\n"
        "  - {name: small, address: 'h:1', model: m, validation: self_reported, commit: prefix}\n"
        "  - {name: large, address: 'h:2', model: m}\n"
    )
    with pytest.raises(ConfigError, match=r"commit prefix .* needs validation logprob"):
        load_config(write(tmp_path, tiers), environ={})
    fine = tiers.replace("self_reported", "logprob")
    assert load_config(write(tmp_path, fine), environ={}).tiers[0].commit == "prefix"


@pytest.mark.parametrize(
    ("small", "large", "message"),
    [
        ("validation: none, hedge_margin: 0.5", "", r"hedge_margin .* needs validation"),
        (
            "validation: logprob",
            ", validation: logprob, hedge_margin: 0.5",
            r"the last tier has none; remove it",
        ),
        ("validation: logprob, hedge_margin: -1", "", r"hedge_margin"),
        ("validation: logprob, commit: prefix, commit_prefix_margin: -1", "", "commit_prefix"),
    ],
)
def test_hedging_and_prefix_settings_are_checked(
    tmp_path: Path, small: str, large: str, message: str
) -> None:
    tiers = (
        "tiers:\n"
        f"  - {{name: small, address: 'h:1', model: m, {small}}}\n"
        f"  - {{name: large, address: 'h:2', model: m{large}}}\n"
    )
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, tiers), environ={})
    fine = (
        "tiers:\n"
        "  - {name: small, address: 'h:1', model: m, validation: logprob, hedge_margin: 0.5}\n"
        "  - {name: large, address: 'h:2', model: m}\n"
    )
    assert load_config(write(tmp_path, fine), environ={}).tiers[0].hedge_margin == 0.5


def test_the_upstream_config_puts_the_large_tier_on_an_openai_server_from_the_environment() -> None:
    path = ROOT / "configs" / "upstream.yaml"
    cfg = load_config(path, environ={})
    small, large = cfg.tiers
    assert small.kind == "tierroute" and large.kind == "openai"
    assert large.dial_addresses() == ["http://127.0.0.1:8000/v1"]
    moved = load_config(
        path,
        environ={
            "TIERROUTE__TIERS__1__BASE_URL": "https://vllm-large:8000/v1",
            "TIERROUTE__TIERS__1__MODEL": "meta-llama/Llama-3.1-70B-Instruct",
        },
    )
    assert moved.tiers[1].dial_addresses() == ["https://vllm-large:8000/v1"]
    assert moved.tiers[1].model == "meta-llama/Llama-3.1-70B-Instruct"


@pytest.mark.parametrize(
    ("tier", "says"),
    [
        ("kind: openai", "needs base_url"),
        ("kind: openai\n    base_url: vllm:8000", "is not an http(s) URL"),
        ("kind: openai\n    base_url: http://v/v1\n    engine_args: {dtype: float32}",
         "runs no engine of ours"),
        ("address: h:1\n    api_key_env: KEY", "apply to tiers of kind openai"),
        ("kind: openai\n    base_url: http://v/v1\n    api_key_env: K\n    api_key_file: f",
         "not both"),
    ],
)  # fmt: skip
def test_an_upstream_tier_that_cannot_work_is_refused_naming_what_to_fix(
    tmp_path: Path, tier: str, says: str
) -> None:
    path = write(tmp_path, f"tiers:\n  - name: big\n    model: m\n    {tier}\n")
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        load_config(path, environ={})


def test_an_upstream_key_is_read_from_its_source_and_a_missing_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    path = write(
        tmp_path,
        "tiers:\n"
        "  - {name: a, kind: openai, base_url: 'http://v/v1', model: m, api_key_env: UP_KEY}\n"
        f"  - {{name: b, kind: openai, base_url: 'http://w/v1', model: m,\n"
        f"      api_key_file: {key_file}}}\n",
    )
    cfg = load_config(path, environ={})
    monkeypatch.delenv("UP_KEY", raising=False)
    with pytest.raises(ValueError, match=r"UP_KEY.*not set"):
        cfg.tiers[0].api_key()
    monkeypatch.setenv("UP_KEY", "sk-from-env")
    assert cfg.tiers[0].api_key() == (
        "sk-from-env",
        "the environment variable UP_KEY (tiers[a].api_key_env)",
    )
    key, where = cfg.tiers[1].api_key()
    assert key == "sk-from-file" and str(key_file) in where
