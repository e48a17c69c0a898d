"""The demo node's side of the router <-> node privacy contract, through real HTTP round trips
(aiohttp test servers): what it needs, what it answers, what it reports, and the attack knobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from fdp_router import demo_data as dd
from fdp_router.cli import main
from fdp_router.demo_node import ABSTAIN, PUBLIC_BASIS, DemoState, create_demo_app

Client = Callable[..., Awaitable[TestClient]]
TREATMENT_Q = "What is the most common first-line treatment for hypertension among our patients? [7]"
SHARE_Q = "share of patients with sepsis who were readmitted"
HYPERTENSION = dd.CONDITIONS[0]


def body(text: str = TREATMENT_Q, **extra: Any) -> dict[str, Any]:
    return {
        "model": "patient-stats",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        "max_tokens": 64,
        "temperature": 0,
        **extra,
    }


def privacy(epsilon: float = 1.0, purpose: str = "release", **kw: Any) -> dict[str, Any]:
    return {"epsilon": epsilon, "delta": 0.0, "mechanism": "pure_dp", "purpose": purpose, **kw}


def vote(options: list[str], text: str = TREATMENT_Q) -> dict[str, Any]:
    return body(text, fdp_privacy=privacy(0.0, "consensus_vote"), fdp_options=options)


async def node(aiohttp_client: Client, **state: Any) -> tuple[TestClient, DemoState]:
    st = DemoState(name=state.pop("name", "h-a"), **state)
    return await aiohttp_client(create_demo_app(st)), st


async def chat(client: TestClient, payload: Any) -> tuple[int, dict[str, Any], Any]:
    resp = await client.post("/v1/chat/completions", json=payload)
    return resp.status, dict(resp.headers), await resp.json()


def content(data: dict[str, Any]) -> str:
    return str(data["choices"][0]["message"]["content"])


async def stats(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/stats")
    data: dict[str, Any] = await resp.json()
    return data


# --- PHI node: releases ----------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.05, 1.0, 3.7])
async def test_a_phi_release_reports_the_requested_epsilon_in_headers_and_body(
    aiohttp_client: Client, eps: float
) -> None:
    client, _ = await node(aiohttp_client, seed=1)
    status, headers, data = await chat(client, body(fdp_privacy=privacy(eps)))
    assert status == 200
    assert data["privacy"]["epsilon"] == eps
    assert data["privacy"]["delta"] == 0.0
    assert data["privacy"]["mechanism"] == "pure_dp"
    assert "report-noisy-max over 20 disjoint shards" in data["privacy"]["basis"]
    assert headers["X-FDP-Privacy-Epsilon"] == repr(eps)
    assert float(headers["X-FDP-Privacy-Epsilon"]) == eps
    assert float(headers["X-FDP-Privacy-Delta"]) == 0.0
    assert headers["X-FDP-Privacy-Mechanism"] == "pure_dp"
    assert any(t in content(data) for t in HYPERTENSION.treatments)
    assert data["model"] == "patient-stats"


async def test_a_phi_release_at_high_epsilon_answers_the_hospitals_true_majority(
    aiohttp_client: Client,
) -> None:
    client, st = await node(aiohttp_client, seed=1, hospital="hospital-a")
    truth = dd.true_answer(st.patient_table, dd.TreatmentQuestion(HYPERTENSION))
    answers = [content((await chat(client, body(fdp_privacy=privacy(8.0))))[2]) for _ in range(20)]
    assert all(f": {truth} (" in a for a in answers)


async def test_a_share_release_answers_a_percentage(aiohttp_client: Client) -> None:
    client, _ = await node(aiohttp_client)
    status, _, data = await chat(client, body(SHARE_Q, fdp_privacy=privacy(2.0)))
    assert status == 200
    assert "who were readmitted:" in content(data) and "%" in content(data)
    assert "discrete Laplace" in data["privacy"]["basis"]
    assert data["privacy"]["epsilon"] == 2.0


async def test_a_phi_node_needs_fdp_privacy(aiohttp_client: Client) -> None:
    client, st = await node(aiohttp_client)
    status, headers, data = await chat(client, body())
    assert status == 400
    assert data["error"]["param"] == "fdp_privacy" and "fdp_privacy" in data["error"]["message"]
    assert "X-FDP-Privacy-Epsilon" not in headers
    assert st.releases == 0


@pytest.mark.parametrize(
    ("fdp_privacy", "param"),
    [
        ("yes", "fdp_privacy"),
        (privacy(0.0), "fdp_privacy.epsilon"),
        (privacy(-1.0), "fdp_privacy.epsilon"),
        (privacy(True), "fdp_privacy.epsilon"),
        (privacy("1.0"), "fdp_privacy.epsilon"),
        (privacy(5e-324), "fdp_privacy.epsilon"),
        ({"delta": 0.0, "purpose": "release"}, "fdp_privacy.epsilon"),
        (privacy(1.0, delta=1.5), "fdp_privacy.delta"),
        (privacy(1.0, purpose="exfiltrate"), "fdp_privacy.purpose"),
    ],
)
async def test_bad_privacy_requests_are_400_naming_the_field(
    aiohttp_client: Client, fdp_privacy: Any, param: str
) -> None:
    client, st = await node(aiohttp_client)
    status, _, data = await chat(client, body(fdp_privacy=fdp_privacy))
    assert status == 400, data
    assert data["error"]["param"] == param
    assert st.releases == 0


async def test_a_question_outside_the_family_is_422_and_spends_nothing(aiohttp_client: Client) -> None:
    client, _ = await node(aiohttp_client)
    status, headers, data = await chat(
        client, body("hypertension: first-line treatment?", fdp_privacy=privacy())
    )
    assert status == 422
    assert data["error"] == {
        "type": "invalid_request_error",
        "code": "question_not_supported",
        "message": data["error"]["message"],
    }
    assert "most common first-line treatment" in data["error"]["message"]
    assert "X-FDP-Privacy-Epsilon" not in headers and "privacy" not in data
    s = await stats(client)
    assert s["completions"] == 1 and s["failures"] == 0 and s["releases"] == 0
    assert s["refusals"] == {"question_not_supported": 1}


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "patient-stats"},
        {"messages": "hi", "fdp_privacy": privacy()},
        {"messages": [{"role": "assistant", "content": "hi"}], "fdp_privacy": privacy()},
        [1, 2],
    ],
)
async def test_a_body_without_a_user_message_is_400(aiohttp_client: Client, payload: Any) -> None:
    client, _ = await node(aiohttp_client)
    status, _, data = await chat(client, payload)
    assert status == 400 and data["error"]["param"] == "messages"
    assert (await stats(client))["refusals"] == {"invalid_request": 1}


# --- PHI node: consensus votes -------------------------------------------------------------


async def test_a_phi_vote_is_the_option_matching_the_true_answer(aiohttp_client: Client) -> None:
    client, st = await node(aiohttp_client, seed=1, hospital="hospital-a")
    truth = dd.true_answer(st.patient_table, dd.TreatmentQuestion(HYPERTENSION))
    options = [t.upper() + "." if t == truth else t for t in HYPERTENSION.treatments]  # normalised match
    status, headers, data = await chat(client, vote(options))
    assert status == 200
    assert content(data) == truth.upper() + "."
    assert data["privacy"]["epsilon"] == 0.0 and data["privacy"]["delta"] == 0.0
    assert float(headers["X-FDP-Privacy-Epsilon"]) == 0.0
    assert "GNMax" in data["privacy"]["basis"]
    assert st.votes == 1 and st.releases == 0


async def test_a_phi_vote_abstains_when_no_option_matches(aiohttp_client: Client) -> None:
    client, st = await node(aiohttp_client, seed=1, hospital="hospital-a")
    truth = dd.true_answer(st.patient_table, dd.TreatmentQuestion(HYPERTENSION))
    options = [t for t in HYPERTENSION.treatments if t != truth]
    status, _, data = await chat(client, vote(options))
    assert status == 200 and content(data) == ABSTAIN


async def test_a_phi_vote_outside_the_family_is_422(aiohttp_client: Client) -> None:
    client, _ = await node(aiohttp_client)
    status, _, data = await chat(client, vote(["yes", "no"], "is it raining?"))
    assert status == 422 and data["error"]["code"] == "question_not_supported"


@pytest.mark.parametrize("options", [None, "a", ["only one"], ["a", "A."], ["a", ""], ["a", 3]])
async def test_a_vote_needs_valid_options(aiohttp_client: Client, options: Any) -> None:
    client, _ = await node(aiohttp_client)
    status, _, data = await chat(client, vote(options))
    assert status == 400 and data["error"]["param"] == "fdp_options"


# --- attack knobs ------------------------------------------------------------------------


async def test_over_report_multiplies_the_reported_epsilon(aiohttp_client: Client) -> None:
    client, _ = await node(aiohttp_client, over_report=3.0)
    _, headers, data = await chat(client, body(fdp_privacy=privacy(0.5)))
    assert data["privacy"]["epsilon"] == 1.5 and float(headers["X-FDP-Privacy-Epsilon"]) == 1.5


async def test_no_report_omits_the_report(aiohttp_client: Client) -> None:
    client, _ = await node(aiohttp_client, no_report=True)
    status, headers, data = await chat(client, body(fdp_privacy=privacy(0.5)))
    assert status == 200 and "privacy" not in data
    assert not any(h.lower().startswith("x-fdp-privacy") for h in headers)


async def test_vote_text_answers_a_secret_to_every_vote(aiohttp_client: Client) -> None:
    secret = "SECRET-H4: patient Jane Roe (MRN 998877)"
    client, _ = await node(aiohttp_client, vote_text=secret)
    for text in (TREATMENT_Q, "not a question of the family"):
        status, _, data = await chat(client, vote(list(HYPERTENSION.treatments), text))
        assert status == 200 and content(data) == secret
    _, _, data = await chat(client, body(fdp_privacy=privacy(1.0)))  # releases are unaffected
    assert secret not in content(data)


# --- public node -------------------------------------------------------------------------


async def test_a_public_node_answers_from_its_table_at_zero_epsilon(aiohttp_client: Client) -> None:
    client, _ = await node(aiohttp_client, data_class="public")
    for payload in (
        body("hypertension?", model=None),  # no fdp_privacy needed
        body("hypertension?", model=None, fdp_privacy={**privacy(0.0), "mechanism": "none"}),
    ):
        status, headers, data = await chat(client, payload)
        assert status == 200
        assert "thiazide" in content(data)
        assert data["privacy"] == {"epsilon": 0.0, "delta": 0.0, "mechanism": "none", "basis": PUBLIC_BASIS}
        assert float(headers["X-FDP-Privacy-Epsilon"]) == 0.0
        assert headers["X-FDP-Privacy-Mechanism"] == "none"
        assert data["model"] == "medical-guidelines"


async def test_a_public_vote_is_the_option_its_answer_names_or_abstain(aiohttp_client: Client) -> None:
    client, _ = await node(aiohttp_client, data_class="public")
    _, _, data = await chat(client, vote(["Metformin", "Insulin", "SGLT2 inhibitor"], "diabetes?"))
    assert content(data) == "Metformin" and data["privacy"]["basis"] == PUBLIC_BASIS
    # hypertension's answer names several options: no single match, abstain
    _, _, data = await chat(client, vote(["thiazide", "ACE inhibitor"], "hypertension?"))
    assert content(data) == ABSTAIN
    _, _, data = await chat(client, vote(["yes", "no"], "what is the weather"))
    assert content(data) == ABSTAIN


# --- the rest of the app -----------------------------------------------------------------


async def test_health_stats_and_simulated_failures(aiohttp_client: Client) -> None:
    client, st = await node(aiohttp_client, failure_rate=1.0)
    status, _, data = await chat(client, body(fdp_privacy=privacy()))
    assert status == 503 and data["error"]["type"] == "demo_failure"
    assert (await stats(client))["failures"] == 1
    st.healthy = False
    assert (await client.get("/health")).status == 503


def test_demo_state_defaults_to_a_phi_node_with_a_pure_dp_mechanism() -> None:
    st = DemoState(name="x")
    assert (st.data_class, st.mechanism, st.over_report, st.no_report, st.vote_text) == (
        "phi",
        "pure_dp",
        1.0,
        False,
        None,
    )
    assert st.patient_table.hospital == "x"
    with pytest.raises(ValueError, match="data_class"):
        DemoState(name="x", data_class="secret")


def test_the_cli_refuses_a_bad_data_class_or_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo-node", "--port", "1", "--name", "x", "--data-class", "private"])
    assert "--data-class" in capsys.readouterr().err
    assert main(["demo-node", "--port", "1", "--name", "x", "--patients", "5"]) == 2
    assert "--patients" in capsys.readouterr().err
