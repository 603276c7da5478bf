"""The state file (locking, schema version, uniqueness ignoring case) and List paging, without a
router."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from mce_router import RouterConfig
from mce_router.cli import load_serve_config
from mce_router.control.listing import ListItem, list_page, parse_list_request
from mce_router.control.resources import FleetSnapshot, NameMap
from mce_router.control.store import SCHEMA_VERSION, DuplicateName, Store, StoredEndpoint
from mce_router.errors import ConfigError, ValidationError
from mce_router.spec import EndpointConfigSpec, ModelSpec


def test_store_round_trip_and_names_unique_ignoring_case(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    try:
        store.insert_resource("models", "Model-A", {"ModelName": "Model-A"}, 1.5)
        with pytest.raises(DuplicateName):
            store.insert_resource("models", "model-a", {"ModelName": "model-a"}, 2.0)
        endpoint = StoredEndpoint(
            name="ep",
            body={"EndpointName": "ep", "EndpointConfigName": "c"},
            config_name="c",
            status="Creating",
            failure_reason=None,
            created=1.0,
            modified=1.0,
            deployed=None,
            pending={"config": {}, "models": {}, "at": 1.0},
        )
        store.insert_endpoint(endpoint)
        with pytest.raises(DuplicateName):
            store.insert_endpoint(endpoint)
        moved = dataclasses.replace(
            endpoint,
            status="InService",
            failure_reason="kept",
            modified=2.0,
            deployed=endpoint.pending,
            pending=None,
        )
        store.save_endpoint(moved)
        assert store.get_endpoint("EP") == moved
        assert [r.name for r in store.list_resources("models")] == ["Model-A"]
        assert store.delete_resource("models", "MODEL-A")
        assert store.list_resources("models") == []
    finally:
        store.close()


def test_store_is_locked_to_one_router(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "state.db")
    try:
        with pytest.raises(ConfigError, match="in use by another mce-router"):
            Store.open(tmp_path / "state.db")
    finally:
        first.close()
    Store.open(tmp_path / "state.db").close()  # released on close (and when a process dies)


def test_store_refuses_a_newer_schema_and_a_foreign_file(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    with closing(sqlite3.connect(newer)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="written by a newer mce-router"):
        Store.open(newer)
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="cannot be used"):
        Store.open(foreign)


def test_fleet_snapshot_round_trip() -> None:
    model = ModelSpec.from_request(
        {
            "ModelName": "m",
            "InferenceExecutionConfig": {"Mode": "Direct"},
            "Containers": [
                {"ContainerHostname": "a", "Image": "i:1", "Environment": {"K": "v"}},
                {"ContainerHostname": "b", "Image": "i:1"},
            ],
        }
    )
    config = EndpointConfigSpec.from_request(
        {
            "EndpointConfigName": "c",
            "ProductionVariants": [
                {"VariantName": "v", "ModelName": "M", "InitialInstanceCount": 3}
            ],
        }
    )
    snapshot = FleetSnapshot(config, {"M": model}, 12.5)
    assert snapshot.container_count == 6
    again = FleetSnapshot.from_json(snapshot.to_json())
    assert again.to_json() == snapshot.to_json()
    (summary,) = again.variant_summaries(running=True)
    assert summary["DeployedImages"] == [
        {"SpecifiedImage": "i:1", "ResolvedImage": "i:1", "ResolutionTime": 12.5}
    ]
    assert summary["CurrentInstanceCount"] == summary["DesiredInstanceCount"] == 3


def test_name_map_ignores_case_and_keeps_the_first_spelling() -> None:
    names: NameMap[int] = NameMap()
    names["Alpha"] = 1
    names["ALPHA"] = 2
    assert names["alpha"] == 2
    assert list(names) == ["Alpha"]
    assert "aLpHa" in names
    del names["alpha"]
    assert not names


def _items(count: int) -> list[ListItem]:
    return [
        ListItem(f"item-{i:02d}", 100.0 + i * 0.25, {"Name": f"item-{i:02d}"}, status=s)
        for i, s in zip(range(count), ["InService", "Failed", "Creating"] * count, strict=False)
    ]


def _request(**params: Any) -> Any:
    return parse_list_request(
        params,
        operation="ListEndpoints",
        result_key="Endpoints",
        sort_keys=("Name", "CreationTime", "Status"),
        with_modified_and_status=True,
    )


def test_list_pages_cover_everything_once_in_every_order() -> None:
    items = _items(23)
    for sort_by in ("Name", "CreationTime", "Status"):
        for order in ("Ascending", "Descending"):
            seen: list[str] = []
            token = None
            while True:
                params = {"SortBy": sort_by, "SortOrder": order, "MaxResults": 4}
                if token:
                    params["NextToken"] = token
                page = list_page(items, _request(**params))
                seen += [entry["Name"] for entry in page["Endpoints"]]
                token = page.get("NextToken")
                if token is None:
                    break
            assert sorted(seen) == sorted(i.name for i in items), (sort_by, order)
            assert len(seen) == len(set(seen))


def test_list_time_filters_are_strict_and_fractional() -> None:
    items = _items(5)  # created 100.0, 100.25, 100.5, 100.75, 101.0
    after = list_page(items, _request(CreationTimeAfter=100.25, SortOrder="Ascending"))
    assert [e["Name"] for e in after["Endpoints"]] == ["item-02", "item-03", "item-04"]
    before = list_page(items, _request(CreationTimeBefore="1970-01-01T00:01:40.5Z"))
    assert [e["Name"] for e in before["Endpoints"]] == ["item-01", "item-00"]
    failed = list_page(items, _request(StatusEquals="Failed"))
    assert [e["Name"] for e in failed["Endpoints"]] == ["item-04", "item-01"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"MaxResults": 0}, "greater than or equal to 1"),
        ({"MaxResults": True}, "must be an integer"),
        ({"SortBy": "Size"}, "enum value set: [Name, CreationTime, Status]"),
        ({"NameContains": "a b"}, "[a-zA-Z0-9-]+"),
        ({"CreationTimeAfter": "2024-01-01T00:00:00"}, "with a time zone"),
        ({"CreationTimeAfter": float("nan")}, "finite"),
        ({"NextToken": "!!!"}, "Invalid NextToken"),
        ({"NextToken": "WzEsICJ4IiwgMSwgImEiXQ=="}, "other filters"),
    ],
)
def test_list_parameters_are_validated(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        list_page(_items(3), _request(**params))
    assert fragment in caught.value.message


def test_state_file_location_and_control_limits_from_config(tmp_path: Path) -> None:
    default = RouterConfig.from_mapping({"state_dir": "st"}, base_dir=tmp_path)
    assert default.state_path == (tmp_path / "st" / "state.db").resolve()
    assert default.limits.drain_timeout_seconds == 30.0
    explicit = RouterConfig.from_mapping(
        {
            "state_dir": "st",
            "state_file": "elsewhere/router.db",
            "limits": {"drain_timeout_seconds": 2, "max_running_containers": 8},
        },
        base_dir=tmp_path,
    )
    assert explicit.state_path == (tmp_path / "elsewhere" / "router.db").resolve()
    assert explicit.limits.drain_timeout_seconds == 2.0
    assert explicit.limits.max_running_containers == 8
    with pytest.raises(ConfigError, match="drain_timeout_seconds"):
        RouterConfig.from_mapping({"limits": {"drain_timeout_seconds": -1}})


def test_serve_state_flags_override_the_config(tmp_path: Path) -> None:
    config_file = tmp_path / "router.yaml"
    config_file.write_text("state_dir: from-config\n")
    flags = {
        "config": config_file,
        "host": None,
        "port": None,
        "admin_port": None,
        "tls_cert": None,
        "tls_key": None,
        "workers": None,
    }
    plain = load_serve_config(argparse.Namespace(**flags, state_dir=None, state_file=None))
    assert plain.state_path == (tmp_path / "from-config" / "state.db").resolve()
    moved = load_serve_config(
        argparse.Namespace(**flags, state_dir=tmp_path / "dir", state_file=None)
    )
    assert moved.state_path == (tmp_path / "dir" / "state.db").resolve()
    pinned = load_serve_config(
        argparse.Namespace(**flags, state_dir=tmp_path / "dir", state_file=tmp_path / "x.db")
    )
    assert pinned.state_path == (tmp_path / "x.db").resolve()


def test_a_schema_1_state_file_gets_the_tags_table_with_the_tags_of_its_bodies(
    tmp_path: Path,
) -> None:
    # A file as schema-1 routers wrote it: no tags table, Tags kept in the request bodies
    # (unchecked: a malformed entry must not stop the upgrade).
    path = tmp_path / "v1.db"
    model = {"ModelName": "M", "Containers": [{"Image": "i"}], "Tags": [{"Key": "k", "Value": "v"}]}
    with closing(sqlite3.connect(path)) as db:
        db.executescript(
            "CREATE TABLE models (name TEXT PRIMARY KEY COLLATE NOCASE, body BLOB NOT NULL,"
            " created REAL NOT NULL);"
            "CREATE TABLE endpoint_configs (name TEXT PRIMARY KEY COLLATE NOCASE,"
            " body BLOB NOT NULL, created REAL NOT NULL);"
            "CREATE TABLE endpoints (name TEXT PRIMARY KEY COLLATE NOCASE, body BLOB NOT NULL,"
            " config_name TEXT NOT NULL, status TEXT NOT NULL, failure_reason TEXT,"
            " created REAL NOT NULL, modified REAL NOT NULL, deployed BLOB, pending BLOB);"
        )
        db.execute("INSERT INTO models VALUES ('M', ?, 1.0)", (json.dumps(model),))
        db.execute(
            "INSERT INTO endpoint_configs VALUES ('C', ?, 1.0)",
            (json.dumps({"EndpointConfigName": "C", "Tags": [{"Key": 1}, "x", {"Key": "a"}]}),),
        )
        db.execute(
            "INSERT INTO endpoints VALUES ('E', ?, 'C', 'InService', NULL, 1.0, 1.0, NULL, NULL)",
            (json.dumps({"EndpointName": "E", "Tags": [{"Key": "e", "Value": ""}]}),),
        )
        db.execute("PRAGMA user_version = 1")
        db.commit()
    store = Store.open(path)
    try:
        assert store.list_tags("model", "m") == [("k", "v")]
        assert store.list_tags("endpoint-config", "C") == []
        assert store.list_tags("endpoint", "E") == [("e", "")]
        assert store.list_resources("models")[0].body == model  # the bodies are untouched
        store.add_tags("model", "M", [("k", "w"), ("k2", "x")])
        store.delete_tags("model", "M", ["k2", "absent"])
        assert store.list_tags("model", "M") == [("k", "w")]
        assert store.delete_resource("models", "M")
        assert store.list_tags("model", "M") == []
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


def test_a_schema_2_state_file_gets_the_autoscaling_table(tmp_path: Path) -> None:
    # A schema-2 file (what the router wrote before autoscaling): it opens, keeps its rows, and
    # stores Application Auto Scaling objects from then on, across a reopen.
    path = tmp_path / "v2.db"
    store = Store.open(path)
    store.insert_resource("models", "M", {"ModelName": "M"}, 1.0, [("k", "v")])
    store.close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("DROP TABLE autoscaling")
        db.execute("PRAGMA user_version = 2")
        db.commit()
    store = Store.open(path)
    try:
        assert store.list_tags("model", "M") == [("k", "v")]
        assert store.list_autoscaling("target") == []
        store.change_autoscaling(put=[("target", "t", {"MinCapacity": 1})])
    finally:
        store.close()
    store = Store.open(path)
    try:
        assert store.list_autoscaling("target") == [("t", {"MinCapacity": 1})]
        store.change_autoscaling(delete=[("target", "t")])
        assert store.list_autoscaling("target") == []
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
