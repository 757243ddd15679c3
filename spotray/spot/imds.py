"""An IMDSv2 client for the two things spot training needs: interruption notices and hints.

IMDSv2 (required by cluster.yaml) is a session protocol: `PUT /latest/api/token` with
`X-aws-ec2-metadata-token-ttl-seconds` returns a token; every GET carries it in
`X-aws-ec2-metadata-token`. The client renews the token a minute before it expires and
once more whenever the service answers 401 (a restarted metadata service forgets tokens).

- `GET /latest/meta-data/spot/instance-action`: 404 until AWS decides to take the instance,
  then `{"action": "terminate"|"stop"|"hibernate", "time": "2026-11-26T18:22:00Z"}`: the
  instance goes at `time`, about two minutes after the notice appears.
- `GET /latest/meta-data/events/recommendations/rebalance`: 404, or `{"noticeTime": "..."}`
  when the instance is at elevated risk: an early hint, sometimes long before a notice.

Anything else (unreachable, 5xx, a body that does not parse) is an `IMDSError`: the caller
must keep polling and never act on a guess.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

DEFAULT_URL = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"

TOKEN_TTL_S = 21600  # 6 h, the most IMDS grants
RENEW_MARGIN_S = 60  # renew this long before the token expires
ACTIONS = ("terminate", "stop", "hibernate")


class IMDSError(Exception):
    """The metadata service could not be reached or said something that does not parse."""


def parse_time(text: object) -> datetime:
    """IMDS times: ISO 8601 in UTC with a `Z`. Anything else is a ValueError (a null or a
    number in a notice must be retried, not crash the watcher)."""
    if not isinstance(text, str):
        raise ValueError(f"time must be an ISO 8601 string, got {text!r}")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


@dataclass(frozen=True)
class SpotNotice:
    """AWS will `action` this instance at `time`."""

    action: Literal["terminate", "stop", "hibernate"]
    time: datetime

    @classmethod
    def parse(cls, body: str) -> SpotNotice:
        try:
            data = json.loads(body)
            action = data["action"]
            if action not in ACTIONS:
                raise ValueError(f"unknown action {action!r}")
            return cls(action, parse_time(data["time"]))
        except (ValueError, KeyError, TypeError) as err:
            raise IMDSError(f"unreadable spot instance-action {body[:80]!r}: {err}") from None

    @property
    def deadline_ms(self) -> int:
        return int(self.time.timestamp() * 1000)


@dataclass(frozen=True)
class RebalanceHint:
    """AWS says this instance is at elevated risk of interruption."""

    notice_time: datetime

    @classmethod
    def parse(cls, body: str) -> RebalanceHint:
        try:
            return cls(parse_time(json.loads(body)["noticeTime"]))
        except (ValueError, KeyError, TypeError) as err:
            raise IMDSError(f"unreadable rebalance recommendation {body[:80]!r}: {err}") from None


class IMDSClient:
    """IMDSv2 with token renewal; `None` means 404 (nothing to report)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout_s: float = 1.0,
        token_ttl_s: int = TOKEN_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.token_ttl_s = token_ttl_s
        self.clock = clock
        self._token: str | None = None
        self._token_expires = 0.0

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
        req = urllib.request.Request(self.base_url + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise IMDSError(f"metadata service unreachable at {self.base_url}: {err}") from None

    def token(self, renew: bool = False) -> str:
        if renew or self._token is None or self.clock() >= self._token_expires - RENEW_MARGIN_S:
            status, body = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.token_ttl_s)})
            if status != 200 or not body.strip():
                raise IMDSError(f"token request answered {status}")
            self._token, self._token_expires = body.strip(), self.clock() + self.token_ttl_s
        return self._token

    def get(self, path: str) -> str | None:
        """The body at `path`, or None on 404."""
        status, body = self._request("GET", path, {TOKEN_HEADER: self.token()})
        if status == 401:  # token forgotten or expired early: renew once
            status, body = self._request("GET", path, {TOKEN_HEADER: self.token(renew=True)})
        if status == 404:
            return None
        if status != 200:
            raise IMDSError(f"GET {path} answered {status}")
        return body

    def spot_notice(self) -> SpotNotice | None:
        body = self.get(INSTANCE_ACTION_PATH)
        return None if body is None else SpotNotice.parse(body)

    def rebalance(self) -> RebalanceHint | None:
        body = self.get(REBALANCE_PATH)
        return None if body is None else RebalanceHint.parse(body)

    def instance_id(self) -> str | None:
        return self.get(INSTANCE_ID_PATH)
