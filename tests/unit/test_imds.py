"""The IMDSv2 client against the loopback metadata service, over real HTTP."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from spotray.chaos.imds_server import FakeIMDS
from spotray.spot.imds import INSTANCE_ACTION_PATH, TOKEN_PATH, IMDSClient, IMDSError


@pytest.fixture
def imds():
    with FakeIMDS(instance_id="i-0abc") as server:
        yield server


def test_token_is_fetched_once_and_sent_with_every_get(imds: FakeIMDS) -> None:
    client = IMDSClient(imds.url)
    for _ in range(3):
        assert client.spot_notice() is None  # 404: nothing announced
    assert imds.requests[TOKEN_PATH] == 1
    assert imds.requests[INSTANCE_ACTION_PATH] == 3
    assert client.instance_id() == "i-0abc"


def test_token_is_renewed_before_it_expires(imds: FakeIMDS) -> None:
    now = [1000.0]
    client = IMDSClient(imds.url, token_ttl_s=300, clock=lambda: now[0])
    client.spot_notice()
    now[0] += 200  # still 100 s left: no renewal
    client.spot_notice()
    assert imds.requests[TOKEN_PATH] == 1
    now[0] += 50  # 50 s left, under the 60 s margin: renew
    client.spot_notice()
    assert imds.requests[TOKEN_PATH] == 2


def test_401_renews_the_token_once(imds: FakeIMDS) -> None:
    client = IMDSClient(imds.url)
    client.spot_notice()
    imds.forget_tokens()  # a restarted metadata service
    at = imds.serve_notice("terminate", lead_s=120)
    notice = client.spot_notice()
    assert notice is not None and notice.action == "terminate"
    assert notice.time == at.replace(microsecond=0)
    assert imds.requests[TOKEN_PATH] == 2


def test_notice_and_rebalance_are_parsed(imds: FakeIMDS) -> None:
    client = IMDSClient(imds.url)
    at = datetime(2026, 11, 26, 18, 22, tzinfo=timezone.utc)
    imds.serve_notice("hibernate", at=at)
    imds.serve_rebalance(at - timedelta(minutes=10))
    notice, hint = client.spot_notice(), client.rebalance()
    assert notice.action == "hibernate" and notice.time == at
    assert notice.deadline_ms == int(at.timestamp() * 1000)
    assert hint.notice_time == at - timedelta(minutes=10)


@pytest.mark.parametrize(
    "body",
    [
        "<html>oops",
        '{"action": "explode", "time": "2026-11-26T18:22:00Z"}',
        "{}",
        '{"action": "terminate", "time": null}',
        '{"action": "terminate", "time": 1796066448}',
    ],
)
def test_garbage_is_an_error_not_a_notice(imds: FakeIMDS, body: str) -> None:
    imds.serve_garbage(INSTANCE_ACTION_PATH, body)
    with pytest.raises(IMDSError, match="unreadable"):
        IMDSClient(imds.url).spot_notice()


def test_unreachable_service_is_an_error() -> None:
    server = FakeIMDS().start()
    url = server.url
    server.stop()
    with pytest.raises(IMDSError, match="unreachable"):
        IMDSClient(url, timeout_s=0.5).spot_notice()


def test_get_without_token_is_refused(imds: FakeIMDS) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(imds.url + INSTANCE_ACTION_PATH, timeout=2)
    assert err.value.code == 401


def test_control_endpoint_sets_a_notice_from_another_process(imds: FakeIMDS) -> None:
    import json
    import urllib.request

    body = json.dumps({"action": "stop", "time": "2026-11-26T18:22:00Z"}).encode()
    req = urllib.request.Request(imds.url + "/spotray/instance-action", data=body, method="PUT")
    urllib.request.urlopen(req, timeout=2)
    assert IMDSClient(imds.url).spot_notice().action == "stop"
