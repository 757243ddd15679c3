"""Spot price history and the Pricing API through botocore's Stubber: responses of the real
shape, several pages (moto returns no history and has no Pricing API)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber

from spotray.cost.ledger import Ledger
from spotray.cost.prices import load_on_demand, refresh_on_demand, spot_price_history

T0 = datetime(2026, 11, 26, 10, tzinfo=timezone.utc)
T1 = datetime(2026, 11, 26, 16, tzinfo=timezone.utc)


def record(az: str, price: str, hour: int, minute: int = 0) -> dict:
    return {
        "AvailabilityZone": az,
        "InstanceType": "p3.8xlarge",
        "ProductDescription": "Linux/UNIX",
        "SpotPrice": price,
        "Timestamp": datetime(2026, 11, 26, hour, minute, tzinfo=timezone.utc),
    }


def test_spot_history_reads_every_page_and_prices_from_the_change_before_start(tmp_path: Path) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    asked = {
        "InstanceTypes": ["p3.8xlarge"],
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": T0,
        "EndTime": T1,
    }
    with Stubber(ec2) as stub:
        # AWS answers newest first, and includes the change in force at StartTime (07:12).
        stub.add_response(
            "describe_spot_price_history",
            {
                "SpotPriceHistory": [record("us-east-1a", "1.2000", 13), record("us-east-1b", "0.9900", 12)],
                "NextToken": "page2",
            },
            asked,
        )
        stub.add_response(
            "describe_spot_price_history",
            {"SpotPriceHistory": [record("us-east-1a", "0.9180", 7, 12)], "NextToken": ""},
            {**asked, "NextToken": "page2"},
        )
        history = spot_price_history(ec2, ["p3.8xlarge"], T0, T1)
        stub.assert_no_pending_responses()
    assert [(p.az, p.price) for p in history] == [
        ("us-east-1a", 0.918),
        ("us-east-1b", 0.99),
        ("us-east-1a", 1.2),
    ]

    with Ledger(tmp_path / "ledger.db") as ledger:  # cached: reading the same pages twice adds nothing
        ledger.add_spot_prices(history)
        ledger.add_spot_prices(history)
        series = ledger.spot_series()[("p3.8xlarge", "us-east-1a")]
    assert len(series.changes) == 2
    assert series.price_at(T0.timestamp()) == 0.918  # the price in force when the interval starts
    assert series.price_at(datetime(2026, 11, 26, 14, tzinfo=timezone.utc).timestamp()) == 1.2


def product(instance_type: str, usd: str) -> str:
    """One Pricing API PriceList entry, a JSON string as the real API sends it."""
    return json.dumps(
        {
            "product": {"attributes": {"instanceType": instance_type, "regionCode": "us-east-1"}},
            "terms": {
                "OnDemand": {
                    "ABC.JRTCKXETXF": {
                        "priceDimensions": {
                            "ABC.JRTCKXETXF.6YS6EN2CT7": {"unit": "Hrs", "pricePerUnit": {"USD": usd}}
                        }
                    }
                }
            },
        }
    )


def test_refresh_reads_the_pricing_api_into_a_dated_user_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOTRAY_HOME", str(tmp_path))
    pricing = boto3.client(
        "pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(pricing) as stub:
        # g5.xlarge: two pages, the first holding only a reserved-capacity row with no hourly price.
        empty = json.dumps({"terms": {"OnDemand": {"X": {"priceDimensions": {"Y": {"unit": "Hrs",
                            "pricePerUnit": {"USD": "0.0000000000"}}}}}}})  # fmt: skip
        params = {"ServiceCode": "AmazonEC2", "Filters": ANY}
        stub.add_response("get_products", {"PriceList": [empty], "NextToken": "t2"}, params)
        stub.add_response(
            "get_products",
            {"PriceList": [product("g5.xlarge", "1.0060000000")]},
            {**params, "NextToken": "t2"},
        )
        stub.add_response("get_products", {"PriceList": [product("p3.8xlarge", "12.2400000000")]}, params)
        table = refresh_on_demand(pricing, "us-east-1", ["g5.xlarge", "p3.8xlarge"])
        stub.assert_no_pending_responses()
    assert table.price("g5.xlarge", "us-east-1") == 1.006
    assert table.as_of == datetime.now(timezone.utc).date().isoformat()
    assert load_on_demand().source.startswith("AWS Pricing API")  # the user copy now wins
    assert load_on_demand().price("p5.48xlarge", "us-east-1") > 0  # the rest is kept


def test_prices_without_credentials_shows_the_bundled_table(tmp_path: Path) -> None:
    """Offline first: the on-demand table ships with spotray; spot prices need EC2, and it says so."""
    from tests.conftest import no_aws_env, run_spotray

    env = no_aws_env(HOME=str(tmp_path))  # no ~/.aws either
    result = run_spotray(["prices", "--instance-types", "p3.8xlarge"], cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "p3.8xlarge" in result.stdout and "12.24" in result.stdout
    assert "spot prices need EC2: no AWS credentials found" in " ".join(result.stdout.split())
    plan = run_spotray(
        ["plan", "--instance-type", "p3.8xlarge", "--count", "8", "--hours", "24"],
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert plan.returncode == 1 and "give --spot-price to plan offline" in plan.stderr
    offline = run_spotray(
        ["plan", "--instance-type", "p3.8xlarge", "--count", "8", "--hours", "24", "--spot-price", "0.92"],
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert offline.returncode == 0 and "$176.64" in offline.stdout
