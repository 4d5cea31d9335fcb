"""The CRDs (crds/) agree with the code: what the API server accepts as an event type or a
subscription filter is what hookline.models accepts, and every status field the operator
writes is in the status schema (the API server silently prunes a field that is not).
The API server's own enforcement is tested in tests/kubernetes/test_crd.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hookline.errors import InvalidSpec
from hookline.models import check_event_pattern, valid_event_type
from hookline.operator import status as st

CRDS = Path(__file__).resolve().parents[2] / "crds"


def schema(file: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / file).read_text())
    (version,) = crd["spec"]["versions"]
    found: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return found


def printer_columns(file: str) -> list[dict[str, Any]]:
    crd = yaml.safe_load((CRDS / file).read_text())
    columns: list[dict[str, Any]] = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    return columns


SOURCE_SPEC = schema("webhooksources.yaml")["properties"]["spec"]["properties"]
ENDPOINT_SPEC = schema("webhookendpoints.yaml")["properties"]["spec"]["properties"]

SAMPLES = [
    "invoice.paid",
    "invoice.line.added",
    "Order_Created",
    "a",
    "0",
    "urn:shop:order/created",
    "a-b.c_d:e/f",
    "x" * 128,
    "x" * 129,
    "",
    ".invoice",
    "-invoice",
    "invoice paid",
    "invoice.*",
    "invoice..*",
    "*",
    ".*",
    "invoice*",
    "invoice.*.paid",
    "invoice.**",
    "in*voice",
    "facture.payée",
    "invoice.paid\n",
    "x" * 128 + ".*",
    "x" * 129 + ".*",
]


def accepts(pattern: str, value: str) -> bool:
    # The API server's pattern is a Go regexp searched in the value: the CRD's own anchors
    # make it whole. Python's $ would also take a trailing newline, which Go's does not.
    return re.search(pattern.removesuffix("$") + r"\Z", value) is not None


def filter_ok(value: str) -> bool:
    try:
        check_event_pattern(value)
    except InvalidSpec:
        return False
    return True


@pytest.mark.parametrize("value", SAMPLES)
def test_a_source_catalog_takes_exactly_the_event_types_the_receiver_takes(value: str) -> None:
    pattern = SOURCE_SPEC["eventTypes"]["items"]["pattern"]
    assert accepts(pattern, value) == valid_event_type(value), value


@pytest.mark.parametrize("value", SAMPLES)
def test_an_endpoint_filter_takes_exactly_the_types_and_prefixes_the_model_takes(
    value: str,
) -> None:
    pattern = ENDPOINT_SPEC["eventTypes"]["items"]["pattern"]
    assert accepts(pattern, value) == filter_ok(value), value


def test_lists_of_event_types_are_bounded_sets() -> None:
    for spec in (SOURCE_SPEC, ENDPOINT_SPEC):
        types = spec["eventTypes"]
        assert types["x-kubernetes-list-type"] == "set"  # a duplicate is refused
        assert 0 < types["maxItems"] <= 1024


def status_fields(file: str) -> set[str]:
    return set(schema(file)["properties"]["status"]["properties"])


def test_every_status_field_the_operator_writes_for_a_source_is_in_its_schema() -> None:
    written = {"observedGeneration", "keySecretName", "conditions"}
    written |= set(st.source_figures({}, 0))
    assert written <= status_fields("webhooksources.yaml")


def test_every_status_field_the_operator_writes_for_an_endpoint_is_in_its_schema() -> None:
    stats = {
        "last_success": "1700000000000",
        "last_failure": '{"at": 1700000000, "reason": "HTTP 500", "status": 500}',
    }
    written = {"observedGeneration", "keySecretName", "conditions"} | set(st.figures(stats, 0))
    assert written <= status_fields("webhookendpoints.yaml")


@pytest.mark.parametrize("file", ["webhooksources.yaml", "webhookendpoints.yaml"])
def test_printer_columns_show_fields_of_the_schema(file: str) -> None:
    fields = status_fields(file)
    for column in printer_columns(file):
        path = column["jsonPath"]
        if path.startswith(".status."):
            assert path.removeprefix(".status.").split("[")[0] in fields, column
