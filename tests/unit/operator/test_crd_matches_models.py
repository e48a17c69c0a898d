"""Every field of each CRD's spec schema against the pydantic model that reads it.

The CRD (crds.py) and the operator's models (models.py) spell the same fields twice; this
walk keeps them one schema: each CRD property has a model field under that exact alias and
each model field a CRD property, `required` lists agree, defaults agree where both define
one, and enums equal the values the model accepts. It found
`autoscaling.targetCPUUtilizationPercentage` read as `targetCpuUtilizationPercentage`
(the HPA always got 70).
"""

from __future__ import annotations

import types
import typing
from enum import Enum
from typing import Any

import pytest
from fdp_operator.crds import all_crds
from fdp_operator.models import FederatedRouterSpec, HospitalNodeSpec, PrivacyPolicySpec, SpecModel
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MODELS: dict[str, type[SpecModel]] = {
    "HospitalNode": HospitalNodeSpec,
    "PrivacyPolicy": PrivacyPolicySpec,
    "FederatedRouter": FederatedRouterSpec,
}


def _spec_schema(kind: str) -> dict[str, Any]:
    crd = next(c for c in all_crds() if c["spec"]["names"]["kind"] == kind)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _strip_optional(tp: Any) -> Any:
    """``X | None`` -> X (the CRD spells "absent", not null)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _item_type(tp: Any) -> Any:
    """tuple[X, ...] / list[X] -> X."""
    if typing.get_origin(tp) in (tuple, list):
        return _strip_optional(typing.get_args(tp)[0])
    return None


def _allowed_values(tp: Any) -> set[Any] | None:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return {m.value for m in tp}
    if typing.get_origin(tp) is typing.Literal:
        return set(typing.get_args(tp))
    return None


def _model(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def walk(schema: dict[str, Any], model: type[BaseModel], path: str) -> list[str]:
    """Problems between one object schema and one model (recursively)."""
    problems: list[str] = []
    fields = {f.alias or name: f for name, f in model.model_fields.items()}
    props: dict[str, Any] = schema.get("properties") or {}
    for key in props.keys() - fields.keys():
        problems.append(f"{path}.{key}: in the CRD, but {model.__name__} has no field with alias {key!r}")
    for key in fields.keys() - props.keys():
        problems.append(f"{path}.{key}: read by {model.__name__}, but the CRD has no such property")
    required = {k for k, f in fields.items() if f.is_required()}
    crd_required = set(schema.get("required", []))
    if required != crd_required:
        problems.append(
            f"{path}: required {sorted(crd_required)} in the CRD, {sorted(required)} in the model"
        )
    for key in sorted(props.keys() & fields.keys()):
        sub, field, where = props[key], fields[key], f"{path}.{key}"
        tp = _strip_optional(field.annotation)
        default = _default(field)
        if "default" in sub and sub.get("type") != "object" and default is not PydanticUndefined:
            if _plain(default) != sub["default"]:
                problems.append(
                    f"{where}: default {sub['default']!r} in the CRD, {_plain(default)!r} in the model"
                )
        if "default" in sub and default is PydanticUndefined:
            problems.append(f"{where}: the CRD defaults it, the model requires it")
        allowed = _allowed_values(tp) or _allowed_values(_item_type(tp))
        enum = sub.get("enum") or (sub.get("items") or {}).get("enum")
        if enum is not None and set(enum) != allowed:
            problems.append(f"{where}: enum {enum} in the CRD, {sorted(allowed or [])} in the model")
        if allowed is not None and enum is None:
            problems.append(f"{where}: the model accepts only {sorted(allowed)}, the CRD any value")
        if sub.get("type") == "object" and "properties" in sub:
            nested = _model(tp)
            if nested is None:
                problems.append(f"{where}: an object with properties in the CRD, {tp} in the model")
            else:
                problems += walk(sub, nested, where)
        items = sub.get("items") or {}
        if sub.get("type") == "array" and "properties" in items:
            nested = _model(_item_type(tp))
            if nested is None:
                problems.append(f"{where}[]: objects in the CRD, {tp} in the model")
            else:
                problems += walk(items, nested, f"{where}[]")
    return problems


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_crd_field_is_read_by_the_model_under_its_own_name_with_the_same_default(kind: str) -> None:
    problems = walk(_spec_schema(kind), MODELS[kind], "spec")
    assert not problems, "\n".join(problems)


def test_the_walk_finds_a_misspelt_alias() -> None:
    """The check itself: a model that reads a field under another spelling is reported."""
    from pydantic import Field

    class Autoscaling(SpecModel):
        target_cpu_utilization_percentage: int | None = Field(70)

    schema = {
        "type": "object",
        "properties": {"targetCPUUtilizationPercentage": {"type": "integer", "default": 70}},
    }
    problems = walk(schema, Autoscaling, "spec.autoscaling")
    assert any("targetCPUUtilizationPercentage" in p and "no field" in p for p in problems)
    assert any("targetCpuUtilizationPercentage" in p and "no such property" in p for p in problems)
