"""Connecting to Ray: its notice that a local instance uses token authentication (the default) is not printed in
every run; its warning that a cluster has no authentication still is."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("ray")

from cxrtriage.pipeline.cluster.run import _quiet_auth_notice  # noqa: E402

RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def test_the_token_auth_notice_is_dropped_and_the_no_auth_warning_kept(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(RAY_AUTH_LOGGER)
    caplog.set_level(logging.WARNING, logger=RAY_AUTH_LOGGER)
    with _quiet_auth_notice():
        logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    logger.warning("Token authentication is enabled for this Ray cluster (outside the session: not ours to hide)")
    said = [r.getMessage() for r in caplog.records]
    assert said == ["Token authentication is disabled for this Ray cluster. Anyone with network access ...",
                    "Token authentication is enabled for this Ray cluster (outside the session: not ours to hide)"]


def test_the_logger_named_is_the_one_ray_warns_through() -> None:
    import ray._private.authentication.authentication_token_setup as setup

    assert setup.logger.name == RAY_AUTH_LOGGER
