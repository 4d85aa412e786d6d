"""The RabbitMQ job queue: a durable quorum queue, persistent messages, publisher confirms, manual acks, prefetch.

Topology (for a queue named `miniagent.runs`, declared by every connection, idempotently):

- `miniagent.runs`: a durable quorum queue (`x-queue-type: quorum`, replicated on a cluster) with
  `x-delivery-limit: max_deliveries` and `x-dead-letter-exchange: miniagent.runs.dlx`. The worker dead-letters a
  job delivered more than `max_deliveries` times itself (recording it in the store first); the broker's delivery
  limit is the safety net for a job whose worker dies every time, before it can do that.
- `miniagent.runs.dlx` (a durable fanout exchange) and `miniagent.runs.dead` (a durable queue bound to it): rejected
  jobs and jobs over the delivery limit land there. The store's dead-letter table is the record of failed jobs; this
  queue only keeps the messages (see [`dead_count`][miniagent.queue._rabbitmq.RabbitMQQueue.dead_count]).
- `miniagent.runs.delay.<ms>`: where `release(delay_s > 0)` parks a job. Delays are rounded up to a power of two
  (250 ms, 500 ms, 1 s ... 4096 s, the most), one durable classic queue per level with that TTL for all its
  messages (`x-message-ttl`), so messages leave in the order they entered and a long delay never holds up a short
  one (per-message TTLs expire only at a queue's head). Expired messages are dead-lettered back into the main queue
  through the default exchange. A level's queue deletes itself (`x-expires`) once unused for twice its delay plus a
  minute; a release declares it again first. Jobs waiting there are not counted by `depth()` until they are due.

Releasing publishes a copy of the message (confirmed by the broker) to the queue's tail, or to a delay queue, then
acks the original. The copy carries the job's delivery count in its `x-miniagent-deliveries` header. A release is
thereby visible to `depth()` when it returns (a `basic.nack` is not acknowledged by the broker, and a quorum queue's
message count would lag behind it), counts the same on every RabbitMQ version, and leaves the broker's delivery
limit to what it is for: deliveries lost with their consumer.

Delivery counting: `deliveries` is 1 + `x-miniagent-deliveries` (the deliveries before the last release) + the
broker's count of earlier deliveries of this message: `x-acquired-count` (RabbitMQ 4.3+) or else `x-delivery-count`
(a quorum queue's count of returns: a consumer's channel closing with the message unsettled). A message the broker
sent to a consumer counts as delivered even if it was still in that consumer's prefetch buffer, unread, when the
consumer went away.

Connections: one for publishing (enqueue, releases, `depth`, `check`), opened lazily, and one per `consume`
iterator, so a blocked publisher never holds up acks. They are plain connections with their own reconnect loops
(exponential backoff, no give-up for consumers; `publish_timeout_s` for publishes) rather than aio-pika's robust
connection, so a consumer never ends by itself during a long outage and every delivery knows the channel it came
on: settling a delivery whose channel closed (the broker restarted, the connection dropped, `close()`) is a no-op
logged at debug, because the broker already put the message back and delivers it again. When a `consume` iterator
ends (cancelled, broken out of), its consumer is cancelled and what the broker had sent that was never handed out
goes back, but its connection stays open until the deliveries it handed out are settled (or `close()`), so a
worker that stops consuming can still finish and ack its runs.

`enqueue` returns once the broker confirmed the message (publisher confirms). An unroutable message (`mandatory`:
the queue was deleted; a new connection declares it again) or a nack is retried, and so is a confirmation lost to a
dropped connection, which may enqueue the job twice: the run's idempotency makes the second delivery harmless.

Dead peers: the connection heartbeat is `lease_s / 2` (5 to 60 s) unless the URL sets `?heartbeat=`, so the broker
notices a consumer that vanished without closing its socket (a host that died, a partition) within about `lease_s`,
and delivers its unsettled jobs again. A consumer that stays connected but never settles keeps them until the
broker's `consumer_timeout` (30 minutes by default).
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog
from aiormq.exceptions import (
    AMQPError,
    AuthenticationError,
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
    ConnectionNotAllowed,
    IncompatibleProtocolError,
    InvalidFrameError,
    ProbableAuthenticationError,
)

from ..errors import QueueUnavailable, UserError
from ._base import Delivery, Job, QueueKind, decode_job, safe_url, unavailable

if TYPE_CHECKING:
    from aio_pika import Message
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

__all__ = ["RabbitMQQueue"]

log = structlog.get_logger("miniagent.queue")

_HINT = "Start RabbitMQ or fix MINIAGENT_QUEUE_URL (amqp://user:password@host:5672/vhost)."
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0
_CLOSE_TIMEOUT_S = 2.0  # closing a connection to a broker that went silent does not hold up shutdown
_DELAY_LEVELS_MS: Final[tuple[int, ...]] = tuple(250 << i for i in range(15))  # 250 ms ... 4096 s
_DELIVERIES_HEADER = "x-miniagent-deliveries"
# Set by the broker on a delivery; a delayed release's copy starts without them.
_BROKER_HEADERS = frozenset(
    {"x-delivery-count", "x-acquired-count", "x-death"}
    | {f"x-{when}-death-{what}" for when in ("first", "last") for what in ("exchange", "queue", "reason")}
)
_MAX_REASON = 1_000

_VHOST_HINT = "The broker refused to open the vhost: check that the URL's vhost exists and the user may use it."
# The broker refused for a reason that retrying will not fix: raised at once, with what to change.
_PERMANENT: tuple[tuple[type[BaseException], str], ...] = (
    (
        AuthenticationError,
        "The broker refused the login: check the user and password in MINIAGENT_QUEUE_URL.",
    ),
    (
        ProbableAuthenticationError,
        "The broker refused the login: check the user and password in MINIAGENT_QUEUE_URL.",
    ),
    (ConnectionNotAllowed, _VHOST_HINT),
    (
        ChannelAccessRefused,
        "The user may not declare or use these queues: grant it configure/write/read permissions on the vhost.",
    ),
    (
        ChannelPreconditionFailed,
        "The queue exists with other settings (another `max_deliveries`, or not a quorum queue): open it with the "
        "same settings, or delete it (`rabbitmqctl delete_queue <name>`) when it holds no job you need.",
    ),
    (IncompatibleProtocolError, "The server at this address does not speak AMQP 0-9-1: check the URL's port."),
)
# The broker cannot be reached right now (down, restarting, the connection dropped): wait and retry.
_DOWN: tuple[type[BaseException], ...] = (AMQPError, ConnectionError, OSError, TimeoutError, ChannelInvalidStateError)


def _refused_vhost(exc: BaseException) -> bool:
    # aiormq reports the broker's `Connection.Close` in answer to `Connection.Open` (NOT_ALLOWED: no such vhost, or
    # no access to it) as an unexpected frame, without the broker's text.
    return isinstance(exc, InvalidFrameError) and "Connection.Close" in str(exc)


def _permanent_hint(exc: BaseException) -> str | None:
    if _refused_vhost(exc):
        return _VHOST_HINT
    for kind, hint in _PERMANENT:
        if isinstance(exc, kind):
            return hint
    return None


def _seconds(option: str, value: object, *, zero: bool) -> float:
    """`value` as seconds: a finite number > 0 (or >= 0 with `zero`), else a `UserError` naming `option`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value >= 0 if zero else value > 0):
        raise UserError(f"`{option}` must be a finite number of seconds {'>=' if zero else '>'} 0, got {value!r}.")
    if not math.isfinite(value):
        raise UserError(f"`{option}` must be a finite number of seconds, got {value!r}.")
    return float(value)


def _integer(option: str, value: object, low: int, high: int) -> int:
    """`value` as an integer from `low` to `high`, else a `UserError` naming `option`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"`{option}` must be an integer from {low} to {high}, got {value!r}.")
    return value


def _delay_level_ms(delay_s: float) -> int:
    """The delay queue's TTL for `delay_s`: the smallest level that is at least as long (or the longest)."""
    wanted = math.ceil(delay_s * 1000)
    return next((level for level in _DELAY_LEVELS_MS if level >= wanted), _DELAY_LEVELS_MS[-1])


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return max(0, value)


def _deliveries(message: AbstractIncomingMessage) -> int:
    """This delivery's number: 1 + the deliveries before the last release + the broker's count of earlier ones."""
    headers = message.headers or {}
    before = _count(headers.get(_DELIVERIES_HEADER)) or 0
    broker = _count(headers.get("x-acquired-count"))
    if broker is None:
        broker = _count(headers.get("x-delivery-count"))
    if broker is None:  # no counting header (not a quorum queue): all we know is whether it came before
        broker = 1 if message.redelivered else 0
    return before + broker + 1


def _stale(message: AbstractIncomingMessage) -> bool:
    """Whether the channel the message came on has closed (the broker put the message back)."""
    try:
        return message.channel.is_closed
    except ChannelInvalidStateError:
        return True


@dataclass(eq=False)
class _Token:
    """A delivery's handle: the message, and the queue and consumer it came from."""

    queue: RabbitMQQueue
    message: AbstractIncomingMessage
    consumer: _Consumer


@dataclass(eq=False)
class _Link:
    """A connection with one publisher-confirms channel, the topology declared on it."""

    connection: AbstractConnection
    channel: AbstractChannel
    queue: AbstractQueue

    @property
    def is_open(self) -> bool:
        return not (self.connection.is_closed or self.channel.is_closed)

    async def aclose(self) -> None:
        await _close(self.connection)


async def _close(connection: AbstractConnection) -> None:
    """Close `connection`, shielded from cancellation and bounded in time; errors are logged at debug."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT_S):
        try:
            await connection.close()
        except Exception as exc:  # closing a broken connection: nothing is left to do with it
            log.debug("queue_close_failed", kind="rabbitmq", error=repr(exc))


@dataclass(eq=False)
class _Consumer:
    """One `consume` iterator's connection and the messages the broker pushed to it, in order."""

    link: _Link
    pending: deque[AbstractIncomingMessage] = field(default_factory=deque)
    lost: bool = False
    """The channel closed (or the broker cancelled the consumer, or `close()` ran): reconnect or stop."""
    wakeup: anyio.Event = field(default_factory=anyio.Event)
    tag: str | None = None
    """The broker's consumer tag."""
    unsettled: int = 0
    """Deliveries handed out and not settled yet (they need this channel)."""
    retiring: bool = False
    """Its `consume` iterator ended: no more deliveries; the connection closes once the last one is settled."""

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        if self.retiring:  # sent before the broker saw our cancel: give it back
            with contextlib.suppress(*_DOWN):
                await message.nack(requeue=True)
            return
        self.pending.append(message)
        self.wakeup.set()

    def lose(self) -> None:
        self.lost = True
        self.wakeup.set()

    async def next(self) -> AbstractIncomingMessage | None:
        """The next message, or `None` once the channel is gone (the messages still buffered then went back)."""
        while True:
            if self.lost:
                return None
            if self.pending:
                return self.pending.popleft()
            await self.wakeup.wait()
            self.wakeup = anyio.Event()


class RabbitMQQueue:
    """A [`JobQueue`][miniagent.queue.JobQueue] on RabbitMQ (the `rabbitmq` extra); see the module docs.

    Example:
        ```python
        from miniagent.queue import open_queue

        queue = open_queue("amqp://guest:guest@localhost:5672/", name="miniagent.runs")  # connect() before use
        ```
    """

    kind: QueueKind = "rabbitmq"
    """Always `rabbitmq`."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        lease_s: float,
        max_deliveries: int,
        publish_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        """Describe the queue (nothing is connected until `connect()`).

        Args:
            url: `amqp://user:password@host:5672/vhost` (or `amqps://`); query parameters go to aio-pika (e.g.
                `?heartbeat=30`).
            name: The queue's name; `<name>.dlx`, `<name>.dead` and `<name>.delay.<ms>` go with it.
            lease_s: How soon a consumer that vanished without closing its connection loses its deliveries: the
                heartbeat is `lease_s / 2` (5 to 60 s) unless the URL sets one.
            max_deliveries: The quorum queue's delivery limit (`x-delivery-limit`): the broker dead-letters a
                message returned more often than this.
            publish_timeout_s: How long `enqueue` (and `release`, which publishes a copy) retries while the broker
                cannot take the message, before giving up.
            connect_timeout_s: How long one connection attempt, `check()` or `depth()` may take.

        Raises:
            UserError: the URL is not `amqp://`/`amqps://`, or an option is out of range.
        """
        from yarl import URL

        try:
            parsed = URL(url)
        except (TypeError, ValueError) as exc:
            raise UserError(f"The RabbitMQ queue URL {safe_url(str(url))!r} is not valid ({exc}). {_HINT}") from None
        if parsed.scheme not in ("amqp", "amqps") or not parsed.host:
            raise UserError(f"The RabbitMQ queue URL {safe_url(url)!r} must be amqp://host... or amqps://. {_HINT}")
        _name: object = name
        if not isinstance(_name, str) or not _name or len(_name) > 200:
            raise UserError(f"The queue's `name` must be a non-empty string of at most 200 characters, got {name!r}.")
        lease_s = _seconds("lease_s", lease_s, zero=False)
        publish_timeout_s = _seconds("publish_timeout_s", publish_timeout_s, zero=False)
        connect_timeout_s = _seconds("connect_timeout_s", connect_timeout_s, zero=False)
        max_deliveries = _integer("max_deliveries", max_deliveries, 1, 2**31 - 1)
        self.url: Final = url
        """The broker's URL (may hold a password: show it with `safe_url`)."""
        self.name: Final = name
        """The quorum queue the jobs go through."""
        self.lease_s: Final = float(lease_s)
        """Sets the heartbeat that detects vanished consumers (see the module docs)."""
        self.max_deliveries: Final = max_deliveries
        """The queue's delivery limit (the worker dead-letters a job delivered more often)."""
        self.publish_timeout_s: Final = float(publish_timeout_s)
        """How long a publish retries an unreachable broker."""
        self.connect_timeout_s: Final = float(connect_timeout_s)
        """How long one connection attempt, `check()` or `depth()` may take."""
        self.dead_letter_exchange: Final = f"{name}.dlx"
        """Where rejected jobs and jobs over the delivery limit go."""
        self.dead_queue: Final = f"{name}.dead"
        """The queue bound to the dead-letter exchange (it keeps the messages; the store keeps the record)."""
        if "heartbeat" not in parsed.query:
            parsed = parsed.update_query(heartbeat=str(int(min(60, max(5, lease_s / 2)))))
        self._amqp_url = parsed
        self._arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-delivery-limit": max_deliveries,
            "x-dead-letter-exchange": self.dead_letter_exchange,
        }
        self._publisher: _Link | None = None
        self._lock: anyio.Lock | None = None
        self._consumers: set[_Consumer] = set()
        self._closing: anyio.Event | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RabbitMQQueue({safe_url(self.url)!r}, name={self.name!r})"

    # --- connecting -------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UserError(f"The RabbitMQ job queue {self.name!r} is closed; open a new one with `open_queue(...)`.")
        if self._closing is None:
            self._closing = anyio.Event()
            self._lock = anyio.Lock()

    def _describe(self, exc: BaseException) -> str:
        """`exc` as `Type: message`, without the URL's password (broker messages may quote the URL)."""
        text = "the broker closed the connection" if _refused_vhost(exc) else f"{type(exc).__name__}: {exc}"
        password = self._amqp_url.password
        if password:
            from urllib.parse import quote

            for secret in {password, quote(password, safe="")}:
                text = text.replace(secret, "***")
        return text

    def _unavailable(self, exc: BaseException, hint: str | None = None) -> QueueUnavailable:
        return unavailable("RabbitMQ", self.url, self._describe(exc), hint or _permanent_hint(exc) or _HINT)

    async def _open_link(self, role: str) -> _Link:
        """A new connection and confirm channel, with the topology declared.

        Raises:
            QueueUnavailable: the broker refused for a reason retrying will not fix (login, vhost, permissions,
                a queue declared with other settings).
            Exception: one of `_DOWN`: the broker cannot be reached right now.
        """
        import aio_pika

        connection: AbstractConnection | None = None
        try:
            with anyio.fail_after(self.connect_timeout_s):
                connection = await aio_pika.connect(
                    self._amqp_url,
                    timeout=self.connect_timeout_s,
                    client_properties={"connection_name": f"miniagent {self.name} {role}"},
                )
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                queue = await self._declare(channel)
            return _Link(connection, channel, queue)
        except BaseException as exc:
            if connection is not None:
                await _close(connection)
            if _permanent_hint(exc) is not None:
                raise self._unavailable(exc) from exc
            raise

    async def _declare(self, channel: AbstractChannel) -> AbstractQueue:
        import aio_pika

        exchange = await channel.declare_exchange(self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        dead = await channel.declare_queue(self.dead_queue, durable=True)
        await dead.bind(exchange, routing_key="")
        return await channel.declare_queue(self.name, durable=True, arguments=self._arguments)

    async def _link(self) -> _Link:
        """The publishing connection, (re)opened when needed."""
        self._check_open()
        assert self._lock is not None
        async with self._lock:
            link = self._publisher
            if link is None or not link.is_open:
                self._publisher = None
                if link is not None:
                    await link.aclose()
                link = await self._open_link("publisher")
                if self._closed:  # close() ran while this connection was being opened
                    await link.aclose()
                    self._check_open()
                self._publisher = link
            return link

    async def _drop_link(self, link: _Link | None) -> None:
        if link is not None and self._publisher is link:
            self._publisher = None
        if link is not None:
            await link.aclose()

    async def connect(self) -> None:
        """Connect and declare the queue, its dead-letter exchange and dead queue; idempotent.

        Raises:
            QueueUnavailable: the broker cannot be reached, or refused the login, the vhost or the declarations;
                the message says which URL (without its password) and what to check.
            UserError: the queue was closed.
        """
        try:
            await self._link()
        except _DOWN as exc:
            raise self._unavailable(exc) from exc

    async def check(self) -> None:
        """A round trip to the broker: the connection is up and the queue exists (a passive declare).

        Raises:
            QueueUnavailable: the broker does not answer within `connect_timeout_s`, or refused.
            UserError: the queue was closed.
        """
        await self._passive_count(self.name)

    async def depth(self) -> int:
        """Jobs ready in the queue (not counting unsettled deliveries, nor delayed releases not due yet).

        Raises:
            QueueUnavailable: the broker cannot be reached.
            UserError: the queue was closed.
        """
        return await self._passive_count(self.name)

    async def dead_count(self) -> int:
        """How many messages `<name>.dead` holds (rejected jobs and jobs over the delivery limit).

        Raises:
            QueueUnavailable: the broker cannot be reached.
            UserError: the queue was closed.
        """
        return await self._passive_count(self.dead_queue)

    async def _passive_count(self, queue_name: str) -> int:
        """The ready messages of `queue_name` (a passive declare), on a fresh connection if the last one broke."""
        for attempt in range(2):
            link: _Link | None = None
            try:
                with anyio.fail_after(self.connect_timeout_s):
                    link = await self._link()
                    queue = await link.channel.declare_queue(queue_name, passive=True)
            except _DOWN as exc:
                await self._drop_link(link)
                # Once more on a new connection when this one broke since its last use (a broker restart not noticed
                # yet) or the queue was deleted behind our back (a new connection declares it again).
                if attempt or link is None or isinstance(exc, TimeoutError):
                    raise self._unavailable(exc) from exc
                continue
            return int(queue.declaration_result.message_count or 0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Stop consuming (every `consume` iterator ends) and disconnect.

        Unsettled deliveries go back to the queue (their channel closes) and are delivered again.
        """
        if self._closed:
            return
        self._closed = True
        if self._closing is not None:
            self._closing.set()
        consumers, self._consumers = list(self._consumers), set()
        for consumer in consumers:
            consumer.lose()
            await consumer.link.aclose()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.aclose()

    # --- producing --------------------------------------------------------------------------------------------

    async def enqueue(self, job: Job) -> None:
        """Publish `job` (persistent) and return once the broker confirmed it.

        Retries while the broker cannot be reached or does not confirm, for up to `publish_timeout_s`. A retry after
        a confirmation lost to a dropped connection may enqueue the job twice; the run's idempotency makes the second
        delivery harmless.

        Raises:
            QueueUnavailable: the broker did not confirm the job within `publish_timeout_s` (nothing was accepted,
                unless a lost confirmation hid that it was), or refused the login or declarations.
            UserError: the queue was closed.
        """
        await self._publish(self.name, self._message(job.to_bytes(), message_id=job.job_id))

    async def _enqueue_raw(self, body: bytes) -> None:
        """Publish any `body` (tests use it for bodies that are not jobs)."""
        await self._publish(self.name, self._message(body, message_id=None))

    @staticmethod
    def _message(body: bytes, *, message_id: str | None, headers: dict[str, Any] | None = None) -> Message:
        import aio_pika

        return aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=message_id,
            headers=headers,
        )

    async def _publish(
        self,
        routing_key: str,
        message: Message,
        *,
        prepare: Callable[[AbstractChannel], Awaitable[object]] | None = None,
    ) -> None:
        """Publish through the default exchange until the broker confirms it, for up to `publish_timeout_s`."""
        self._check_open()
        deadline = anyio.current_time() + self.publish_timeout_s
        backoff = _FIRST_BACKOFF_S
        while True:
            link: _Link | None = None
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0.0)):
                    link = await self._link()
                    if prepare is not None:
                        await prepare(link.channel)
                    await link.channel.default_exchange.publish(message, routing_key=routing_key, mandatory=True)
                return
            except _DOWN as exc:
                # Unroutable (`PublishError`: the queue was deleted; a new connection declares it again), nacked
                # (`DeliveryError`), or the broker cannot be reached: retry on a fresh connection until the deadline.
                await self._drop_link(link)
                if _permanent_hint(exc) is not None:
                    raise self._unavailable(exc) from exc
                if self._closed or anyio.current_time() + backoff >= deadline:
                    raise self._unavailable(
                        exc, f"Nothing was enqueued (retried for {self.publish_timeout_s:g} s). {_HINT}"
                    ) from exc
                log.debug("queue_publish_retry", kind="rabbitmq", error=self._describe(exc))
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    # --- consuming --------------------------------------------------------------------------------------------

    async def consume(self, *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        """Deliveries for this consumer (its own connection), at most `prefetch` unsettled, until `close()`.

        While the broker cannot be reached it reconnects with backoff (logging one warning per outage) and never
        raises for that; after a reconnect the broker delivers again what was unsettled (with `deliveries` one
        higher), and settling the deliveries taken before it is a no-op.

        Raises:
            UserError: `prefetch` is not an integer >= 1, or the queue was closed.
            QueueUnavailable: the broker cannot be reached when consuming starts, or refused the login, the vhost or
                the declarations (then or on a reconnect).
        """
        _integer("prefetch", prefetch, 1, 65_535)
        self._check_open()
        try:
            await self.connect()
        except UserError:
            if self._closed:  # close() ran while connecting: nothing to consume
                return
            raise
        backoff = 0.0
        while not self._closed:
            try:
                consumer = await self._open_consumer(prefetch)
            except QueueUnavailable:
                raise
            except _DOWN as exc:
                if _permanent_hint(exc) is not None:  # e.g. the user may not read from the queue
                    raise self._unavailable(exc) from exc
                if not backoff:
                    log.warning("queue_unavailable", kind="rabbitmq", url=safe_url(self.url), error=self._describe(exc))
                backoff = min(backoff * 2, _MAX_BACKOFF_S) if backoff else _FIRST_BACKOFF_S
                await self._pause(backoff)
                continue
            if backoff:
                log.info("queue_reconnected", kind="rabbitmq", url=safe_url(self.url))
                backoff = 0.0
            try:
                while (message := await consumer.next()) is not None:
                    if _stale(message):  # its channel closed before we got to it: the broker delivers it again
                        continue
                    consumer.unsettled += 1
                    yield self._delivery(message, consumer)
            finally:
                await self._retire(consumer)
            if not self._closed:
                log.warning("queue_unavailable", kind="rabbitmq", url=safe_url(self.url), error="connection lost")
                backoff = _FIRST_BACKOFF_S

    async def _open_consumer(self, prefetch: int) -> _Consumer:
        link = await self._open_link("consumer")
        consumer = _Consumer(link)
        try:
            link.connection.close_callbacks.add(lambda *_: consumer.lose())
            link.channel.close_callbacks.add(lambda *_: consumer.lose())
            underlay = await link.channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.add(lambda *_: consumer.lose())  # the queue was deleted
            with anyio.fail_after(self.connect_timeout_s):
                await link.channel.set_qos(prefetch_count=prefetch)
                consumer.tag = await link.queue.consume(consumer.on_message, no_ack=False)
        except BaseException:
            await link.aclose()
            raise
        self._consumers.add(consumer)
        if self._closed:  # close() ran meanwhile and did not see this consumer
            consumer.lose()
        return consumer

    async def _retire(self, consumer: _Consumer) -> None:
        """The `consume` iterator ended (cancelled, closed, broken out of, reconnecting).

        Its connection stays open while deliveries it handed out are unsettled, so the worker can still ack them
        (a graceful shutdown drains its runs); the broker stops sending to it and gets back what it had sent that
        was never handed out.
        """
        consumer.retiring = True
        if not (consumer.unsettled == 0 or consumer.lost or self._closed or not consumer.link.is_open):
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT_S):
                try:
                    if consumer.tag is not None:
                        await consumer.link.queue.cancel(consumer.tag)
                    while consumer.pending:
                        await consumer.pending.popleft().nack(requeue=True)
                    return
                except _DOWN as exc:
                    log.debug("queue_consumer_cancel_failed", kind="rabbitmq", error=self._describe(exc))
        await self._drop_consumer(consumer)

    async def _drop_consumer(self, consumer: _Consumer) -> None:
        self._consumers.discard(consumer)
        consumer.lose()
        await consumer.link.aclose()

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less when the queue closes."""
        assert self._closing is not None
        with anyio.move_on_after(seconds):
            await self._closing.wait()

    def _delivery(self, message: AbstractIncomingMessage, consumer: _Consumer) -> Delivery:
        body = message.body
        token = _Token(self, message, consumer)
        try:
            job: Job | None = decode_job(body)
            error = None
        except ValueError as exc:
            job, error = None, str(exc)
        return Delivery(job, body, _deliveries(message), error=error, token=token)

    # --- settling ---------------------------------------------------------------------------------------------

    def _claim(self, delivery: Delivery) -> _Token:
        token = delivery.token
        if not isinstance(token, _Token) or token.queue is not self:
            raise UserError(
                f"This delivery did not come from the RabbitMQ queue {self.name!r}: settle it with the queue that "
                "delivered it."
            )
        if delivery.settled:
            job = delivery.job.job_id if delivery.job is not None else None
            raise UserError(
                f"This delivery (job {job!r}) was settled already: settle each delivery exactly once (ack, release "
                "or reject)."
            )
        delivery.settled = True
        return token

    async def _settle(self, verb: str, delivery: Delivery, action: Callable[[], Awaitable[object]]) -> None:
        """Run `action` (a `basic.ack`/`nack`/`reject`); a channel that closed meanwhile makes it a no-op."""
        try:
            await action()
        except _DOWN as exc:
            # The channel it came on closed (a reconnect, a broker restart, `close()`): the broker put the message
            # back and delivers it again; the run's idempotency makes that harmless.
            log.debug(
                "queue_settle_skipped",
                kind="rabbitmq",
                verb=verb,
                job_id=delivery.job.job_id if delivery.job is not None else None,
                error=self._describe(exc),
            )

    async def _settled(self, token: _Token) -> None:
        """One delivery of `token.consumer` less to settle; a retired consumer's connection closes after its last."""
        consumer = token.consumer
        consumer.unsettled -= 1
        if consumer.retiring and consumer.unsettled <= 0:
            await self._drop_consumer(consumer)

    async def ack(self, delivery: Delivery) -> None:
        """The job is done: `basic.ack` (a no-op, logged at debug, when its channel closed meanwhile).

        Raises:
            UserError: `delivery` was settled already, or did not come from this queue.
        """
        token = self._claim(delivery)
        try:
            await self._settle("ack", delivery, token.message.ack)
        finally:
            await self._settled(token)

    async def release(self, delivery: Delivery, *, delay_s: float = 0.0) -> None:
        """Put the job back (now, or after `delay_s`), counting one more delivery.

        A confirmed copy goes to the queue's tail (or to a delay queue), then the original is acked. A delay is
        rounded up to the next level (250 ms, 500 ms, 1 s, 2 s ... 4096 s at most; see the module docs). If the
        copy cannot be published within `publish_timeout_s`, the original is nacked back into the queue instead
        (logged at warning). Returns once the broker has the job back (`depth()` counts it at once when there was
        no delay).

        Raises:
            UserError: `delay_s` is not a finite number >= 0, or `delivery` was settled already or did not come
                from this queue.
        """
        delay_s = _seconds("delay_s", delay_s, zero=True)
        token = self._claim(delivery)
        message = token.message
        try:
            if not _stale(message):
                try:
                    await self._park(message, delivery.deliveries, delay_s)
                except QueueUnavailable as exc:
                    log.warning("queue_delay_failed", kind="rabbitmq", queue=self.name, delay_s=delay_s, error=str(exc))
                else:
                    await self._settle("release", delivery, message.ack)
                    return
            await self._settle("release", delivery, lambda: message.nack(requeue=True))
        finally:
            await self._settled(token)

    async def _park(self, message: AbstractIncomingMessage, deliveries: int, delay_s: float) -> None:
        """Publish a copy of `message` carrying `deliveries`: to the queue, or to the delay queue of `delay_s`."""
        headers = {k: v for k, v in (message.headers or {}).items() if k not in _BROKER_HEADERS}
        headers[_DELIVERIES_HEADER] = deliveries
        copy = self._message(message.body, message_id=message.message_id, headers=headers)
        if delay_s == 0:
            await self._publish(self.name, copy)
            return
        level_ms = _delay_level_ms(delay_s)
        delay_queue = f"{self.name}.delay.{level_ms}"

        async def declare(channel: AbstractChannel) -> None:
            await channel.declare_queue(
                delay_queue,
                durable=True,
                arguments={
                    "x-queue-type": "classic",
                    "x-message-ttl": level_ms,
                    "x-expires": 2 * level_ms + 60_000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.name,
                },
            )

        await self._publish(delay_queue, copy, prepare=declare)

    async def reject(self, delivery: Delivery, *, reason: str) -> None:
        """Remove the job: `basic.reject` without requeue routes it to `<name>.dead` through the dead-letter exchange.

        The worker recorded the dead letter (with `reason`) in the store first; `reason` is logged here.

        Raises:
            UserError: `reason` is not a string, or `delivery` was settled already or did not come from this queue.
        """
        _reason: object = reason
        if not isinstance(_reason, str):
            raise UserError(f"`reason` must be a string, got {type(_reason).__name__}.")
        token = self._claim(delivery)
        log.info(
            "queue_job_rejected",
            kind="rabbitmq",
            queue=self.name,
            job_id=delivery.job.job_id if delivery.job is not None else None,
            deliveries=delivery.deliveries,
            reason=reason[:_MAX_REASON],
        )
        try:
            await self._settle("reject", delivery, lambda: token.message.reject(requeue=False))
        finally:
            await self._settled(token)
