"""The queue vocabulary: `Job` and its wire format, `decode_job`, choosing an implementation by URL, `safe_url`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from miniagent.errors import OptionalDependencyError, QueueUnavailable, UserError
from miniagent.queue import (
    DEFAULT_QUEUE_NAME,
    Delivery,
    Job,
    JobQueue,
    decode_job,
    default_queue_url,
    open_queue,
    queue_kind,
    safe_url,
)
from miniagent.queue._base import unavailable
from miniagent.queue._sqlite import SQLiteQueue
from miniagent.settings import Settings

from .conftest import make_job


def _body(**changes: Any) -> bytes:
    data = json.loads(make_job(1).to_bytes())
    data.update(changes)
    return json.dumps(data).encode()


def test_a_job_round_trips_through_its_bytes() -> None:
    job = Job(
        run_id="r1",
        tenant_id="t1",
        user_id="u1",
        agent="echo",
        thread_id="th1",
        prompt="ünïcode ✓\n" * 3,
        correlation_id="c1",
        key_id="k1",
        job_id="j1",
        enqueued_at=12.5,
    )
    assert decode_job(job.to_bytes()) == job
    assert json.loads(job.to_bytes()) == {
        "v": 1,
        "run_id": "r1",
        "tenant_id": "t1",
        "user_id": "u1",
        "agent": "echo",
        "thread_id": "th1",
        "prompt": "ünïcode ✓\n" * 3,
        "correlation_id": "c1",
        "key_id": "k1",
        "job_id": "j1",
        "enqueued_at": 12.5,
    }
    assert job.idempotency_key == "r1"


def test_a_job_has_defaults_for_its_own_id_and_time() -> None:
    first, second = make_job(1), make_job(1)
    assert first.job_id != second.job_id and len(first.job_id) == 32
    assert first.enqueued_at > 1_600_000_000
    assert (first.thread_id, first.correlation_id, first.key_id) == (None, None, None)
    continued = make_job(2, prompt=None)
    assert decode_job(continued.to_bytes()) == continued
    assert decode_job(_body(enqueued_at=7)).enqueued_at == 7.0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"run_id": ""}, "run_id"),
        ({"tenant_id": "x" * 201}, "tenant_id"),
        ({"user_id": ""}, "user_id"),
        ({"agent": ""}, "agent"),
        ({"job_id": ""}, "job_id"),
        ({"thread_id": "x" * 201}, "thread_id"),
        ({"correlation_id": "x" * 201}, "correlation_id"),
        ({"key_id": "x" * 201}, "key_id"),
        ({"prompt": "x" * 1_000_001}, "prompt"),
    ],
)
def test_a_job_with_a_bad_field_is_refused(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(UserError, match=f"`{field}`"):
        make_job(1, **changes)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xff\xfe", "not a JSON job"),
        (b"{not json", "not a JSON job"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (_body(v=2), "unknown job version 2"),
        (_body(v=None), "unknown job version None"),
        (_body(enqueued_at="yesterday"), "`enqueued_at` must be a number"),
        (_body(enqueued_at=True), "`enqueued_at` must be a number"),
        (_body(enqueued_at=None), "`enqueued_at` must be a number"),
        (_body(run_id=""), "`run_id`"),
        (_body(user_id=5), "`user_id` must be a string"),
        (_body(prompt=["a list"]), "`prompt` must be a string"),
        (_body(thread_id={"a": 1}), "`thread_id` must be a string"),
        (_body(agent=None), "`agent`"),
    ],
)
def test_a_body_that_is_not_a_job_is_a_value_error(body: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_job(body)


def test_a_body_missing_a_field_is_a_value_error() -> None:
    data = json.loads(make_job(1).to_bytes())
    del data["agent"]
    with pytest.raises(ValueError, match="agent"):
        decode_job(json.dumps(data).encode())
    data = json.loads(make_job(1).to_bytes())
    del data["enqueued_at"]
    with pytest.raises(ValueError, match="enqueued_at"):
        decode_job(json.dumps(data).encode())


def test_optional_fields_missing_from_a_body_are_none() -> None:
    job = make_job(1, thread_id="th1", correlation_id="c1", key_id="k1")
    data = json.loads(job.to_bytes())
    for name in ("thread_id", "prompt", "correlation_id", "key_id"):
        del data[name]
    decoded = decode_job(json.dumps(data).encode())
    assert (decoded.thread_id, decoded.prompt, decoded.correlation_id, decoded.key_id) == (None, None, None, None)
    assert (decoded.run_id, decoded.job_id, decoded.enqueued_at) == (job.run_id, job.job_id, job.enqueued_at)


def test_unknown_keys_of_a_body_are_ignored() -> None:
    job = make_job(1)
    assert decode_job(_body(job_id=job.job_id, enqueued_at=job.enqueued_at, extra="later versions")) == job


def test_a_delivery_starts_unsettled() -> None:
    delivery = Delivery(job=None, body=b"x", deliveries=1, error="bad")
    assert (delivery.token, delivery.settled) == (None, False)
    assert delivery != Delivery(job=None, body=b"x", deliveries=1, error="bad")  # identity: one per delivery


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("sqlite:///queue.db", "sqlite"),
        ("SQLite+aiosqlite:////abs/queue.db", "sqlite"),
        ("amqp://guest:guest@localhost:5672/", "rabbitmq"),
        ("amqps://host/vhost", "rabbitmq"),
        ("redis://localhost:6379/0", "redis"),
        ("rediss://host", "redis"),
        ("unix:///run/redis.sock", "redis"),
    ],
)
def test_the_url_scheme_names_the_implementation(url: str, kind: str) -> None:
    assert queue_kind(url) == kind


@pytest.mark.parametrize("url", ["postgresql://u:pw@host/db", "queue.db", "", "kafka://broker"])
def test_an_unknown_scheme_is_a_user_error(url: str) -> None:
    with pytest.raises(UserError, match="MINIAGENT_QUEUE_URL must start with") as caught:
        queue_kind(url)
    assert ":pw@" not in str(caught.value)
    with pytest.raises(UserError, match="MINIAGENT_QUEUE_URL"):
        open_queue(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:s3cret@host:5672/vhost", "amqp://guest:***@host:5672/vhost"),
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:////var/lib/queue.db", "sqlite:////var/lib/queue.db"),
        ("amqp://[::1", "(unparseable URL)"),
    ],
)
def test_safe_url_hides_the_password(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_unavailable_names_the_queue_the_cause_and_the_fix() -> None:
    error = unavailable("redis", "redis://:s3cret@host/0", ConnectionError("refused"), "Is Redis running?")
    assert isinstance(error, QueueUnavailable)
    assert str(error) == (
        "The redis job queue at redis://:***@host/0 is unavailable (ConnectionError: refused). Is Redis running?"
    )
    assert "(timed out)" in str(unavailable("redis", "redis://h", "timed out", "Check."))


@pytest.mark.parametrize(
    "options",
    [
        {"lease_s": 0},
        {"lease_s": -1.0},
        {"lease_s": float("nan")},
        {"lease_s": float("inf")},
        {"max_deliveries": 0},
        {"max_deliveries": True},
        {"max_deliveries": 2.0},
        {"name": ""},
        {"name": "n" * 201},
    ],
)
def test_open_queue_refuses_options_out_of_range(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(UserError):
        open_queue(f"sqlite:///{tmp_path / 'q.db'}", **options)


def test_open_queue_gives_an_sqlite_queue_with_its_options(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite:///{tmp_path / 'q.db'}", lease_s=12.0, max_deliveries=3, poll_interval_s=0.5)
    assert isinstance(queue, SQLiteQueue) and isinstance(queue, JobQueue)
    assert (queue.kind, queue.name, queue.lease_s, queue.max_deliveries) == ("sqlite", DEFAULT_QUEUE_NAME, 12.0, 3)
    assert (queue.poll_interval_s, queue.path) == (0.5, tmp_path / "q.db")
    with pytest.raises(TypeError):
        open_queue(f"sqlite:///{tmp_path / 'q.db'}", no_such_option=1)


@pytest.mark.parametrize(
    ("url", "module", "extra"), [("amqp://h/", "aio_pika", "rabbitmq"), ("redis://h", "redis", "redis")]
)
def test_a_broker_without_its_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(OptionalDependencyError, match=rf"pip install 'miniagent\[{extra}\]'"):
        open_queue(url)


def test_the_default_queue_is_a_file_beside_the_store(tmp_path: Path) -> None:
    assert default_queue_url(Settings(data_dir=tmp_path)) == f"sqlite:///{tmp_path / 'queue.db'}"
    assert default_queue_url(Settings(queue_url="redis://h:6379/0", data_dir=tmp_path)) == "redis://h:6379/0"
    assert isinstance(open_queue(default_queue_url(Settings(data_dir=tmp_path))), SQLiteQueue)
