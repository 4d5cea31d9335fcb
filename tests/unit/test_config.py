"""Settings (hookline.config): ``HOOKLINE_*`` read into a Config, refused with the variable's
name when they cannot be used."""

from __future__ import annotations

import logging

import pytest

from hookline import config as config_mod
from hookline.config import Config
from hookline.errors import InvalidSpec


def test_settings_are_read_with_their_types_and_unset_or_empty_ones_keep_the_default() -> None:
    config = config_mod.load(
        {
            "HOOKLINE_MAX_BODY_BYTES": "2_097_152",
            "HOOKLINE_RETRY_BASE": "0.5",
            "HOOKLINE_HTTPS_ONLY": "yes",
            "HOOKLINE_POOL": "bulk",
            "HOOKLINE_PREFIX": "",
            "OTHER_PORT": "1",
        }
    )
    assert (config.max_body_bytes, config.retry_base) == (2 * 1024 * 1024, 0.5)
    assert (config.https_only, config.pool, config.prefix) == (True, "bulk", "hookline")
    assert config_mod.load({}) == Config()


@pytest.mark.parametrize(
    ("environ", "complaint"),
    [
        ({"HOOKLINE_CONCURRENCY": "lots"}, "HOOKLINE_CONCURRENCY='lots'"),
        ({"HOOKLINE_CONCURRENCY": "0"}, "HOOKLINE_CONCURRENCY must be at least 1"),
        ({"HOOKLINE_INLINE_LIMIT": "2000000"}, "must not exceed HOOKLINE_MAX_BODY_BYTES"),
        ({"HOOKLINE_BODY_STORE": "s3"}, "'fs' or 'gcs'"),
        ({"HOOKLINE_BODY_STORE": "gcs"}, "needs HOOKLINE_GCS_BUCKET"),
        ({"HOOKLINE_GCS_CHUNK_SIZE": "1000"}, "multiple of 256 KiB"),
        ({"HOOKLINE_SCALE_TOLERANCE": "1"}, "below 1"),
        ({"HOOKLINE_BODY_GRACE": "20"}, "HOOKLINE_BODY_GRACE must exceed HOOKLINE_REQUEST_TIMEOUT"),
        ({"HOOKLINE_BODY_REAP_INTERVAL": "-1"}, "0 \\(no reaper\\) or positive"),
    ],
)
def test_a_setting_that_cannot_be_used_is_refused_naming_the_variable(
    environ: dict[str, str], complaint: str
) -> None:
    with pytest.raises(InvalidSpec, match=complaint):
        config_mod.load(environ)


def test_kubernetes_service_link_variables_are_not_taken_for_ports(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # what the kubelet sets in a pod of a namespace with a Service named hookline-receiver
    with caplog.at_level(logging.WARNING):
        config = config_mod.load({"HOOKLINE_RECEIVER_PORT": "tcp://10.0.0.204:80"})
    assert config.receiver_port == 8080
    assert "a Kubernetes service-link variable (of a Service named hookline-receiver)" in (
        caplog.text
    )
    assert config_mod.load({"HOOKLINE_RECEIVER_PORT": "9090"}).receiver_port == 9090
