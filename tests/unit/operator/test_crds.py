"""The CRDs: generated from one source, identical in crds/ and the chart, structurally sound."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fdp_operator.crds import all_crds, file_name, to_yaml

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("directory", ["crds", "charts/federated-dp-llm/crds"])
def test_committed_crds_match_the_python_source(directory: str) -> None:
    for crd in all_crds():
        path = REPO / directory / file_name(crd)
        assert path.read_text() == to_yaml(crd), f"{path} is stale: run `python -m fdp_operator.crds --write`"


def test_crds_dir_and_chart_copy_hold_the_same_files() -> None:
    a = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    b = {p.name: p.read_text() for p in (REPO / "charts/federated-dp-llm/crds").glob("*.yaml")}
    assert a == b and len(a) == 3


def _walk(schema: dict, path: str = ""):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_every_schema_node_has_a_type_so_the_schema_is_structural() -> None:
    for crd in all_crds():
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(root):
            assert "type" in node or node.get("x-kubernetes-int-or-string"), (
                f"{crd['metadata']['name']}{path}"
            )


def test_names_short_names_category_and_status_subresource() -> None:
    by_kind = {c["spec"]["names"]["kind"]: c for c in all_crds()}
    assert {k: c["spec"]["names"]["shortNames"] for k, c in by_kind.items()} == {
        "HospitalNode": ["hn"],
        "PrivacyPolicy": ["pp"],
        "FederatedRouter": ["fr"],
    }
    for crd in by_kind.values():
        assert crd["spec"]["group"] == "fdp.io" and crd["spec"]["scope"] == "Namespaced"
        assert crd["spec"]["names"]["categories"] == ["fdp"]
        version = crd["spec"]["versions"][0]
        assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}


def test_router_printer_columns_are_what_an_sre_reads_first() -> None:
    fr = next(c for c in all_crds() if c["spec"]["names"]["kind"] == "FederatedRouter")
    cols = [c["name"] for c in fr["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
    assert cols == ["Ready", "Strategy", "Active/Weight", "Replicas", "Nodes", "Age"]


def test_router_schema_carries_the_rollout_fields_of_the_rollout_engine() -> None:
    fr = next(c for c in all_crds() if c["spec"]["names"]["kind"] == "FederatedRouter")
    props = fr["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    rollout = props["spec"]["properties"]["rollout"]["properties"]
    assert set(rollout) >= {
        "strategy",
        "previewReplicas",
        "autoPromotionEnabled",
        "autoPromotionSeconds",
        "scaleDownDelaySeconds",
        "progressDeadlineSeconds",
        "paused",
        "steps",
        "analysis",
    }
    status = props["status"]["properties"]["rollout"]["properties"]
    assert set(status) >= {
        "activeColor",
        "previewColor",
        "stableRevision",
        "currentRevision",
        "currentStepIndex",
        "canaryWeight",
        "pauseReason",
    }


def test_object_defaults_are_spelled_out_so_cel_rules_can_read_them() -> None:
    for crd in all_crds():
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(root):
            if node.get("type") == "object" and "default" in node and node.get("x-kubernetes-validations"):
                assert node["default"], f"{path}: empty default would fail its own CEL rules"


def test_the_yaml_round_trips() -> None:
    for crd in all_crds():
        assert yaml.safe_load(to_yaml(crd)) == crd


def test_the_crd_reference_doc_is_generated_from_the_same_source() -> None:
    from fdp_operator.crds import reference

    doc = (REPO / "docs" / "crd-reference.md").read_text()
    assert doc == reference(), "docs/crd-reference.md is stale: run `python -m fdp_operator.crds --write`"
    assert "`rollout.steps[].setWeight`" in doc and "spec.delta must be in (0, 1e-3]" in doc


def _spec(kind: str) -> dict:
    crd = next(c for c in all_crds() if c["spec"]["names"]["kind"] == kind)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_kubectl_get_hn_shows_the_data_class_and_the_mechanism() -> None:
    hn = next(c for c in all_crds() if c["spec"]["names"]["kind"] == "HospitalNode")
    cols = {c["name"]: c["jsonPath"] for c in hn["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert cols["Data"] == ".spec.privacy.dataClass" and cols["Mechanism"] == ".spec.privacy.mechanism"


def test_every_node_declares_its_privacy_and_a_phi_node_its_mechanism() -> None:
    spec = _spec("HospitalNode")
    assert "privacy" in spec["required"]
    privacy = spec["properties"]["privacy"]
    assert privacy["required"] == ["dataClass"]
    assert privacy["properties"]["dataClass"]["enum"] == ["PHI", "Public"]
    assert privacy["properties"]["mechanism"]["enum"] == ["None", "PureDP", "Gaussian"]
    [rule] = privacy["x-kubernetes-validations"]
    assert rule["message"].startswith("a PHI node must declare the DP mechanism its endpoint runs")


def test_candidate_sets_carry_the_routers_option_limits() -> None:
    from fdp_router.config import MAX_OPTION_LENGTH, MAX_OPTIONS

    sets = _spec("PrivacyPolicy")["properties"]["consensus"]["properties"]["candidateSets"]
    options = sets["additionalProperties"]
    assert (options["minItems"], options["maxItems"]) == (2, MAX_OPTIONS)
    assert options["items"]["maxLength"] == MAX_OPTION_LENGTH and options["items"]["minLength"] == 1
    assert options["x-kubernetes-list-type"] == "set"  # exact duplicates: refused by the API server


def test_the_policy_mechanism_is_marked_deprecated() -> None:
    assert _spec("PrivacyPolicy")["properties"]["mechanism"]["description"].startswith("deprecated")


def test_router_scheduling_is_the_pod_fields_with_the_api_servers_rules() -> None:
    sched = _spec("FederatedRouter")["properties"]["scheduling"]
    props = sched["properties"]
    assert set(props) == {
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "topologySpreadConstraints",
    }
    assert "spec.nodeSelector, which selects HospitalNodes" in sched["description"]
    toleration = props["tolerations"]["items"]
    assert toleration["properties"]["operator"]["enum"] == ["Exists", "Equal"]
    assert toleration["properties"]["effect"]["enum"] == ["NoSchedule", "PreferNoSchedule", "NoExecute", ""]
    messages = [r["message"] for r in toleration["x-kubernetes-validations"]]
    assert any("value must be empty when operator is Exists" in m for m in messages)
    for kind in ("nodeAffinity", "podAffinity", "podAntiAffinity"):
        assert props["affinity"]["properties"][kind]["x-kubernetes-preserve-unknown-fields"] is True
    tsc = props["topologySpreadConstraints"]
    assert tsc["x-kubernetes-list-type"] == "map"  # one constraint per (key, action), as a pod's
    assert tsc["x-kubernetes-list-map-keys"] == ["topologyKey", "whenUnsatisfiable"]
    assert set(tsc["items"]["required"]) >= set(tsc["x-kubernetes-list-map-keys"])
    assert tsc["items"]["properties"]["maxSkew"]["minimum"] == 1
    assert "this router's own pods" in tsc["description"]
    # bounded lists and maps: the API server estimates the cost of each CEL rule from them
    assert props["tolerations"]["maxItems"] and tsc["maxItems"] and props["nodeSelector"]["maxProperties"]


def test_cel_rules_quote_their_patterns_without_backslashes() -> None:
    """A CEL string literal refuses escapes like '\\.': the patterns quoted in rules use [.]."""
    for crd in all_crds():
        for path, node in _walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            for rule in node.get("x-kubernetes-validations", []):
                assert "\\" not in rule["rule"], f"{path}: {rule['rule']}"
