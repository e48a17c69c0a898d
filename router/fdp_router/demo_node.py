"""A DEMO hospital node: a small OpenAI-compatible server that implements the node side of
the router <-> node privacy contract (docs/privacy.md).

Not a model. ``fdp-router demo-node`` runs it for the standalone quickstart, the tests and
the benchmarks. A node runs as one kind (``data_class``):

- ``phi`` (default, demo model ``patient-stats``): holds a synthetic patient table generated
  from ``(seed, hospital)`` and answers the question family of ``demo_data`` through a
  record-level pure epsilon-DP mechanism at the epsilon the router sends in ``fdp_privacy``
  (purpose ``release``), reporting what it spent (body ``privacy`` + ``X-FDP-Privacy-*``
  headers). For a consensus vote (purpose ``consensus_vote`` with ``fdp_options``) it answers
  the option matching its TRUE answer (or ``abstain``): the router is the trusted aggregator
  and adds the GNMax noise. Other questions: 422 ``question_not_supported``, nothing spent.
  A request without ``fdp_privacy`` is a 400 naming it.
- ``public`` (demo model ``medical-guidelines``): a keyword table of general medical answers
  (no patient data), 0 epsilon, ``privacy.basis: "public data"``.

Attack knobs for the tests (never used by a real hospital): ``over_report`` multiplies the
reported epsilon, ``no_report`` omits the report, ``vote_text`` answers that text to every
consensus vote. Optional ``delay`` and ``failure_rate`` (deterministic: every k-th request
fails) simulate slow or flaky hospitals; with a certificate it serves HTTPS and can require
client certificates (mTLS). ``GET /stats`` counts completions (every request received, so
tests can prove a refused request never reached a node), failures and refusals.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from fdp_router.config import check_options, normalize_answer
from fdp_router.demo_data import (
    CONDITIONS,
    DEFAULT_PATIENTS,
    MechanismError,
    PatientTable,
    parse_question,
    release,
    true_answer,
)

DEMO_TABLE: dict[str, str] = {
    "hypertension": "First-line treatment for hypertension is lifestyle change plus a thiazide, "
    "ACE inhibitor, ARB or calcium-channel blocker, per current guidelines.",
    "diabetes": "Metformin is the usual first-line drug for type 2 diabetes, with diet and exercise.",
    "sepsis": "Suspected sepsis: take cultures, give broad-spectrum antibiotics within an hour, and fluids.",
    "fever": "Fever in adults: treat the cause; paracetamol for comfort; seek care above 39.5 C "
    "or with red flags.",
    "asthma": "Asthma control: inhaled corticosteroid as the base, a reliever as needed, "
    "check inhaler technique.",
}
DEFAULT_ANSWER = "This demo node has no answer for that question in its local table."
ABSTAIN = "abstain"
DATA_CLASSES = ("phi", "public")
MECHANISMS = ("pure_dp",)
PURPOSES = ("release", "consensus_vote")
DEMO_MODELS = {"phi": "patient-stats", "public": "medical-guidelines"}
PUBLIC_BASIS = "public data"
VOTE_BASIS = "consensus vote to the router's GNMax aggregator; nothing released by this node"
FAMILY = (
    "'most common first-line treatment for <condition> among our patients' or "
    "'share of patients with <condition> who <improved|were readmitted|were transferred to "
    "intensive care|died>', <condition> one of: " + ", ".join(c.name for c in CONDITIONS)
)


@dataclass
class DemoState:
    name: str
    delay: float = 0.0
    failure_rate: float = 0.0
    table: dict[str, str] = field(default_factory=lambda: dict(DEMO_TABLE))  # public answers
    data_class: str = "phi"
    seed: int = 0
    hospital: str | None = None  # whose synthetic patients (default: name); same hospital, same table
    patients: int = DEFAULT_PATIENTS
    mechanism: str = "pure_dp"
    over_report: float = 1.0  # attack knob: multiply the reported epsilon
    no_report: bool = False  # attack knob: report nothing
    vote_text: str | None = None  # attack knob: answer this to every consensus vote
    stream_chunk_words: int = 4  # a streamed answer's words per chunk
    completions: int = 0
    failures: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    releases: int = 0
    votes: int = 0
    health_checks: int = 0
    healthy: bool = True
    _patient_table: PatientTable | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.data_class not in DATA_CLASSES:
            raise ValueError(f"data_class: must be one of {DATA_CLASSES}, got {self.data_class!r}")
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism: must be one of {MECHANISMS}, got {self.mechanism!r}")

    @property
    def patient_table(self) -> PatientTable:
        """The synthetic table, built on first use (a PHI node only needs it)."""
        if self._patient_table is None:
            self._patient_table = PatientTable(self.hospital or self.name, self.seed, self.patients)
        return self._patient_table

    def refuse(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1


DEMO = web.AppKey("demo", DemoState)


class Refusal(Exception):
    """A request answered with an error and nothing spent."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def response(self) -> web.Response:
        err: dict[str, Any] = {"type": "invalid_request_error", "code": self.code, "message": self.message}
        if self.param:
            err["param"] = self.param
        return web.json_response({"error": err}, status=self.status)


def bad_request(param: str, message: str) -> Refusal:
    return Refusal(400, "invalid_request", f"{param}: {message}", param)


@dataclass(frozen=True, slots=True)
class PrivacyRequest:
    """The router's ``fdp_privacy`` (and ``fdp_options`` for a vote), validated."""

    epsilon: float
    delta: float
    mechanism: str
    purpose: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    epsilon: float
    delta: float
    mechanism: str
    basis: str


def answer_for(table: dict[str, str], text: str) -> str:
    low = text.lower()
    for key in sorted(table):
        if key in low:
            return table[key]
    return DEFAULT_ANSWER


def _number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(param, f"must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise bad_request(param, f"must be a finite number >= 0, got {v!r}")
    return v


def parse_privacy(body: dict[str, Any]) -> PrivacyRequest | None:
    """The router's request (the body is authoritative; the X-FDP-* request headers only
    mirror it), or None when absent. Refusal(400) naming the field for anything malformed."""
    raw = body.get("fdp_privacy")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad_request("fdp_privacy", "must be an object")
    eps = _number(raw.get("epsilon"), "fdp_privacy.epsilon")
    delta = _number(raw.get("delta", 0.0), "fdp_privacy.delta")
    if delta >= 1.0:
        raise bad_request("fdp_privacy.delta", f"must be < 1, got {delta!r}")
    mechanism = raw.get("mechanism", "none")
    if not isinstance(mechanism, str):
        raise bad_request("fdp_privacy.mechanism", "must be a string")
    purpose = raw.get("purpose", "release")
    if purpose not in PURPOSES:
        raise bad_request("fdp_privacy.purpose", f"must be one of {PURPOSES}, got {purpose!r}")
    options: tuple[str, ...] = ()
    if purpose == "consensus_vote":
        try:
            options = check_options(body.get("fdp_options"), "fdp_options")  # type: ignore[arg-type]
        except ValueError as exc:
            raise bad_request("fdp_options", str(exc).removeprefix("fdp_options: ")) from None
    return PrivacyRequest(eps, delta, mechanism, purpose, options)


def matching_option(options: tuple[str, ...], answer: str) -> str:
    """The option equal to `answer` after normalisation, else ABSTAIN."""
    norm = normalize_answer(answer)
    return next((o for o in options if normalize_answer(o) == norm), ABSTAIN)


def public_vote(options: tuple[str, ...], answer: str) -> str:
    """A public node's vote: the option equal to its table answer; else the only option its
    answer names (as a phrase); else (and when its table has no answer) ABSTAIN."""
    exact = matching_option(options, answer)
    if exact != ABSTAIN or answer == DEFAULT_ANSWER:
        return exact
    text = _words(answer)
    named = [o for o in options if _words(o) in text]
    return named[0] if len(named) == 1 else ABSTAIN


def _words(text: str) -> str:
    """Normalised text as space-separated words, padded, for whole-phrase containment."""
    return " " + " ".join(re.sub(r"[^\w\-]+", " ", normalize_answer(text)).split()) + " "


def answer_phi(st: DemoState, last: str, priv: PrivacyRequest) -> Answer:
    if priv.purpose == "consensus_vote" and st.vote_text is not None:
        return Answer(st.vote_text, 0.0, 0.0, st.mechanism, VOTE_BASIS)
    q = parse_question(last)
    if q is None:
        raise Refusal(
            422,
            "question_not_supported",
            f"this PHI node answers only {FAMILY} (under record-level DP); nothing was spent",
        )
    if priv.purpose == "consensus_vote":
        return Answer(
            matching_option(priv.options, true_answer(st.patient_table, q)),
            0.0,
            0.0,
            st.mechanism,
            VOTE_BASIS,
        )
    if priv.epsilon <= 0:
        raise bad_request("fdp_privacy.epsilon", "must be > 0 for a release from patient data")
    try:
        rel = release(st.patient_table, q, priv.epsilon)
    except MechanismError as exc:
        raise bad_request(f"fdp_privacy.{exc.field}", str(exc).removeprefix(f"{exc.field}: ")) from None
    # Report the requested epsilon: the mechanism's OpenDP privacy map certifies <= it.
    return Answer(rel.sentence, priv.epsilon, 0.0, st.mechanism, rel.basis)


def answer_public(st: DemoState, last: str, priv: PrivacyRequest | None) -> Answer:
    text = answer_for(st.table, last)
    if priv is not None and priv.purpose == "consensus_vote":
        text = st.vote_text if st.vote_text is not None else public_vote(priv.options, text)
    return Answer(text, 0.0, 0.0, "none", PUBLIC_BASIS)


def _last_user_message(body: Any) -> str:
    if not isinstance(body, dict):
        raise bad_request("messages", "the body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise bad_request("messages", "required: a list of chat messages")
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    raise bad_request("messages", "needs a user message with text content")


async def _chat(request: web.Request) -> web.StreamResponse:
    st = request.app[DEMO]
    st.completions += 1
    try:
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("body", "not valid JSON") from None
        last = _last_user_message(body)
        priv = parse_privacy(body)
        phi = st.data_class == "phi"
        if phi and priv is None:
            raise bad_request("fdp_privacy", "required: this node answers from patient data (PHI)")
        if st.delay:
            await asyncio.sleep(st.delay)
        if st.failure_rate > 0 and (st.completions * st.failure_rate) % 1.0 < st.failure_rate - 1e-12:
            st.failures += 1
            return web.json_response(
                {"error": {"type": "demo_failure", "message": "simulated failure"}}, status=503
            )
        ans = answer_phi(st, last, priv) if phi and priv is not None else answer_public(st, last, priv)
    except Refusal as r:
        st.refuse(r.code)
        return r.response()
    if priv is not None and priv.purpose == "consensus_vote":
        st.votes += 1
    else:
        st.releases += 1
    if body.get("stream") is True:
        return await _stream(request, st, body, last, ans)
    return _completion(st, body, last, ans)


def _report_headers(st: DemoState, ans: Answer) -> dict[str, str]:
    if st.no_report:
        return {}
    return {
        "X-FDP-Privacy-Epsilon": repr(ans.epsilon * st.over_report),
        "X-FDP-Privacy-Delta": repr(ans.delta),
        "X-FDP-Privacy-Mechanism": ans.mechanism,
    }


async def _stream(
    request: web.Request, st: DemoState, body: dict[str, Any], last: str, ans: Answer
) -> web.StreamResponse:
    """The answer as OpenAI streams it (``stream: true``): the privacy report in the headers,
    before the first byte, then the text in chunks of `stream_chunk_words` words, the finish
    chunk (with the ``privacy`` object), a usage chunk when ``stream_options.include_usage``,
    and ``data: [DONE]``."""
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **_report_headers(st, ans)}
    )
    await resp.prepare(request)
    base = {
        "id": f"demo-{st.name}-{st.completions}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model") or DEMO_MODELS[st.data_class],
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        doc = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return b"data: " + json.dumps(doc).encode() + b"\n\n"

    words = ans.text.split(" ")
    n = max(1, st.stream_chunk_words)
    out = [chunk({"role": "assistant", "content": ""})]
    for i in range(0, len(words), n):
        piece = " ".join(words[i : i + n])
        out.append(chunk({"content": piece if i == 0 else " " + piece}))
    privacy = {} if st.no_report else {"privacy": _privacy_body(st, ans)}
    out.append(chunk({}, "stop", **privacy))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        prompt, answer = len(last.split()), len(ans.text.split())
        usage = {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}
        out.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    for data in out:
        await resp.write(data)
    await resp.write_eof()
    return resp


def _privacy_body(st: DemoState, ans: Answer) -> dict[str, Any]:
    return {
        "epsilon": ans.epsilon * st.over_report,
        "delta": ans.delta,
        "mechanism": ans.mechanism,
        "basis": ans.basis,
    }


def _completion(st: DemoState, body: dict[str, Any], last: str, ans: Answer) -> web.Response:
    payload: dict[str, Any] = {
        "id": f"demo-{st.name}-{st.completions}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or DEMO_MODELS[st.data_class],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ans.text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": len(last.split()),
            "completion_tokens": len(ans.text.split()),
            "total_tokens": len(last.split()) + len(ans.text.split()),
        },
        "system_fingerprint": f"demo-node-{st.name}",
    }
    if not st.no_report:
        payload["privacy"] = _privacy_body(st, ans)
    return web.json_response(payload, headers=_report_headers(st, ans))


async def _health(request: web.Request) -> web.Response:
    st = request.app[DEMO]
    st.health_checks += 1
    if not st.healthy:
        return web.json_response({"status": "unhealthy", "node": st.name}, status=503)
    return web.json_response({"status": "ok", "node": st.name, "demo": True, "data_class": st.data_class})


async def _stats(request: web.Request) -> web.Response:
    st = request.app[DEMO]
    return web.json_response(
        {
            "node": st.name,
            "data_class": st.data_class,
            "completions": st.completions,
            "failures": st.failures,
            "refusals": dict(st.refusals),
            "releases": st.releases,
            "votes": st.votes,
        }
    )


def create_demo_app(state: DemoState) -> web.Application:
    app = web.Application()
    app[DEMO] = state
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/health", _health)
    app.router.add_get("/stats", _stats)
    return app


def server_ssl_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """Serving TLS; with `client_ca`, client certificates signed by it are REQUIRED (mTLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def load_table(path: str | None) -> dict[str, str]:
    if not path:
        return dict(DEMO_TABLE)
    data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError("table: must be a JSON object of keyword -> answer strings")
    return {k.lower(): v for k, v in data.items()}
