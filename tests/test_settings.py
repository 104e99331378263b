"""Settings come from the environment, are frozen, and name the variable in every error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.settings import ConfigError, RenditionSpec, Settings
from tests.support.settings import ROOT


def test_defaults_without_aws_run_embedded_with_in_process_consumer() -> None:
    settings = Settings.from_env({})
    assert settings.aws.mode == "embedded"
    assert settings.web.run_consumer is True
    assert settings.aws.effective_endpoint == "http://127.0.0.1:4566"
    assert settings.imaging.renditions == (RenditionSpec(256),)
    assert settings.consumer.redrive_max_receive_count > settings.consumer.max_attempts


def test_aws_credentials_switch_to_aws_mode_serving_only_the_api() -> None:
    settings = Settings.from_env({"AWS_ACCESS_KEY_ID": "AKIA", "AWS_REGION": "eu-west-1"})
    assert settings.aws.mode == "aws"
    assert settings.aws.region == "eu-west-1"
    assert settings.web.run_consumer is False
    assert settings.aws.effective_endpoint is None


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.web.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMGSVC_PORT", "eighty"),
        ("IMGSVC_PORT", "70000"),
        ("IMGSVC_MAX_BYTES", "0"),
        ("IMGSVC_CONSUMER_BATCH_SIZE", "11"),
        ("IMGSVC_CONSUMER_BACKOFF_BASE", "fast"),
        ("IMGSVC_RUN_CONSUMER", "maybe"),
        ("IMGSVC_MODE", "cloud"),
        ("IMGSVC_SOURCE_BUCKET", "Not_A_Bucket"),
        ("IMGSVC_QUEUE_NAME", "bad name"),
        ("IMGSVC_RENDITIONS", "256,abc"),
        ("IMGSVC_RENDITIONS", "256:gif"),
        ("IMGSVC_RENDITIONS", "256,256"),
        ("IMGSVC_ALLOWED_FORMATS", "jpeg,svg"),
        ("IMGSVC_UPLOAD_PART_SIZE", "1024"),
        ("IMGSVC_LOG_LEVEL", "LOUD"),
    ],
)
def test_invalid_values_fail_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        Settings.from_env({name: value})


def test_source_and_destination_must_differ() -> None:
    with pytest.raises(ConfigError, match="IMGSVC_DEST_BUCKET"):
        Settings.from_env({"IMGSVC_SOURCE_BUCKET": "same", "IMGSVC_DEST_BUCKET": "same"})


@given(
    st.lists(
        st.tuples(st.integers(1, 99_999), st.sampled_from(["jpeg", "png", "webp"]), st.integers(1, 100)),
        min_size=1,
        max_size=5,
        unique_by=lambda t: (t[0], t[1]),
    )
)
def test_rendition_lists_round_trip(specs: list[tuple[int, str, int]]) -> None:
    text = ",".join(f"{side}:{fmt}:{quality}" for side, fmt, quality in specs)
    parsed = Settings.from_env({"IMGSVC_RENDITIONS": text}).imaging.renditions
    assert parsed == tuple(RenditionSpec(side, fmt, quality) for side, fmt, quality in specs)
    assert len({r.filename for r in parsed}) == len(parsed)


def test_entry_points_run_on_uvloop_unless_switched_off() -> None:
    import asyncio

    from pipeline.core import runtime

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert runtime.run(loop_module()).startswith("uvloop")
    assert runtime.run(loop_module(), use_uvloop=False).startswith("asyncio")
    assert Settings.from_env({"IMGSVC_UVLOOP": "false"}).use_uvloop is False


def test_in_flight_follows_the_workers_unless_set() -> None:
    assert Settings.from_env({"IMGSVC_CONSUMER_WORKERS": "3"}).consumer.in_flight_limit == 12
    assert Settings.from_env({"IMGSVC_CONSUMER_WORKERS": "1"}).consumer.in_flight_limit == 4
    explicit = {"IMGSVC_CONSUMER_WORKERS": "1", "IMGSVC_CONSUMER_MAX_IN_FLIGHT": "20"}
    assert Settings.from_env(explicit).consumer.in_flight_limit == 20


def test_a_data_directory_means_the_local_mode_with_its_consumer_and_keys_inside(tmp_path: Path) -> None:
    settings = Settings.from_env({"IMGSVC_DATA_DIR": str(tmp_path / "d")})
    assert settings.aws.mode == "local" and settings.local.data_dir == tmp_path / "d"
    assert settings.web.run_consumer
    assert settings.accounts.demo_keys_file == tmp_path / "d" / "demo-keys.json"
    # AWS variables do not override an explicit data directory.
    assert Settings.from_env({"IMGSVC_DATA_DIR": str(tmp_path), "AWS_PROFILE": "x"}).aws.mode == "local"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"IMGSVC_MODE": "local"}, "IMGSVC_DATA_DIR"),
        ({"IMGSVC_MODE": "embedded", "IMGSVC_DATA_DIR": "/tmp/x"}, "IMGSVC_DATA_DIR"),
        ({"IMGSVC_DATA_DIR": "/tmp/x", "IMGSVC_LINKS": "s3"}, "IMGSVC_LINKS"),
    ],
)
def test_local_mode_misconfigurations_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_every_variable_is_read_once_and_documented() -> None:
    readme = (ROOT / "docs" / "configuration.md").read_text()
    variables = Settings.variables()
    assert len(variables) == len(set(variables))
    assert [name for name in variables if f"`{name}`" not in readme] == []


def test_variant_presets_parse_or_fail_naming_the_variable() -> None:
    variants = Settings.from_env(
        {"IMGSVC_VARIANT_PRESETS": "card=400x300:cover:webp,hero=1600:auto:70,tall=x900:entropy:cover"}
    ).variants
    assert variants.preset("card") == {"w": "400", "h": "300", "fit": "cover", "format": "webp"}
    assert variants.preset("hero") == {"w": "1600", "format": "auto", "q": "70"}
    assert variants.preset("tall") == {"h": "900", "crop": "entropy", "fit": "cover"}
    for bad in (
        "card",
        "card=",
        "Card=10",
        "a=10:gif",
        "a=10:cover:fill",
        "a=10:entropy",
        "a=10,a=20",
        "a=5000",
    ):
        with pytest.raises(ConfigError, match=r"^IMGSVC_VARIANT_PRESETS: "):
            Settings.from_env({"IMGSVC_VARIANT_PRESETS": bad})
    with pytest.raises(ConfigError, match=r"^IMGSVC_VARIANT_PRESETS_ONLY: "):
        Settings.from_env({"IMGSVC_VARIANT_PRESETS_ONLY": "true"})


def test_an_s3_store_of_its_own_takes_its_key_and_secret_together_and_never_shows_the_secret() -> None:
    env = {"IMGSVC_S3_ENDPOINT_URL": "https://s3.example.net", "IMGSVC_S3_ACCESS_KEY_ID": "objects"}
    with pytest.raises(ConfigError, match="IMGSVC_S3_ACCESS_KEY_ID and IMGSVC_S3_SECRET_ACCESS_KEY"):
        Settings.from_env(env)
    aws = Settings.from_env({**env, "IMGSVC_S3_SECRET_ACCESS_KEY": "hush-hush"}).aws
    assert (aws.s3_endpoint_url, aws.s3_access_key_id, aws.s3_secret_access_key) == (
        "https://s3.example.net",
        "objects",
        "hush-hush",
    )
    assert "hush-hush" not in repr(aws)
    # Only the objects move: queues and tables stay where the rest is.
    assert aws.effective_endpoint != aws.s3_endpoint_url


def test_a_store_without_notifications_refuses_presigned_uploads_at_start() -> None:
    env = {"IMGSVC_S3_NOTIFICATIONS": "false", "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "a"}
    assert Settings.from_env(env).aws.s3_notifications is False
    with pytest.raises(ConfigError, match="IMGSVC_UPLOAD_MODES: presigned uploads go to the store"):
        Settings.from_env({**env, "IMGSVC_UPLOAD_MODES": "api,presigned"})
    # The local backend's presigned uploads come through its own routes: it announces them.
    local = {"IMGSVC_DATA_DIR": "/tmp/imgsvc-unused", "IMGSVC_UPLOAD_MODES": "api,presigned"}
    assert "presigned" in Settings.from_env({**env, **local}).web.upload_modes
