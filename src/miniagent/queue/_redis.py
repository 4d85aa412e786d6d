"""The Redis Streams job queue: a stream of jobs, one consumer group of workers, leases kept by `XCLAIM`.

Keys (for a queue named `miniagent.runs`):

- `miniagent.runs`: the stream; one entry per job (`body`, and `deliveries` when the job was delivered before).
  Settled entries are deleted (`XACK` + `XDEL` in one script), so the stream holds only jobs not yet settled.
- `miniagent.runs.workers`: the consumer group every worker reads through (`XREADGROUP ... >`). It is created with
  `XGROUP CREATE ... 0 MKSTREAM`: from the start of the stream, not `$`, so jobs enqueued before any worker ever
  connected (or after a Redis that lost the group restarted) are delivered, not skipped. Entries already settled
  are deleted, so starting at `0` redelivers nothing that was done.
- `miniagent.runs.delayed`: a sorted set of jobs released with a delay, scored by when they are due; each consumer
  moves the due ones back into the stream (one script: `ZRANGEBYSCORE` + `XADD` + `ZREM`) before it reads, and
  waits for new entries no longer than until the next one is due.
- `miniagent.runs.dead`: a stream (capped at `dead_max` entries) keeping the body and reason of every rejected job.
  The store's dead-letter table is the record; this keeps the message itself.

Leases: an entry read by a consumer is pending on it (Redis's pending entries list, PEL). A live consumer renews
its pending entries every `lease_s / 3` with `XCLAIM <itself> 0 <ids> JUSTID`, which resets their idle time without
counting a delivery. A consumer that stops renewing (crashed, hung, partitioned) leaves its entries idle; after
`lease_s` another consumer takes them with `XAUTOCLAIM` (which counts a delivery). `deliveries` is the entry's
delivery count in the PEL plus the `deliveries` field a released job carries, so it is 1 the first time and one
more after every release or lost lease.

Settling checks, in the same script, that the entry is still pending on this consumer: a delivery whose lease was
lost (taken by another consumer) or that Redis forgot (restarted without persistence) is not settled twice; the
call is a no-op, logged at debug. A settlement that cannot reach Redis is logged at warning and returns: the entry
stays pending, is claimed again after `lease_s` and delivered again, and the run's idempotency makes that harmless.

Durability: `enqueue` returns once Redis has appended the entry, in memory. It survives a Redis restart only as far
as Redis persists: run Redis with AOF (`appendonly yes`, `appendfsync everysec` loses at most about a second of
writes on a crash of the host; `always` loses none, slower). The keys of one queue must live on one Redis (the
scripts touch several of them), not a Redis Cluster. Needs Redis 6.2 or later (`XAUTOCLAIM`); tested on Redis 7.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import UserError
from ._base import Delivery, Job, QueueKind, decode_job, safe_url, unavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisQueue"]

log = structlog.get_logger("miniagent.queue")

_HINT = "Start Redis or fix MINIAGENT_QUEUE_URL (redis://host:6379/0)."
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)  # Redis cannot be reached right now: worth a retry
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0
_MOVE_BATCH = 100  # delayed jobs moved back into the stream per poll
_PRUNE_IDLE_MS = 3_600_000  # consumers with nothing pending and idle for an hour are removed from the group
_MAX_REASON = 1_000

# A script's first lines: is entry ARGV[3] pending on consumer ARGV[2] of group ARGV[1] in stream KEYS[1]?
_HELD = """
local stream, group, consumer, id = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local pending = redis.pcall('XPENDING', stream, group, id, id, 1, consumer)
if type(pending) ~= 'table' or pending.err or #pending == 0 then
  return 0
end
"""

_NOW = """
local function now_or_time(given)
  local now = tonumber(given)
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return now
end
"""

# KEYS: stream, delayed, dead. ARGV: group, consumer, id, mode (ack|release|reject), body, deliveries,
# delay_s, now ('' = Redis TIME), reason, dead_max. Reply: 1 settled, 0 not (or no longer) pending on this consumer.
_SETTLE = (
    _NOW
    + _HELD
    + """
local mode = ARGV[4]
if mode == 'release' then
  local delay = tonumber(ARGV[7])
  if delay > 0 then
    local due = now_or_time(ARGV[8]) + delay
    redis.call('ZADD', KEYS[2], string.format('%.6f', due), ARGV[6] .. ':' .. id .. ':' .. ARGV[5])
  else
    redis.call('XADD', stream, '*', 'body', ARGV[5], 'deliveries', ARGV[6])
  end
elseif mode == 'reject' then
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[10], '*', 'body', ARGV[5], 'deliveries', ARGV[6], 'reason', ARGV[9],
    'entry', id)
end
redis.call('XACK', stream, group, id)
redis.call('XDEL', stream, id)
return 1
"""
)

# KEYS: stream, delayed. ARGV: now ('' = Redis TIME), limit. Members are '<deliveries>:<old entry id>:<body>'.
# Reply: milliseconds until the next delayed job is due (-1: none left), so a read waits no longer than that.
_MOVE_DUE = (
    _NOW
    + """
local now = now_or_time(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local first = string.find(member, ':', 1, true)
  local second = string.find(member, ':', first + 1, true)
  local deliveries, body = string.sub(member, 1, first - 1), string.sub(member, second + 1)
  redis.call('XADD', KEYS[1], '*', 'body', body, 'deliveries', deliveries)
  redis.call('ZREM', KEYS[2], member)
end
local upcoming = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #upcoming == 0 then
  return -1
end
return math.max(0, math.ceil((tonumber(upcoming[2]) - now) * 1000))
"""
)

# KEYS: stream. ARGV: group, consumer, min idle ms, cursor, count.
# Reply: {next cursor, {id, {field, value, ...}, times delivered}...}. XAUTOCLAIM counts the delivery; XPENDING
# reads the count back. Entries deleted from the stream are dropped from the PEL by XAUTOCLAIM (Redis 7; Redis 6.2
# returns them with nil fields instead: skipped).
_CLAIM = """
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {reply[1]}
for _, entry in ipairs(reply[2]) do
  if type(entry) == 'table' and type(entry[2]) == 'table' then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    local times = 1
    if pending[1] then
      times = pending[1][4]
    end
    table.insert(out, {entry[1], entry[2], times})
  end
end
return out
"""

# KEYS: stream. ARGV: group, consumer, ids... Reply: the ids still pending on this consumer, now with idle time 0.
# `XCLAIM ... JUSTID` resets the idle time and leaves the delivery count alone; only entries this consumer still
# holds are renewed, so a lease another consumer took over is never taken back.
_RENEW = """
local kept = {}
for i = 3, #ARGV do
  local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if type(pending) == 'table' and not pending.err and #pending > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
"""

# KEYS: stream, delayed. ARGV: group, now ('' = Redis TIME).
# Reply: entries never delivered to the group (stream length minus pending, as settled entries are deleted) plus
# delayed jobs already due.
_DEPTH = (
    _NOW
    + """
local pending = 0
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) == 'table' and not summary.err then
  pending = summary[1]
end
local ready = redis.call('XLEN', KEYS[1]) - pending
if ready < 0 then
  ready = 0
end
return ready + redis.call('ZCOUNT', KEYS[2], '-inf', now_or_time(ARGV[2]))
"""
)

# KEYS: stream. ARGV: group, idle ms, a consumer to remove now ('' = none). Removes consumers with nothing pending
# that are idle that long (crashed workers leave theirs behind), and the named one if it has nothing pending.
# Deleting a consumer with nothing pending loses nothing: a consumer that reads again is created again.
_PRUNE = """
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(consumers) ~= 'table' or consumers.err then
  return 0
end
local removed = 0
for _, c in ipairs(consumers) do
  local fields = {}
  for i = 1, #c, 2 do
    fields[c[i]] = c[i + 1]
  end
  if fields['pending'] == 0 and ((fields['idle'] or 0) >= tonumber(ARGV[2]) or fields['name'] == ARGV[3]) then
    removed = removed + redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
  end
end
return removed
"""


@dataclass(eq=False, slots=True)
class _Entry:
    """A delivery's token: the stream entry, and the queue that delivered it."""

    queue: RedisQueue
    entry_id: bytes
    lost: bool = False
    """Another consumer took the entry over (this one did not renew in time)."""


def _seconds(option: str, value: object, *, zero: bool) -> float:
    """`value` as seconds: a finite number > 0 (or >= 0 with `zero`)."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        raise UserError(f"`{option}` must be a finite number of seconds {'>=' if zero else '>'} 0, got {value!r}.")
    return float(value)


def _count(option: str, value: object) -> int:
    """`value` as an integer >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"`{option}` must be an integer >= 1, got {value!r}.")
    return value


async def _command(client: Redis, *args: object) -> Any:
    """One Redis command, its reply as redis-py parses it."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


def _default_consumer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _fields(raw: object) -> dict[bytes, bytes]:
    """An entry's fields, from a `{field: value}` dict or a flat `[field, value, ...]` list."""
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list | tuple):
        items = list(zip(raw[0::2], raw[1::2], strict=False))
    else:
        return {}
    return {
        k if isinstance(k, bytes) else str(k).encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in items
    }


def _read_entries(reply: object) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The `(id, fields)` entries of an `XREADGROUP` reply for one stream (`[]` when it timed out)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = list(reply.values())
    elif isinstance(reply, list | tuple):
        streams = [item[1] for item in reply]
    else:
        return []
    entries: list[tuple[bytes, dict[bytes, bytes]]] = []
    for stream_entries in streams:
        for entry_id, raw in stream_entries:
            if raw:  # an entry deleted while pending reads as nil fields
                entries.append((entry_id if isinstance(entry_id, bytes) else str(entry_id).encode(), _fields(raw)))
    return entries


class RedisQueue:
    """A job queue on Redis Streams (see the module docs for the keys, leases and durability).

    Args:
        url: `redis://[:password@]host:6379/0`, `rediss://...` or `unix:///path/redis.sock?db=0`.
        name: The stream's key; every replica and worker that shares it shares the jobs.
        lease_s: A delivered job not renewed for this long (its consumer died) is taken by another consumer.
        max_deliveries: The worker dead-letters a job delivered more often than this (Redis itself has no limit).
        consumer: This consumer's name in the group; the default (`host:pid:random`) is unique to this object.
        publish_timeout_s: How long `enqueue` retries while Redis cannot be reached before it gives up.
        block_ms: How long one read waits for new jobs (shorter when a delayed job falls due sooner); it also bounds
            how late an abandoned job is taken over after its lease ran out.
        clock: The time used for delayed releases (epoch seconds); `None` uses Redis's own clock (`TIME`), so
            replicas with skewed clocks agree.
        dead_max: How many rejected messages the `<name>.dead` stream keeps (the oldest are trimmed).

    Raises:
        UserError: an option is out of range, or the URL is not a Redis URL.
    """

    kind: QueueKind = "redis"
    """Always `redis`."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        lease_s: float,
        max_deliveries: int,
        consumer: str | None = None,
        publish_timeout_s: float = 10.0,
        block_ms: int = 1000,
        clock: Callable[[], float] | None = None,
        dead_max: int = 10_000,
    ) -> None:
        lease_s = _seconds("lease_s", lease_s, zero=False)
        publish_timeout_s = _seconds("publish_timeout_s", publish_timeout_s, zero=True)
        for option, value in (("block_ms", block_ms), ("dead_max", dead_max), ("max_deliveries", max_deliveries)):
            _count(option, value)
        given: object = consumer
        if given is not None and (not isinstance(given, str) or not given or len(given) > 200):
            raise UserError(f"`consumer` must be a non-empty string of at most 200 characters, got {consumer!r}.")
        self.url: Final = url
        """The Redis URL (shown without its password in messages)."""
        self.name: Final = name
        """The stream's key."""
        self.group: Final = f"{name}.workers"
        """The consumer group's name."""
        self.lease_s: Final = float(lease_s)
        """Idle time after which another consumer takes a delivery over."""
        self.max_deliveries: Final = max_deliveries
        """Deliveries after which the worker dead-letters a job."""
        self.consumer: Final = consumer or _default_consumer()
        """This consumer's name in the group."""
        self.publish_timeout_s: Final = float(publish_timeout_s)
        """How long `enqueue` retries an unreachable Redis."""
        self.block_ms: Final = block_ms
        """How long one read waits for new jobs."""
        self.dead_max: Final = dead_max
        """How many rejected messages `<name>.dead` keeps."""
        self._clock = clock
        self._delayed = f"{name}.delayed"
        self._dead = f"{name}.dead"
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._connected = False
        self._closed = False
        self._closing: anyio.Event | None = None
        self._waiters: set[anyio.Event] = set()
        self._scopes: set[anyio.CancelScope] = set()
        self._unsettled: dict[bytes, Delivery] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._cursor = b"0-0"
        self._polls = 0
        self._renewals = 0
        self._client = self._open_client()

    def __repr__(self) -> str:
        return f"RedisQueue({safe_url(self.url)!r}, name={self.name!r}, consumer={self.consumer!r})"

    @property
    def polls(self) -> int:
        """How many times `consume` asked Redis for jobs (each poll waits up to `block_ms` for new ones)."""
        return self._polls

    @property
    def renewals(self) -> int:
        """How many times the leases of this consumer's unsettled deliveries were renewed."""
        return self._renewals

    @property
    def unsettled(self) -> int:
        """Deliveries handed out by `consume` and not settled yet."""
        return len(self._unsettled)

    # --- connecting -------------------------------------------------------------------------------------------

    def _open_client(self) -> Redis:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        try:
            # No retries inside redis-py: the queue decides (enqueue retries for publish_timeout_s, consume backs off
            # for as long as it runs, settling gives up). The socket timeout outlasts a blocking read.
            return Redis.from_url(
                self.url,
                decode_responses=False,
                socket_connect_timeout=5,
                socket_timeout=self.block_ms / 1000 + 10,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise UserError(
                f"The Redis queue URL {safe_url(self.url)!r} is not valid ({exc}): fix MINIAGENT_QUEUE_URL "
                "(redis://host:6379/0)."
            ) from None

    def _redis(self) -> Redis:
        if self._closed or self._client is None:
            raise UserError(f"{self!r} was closed: call `await queue.connect()` to open it again.")
        return self._client

    def _script(self, source: str) -> AsyncScript:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._redis().register_script(source)
        return script

    async def connect(self) -> None:
        """Connect, create the consumer group (from the stream's start) and prune consumers long gone; idempotent.

        A closed queue opens again (as the same consumer).

        Raises:
            QueueUnavailable: Redis cannot be reached; the message names the URL (without its password).
        """
        if self._closed:
            self._client, self._scripts, self._connected, self._closed = self._open_client(), {}, False, False
            self._closing = None
        client = self._redis()
        if self._closing is None:
            self._closing = anyio.Event()
        if self._connected:
            return
        try:
            await client.ping()
            await self._create_group()
            await self._script(_PRUNE)(keys=[self.name], args=[self.group, _PRUNE_IDLE_MS, ""])
        except (RedisError, OSError) as exc:
            raise unavailable("Redis", self.url, exc, _HINT) from exc
        self._connected = True

    async def _create_group(self) -> None:
        try:
            await _command(self._redis(), "XGROUP", "CREATE", self.name, self.group, "0", "MKSTREAM")
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists already: nothing to do
                raise

    async def check(self) -> None:
        """`PING` Redis.

        Raises:
            QueueUnavailable: Redis does not answer.
        """
        try:
            await self._redis().ping()
        except (RedisError, OSError) as exc:
            raise unavailable("Redis", self.url, exc, _HINT) from exc

    async def close(self) -> None:
        """Stop consuming (the `consume` iterator ends), stop renewing leases and disconnect.

        Unsettled deliveries stay pending on this consumer; another consumer takes them after `lease_s`.
        """
        if self._closed:
            return
        self._closed = True
        if self._closing is not None:
            self._closing.set()
        self._wake()
        for scope in list(self._scopes):
            scope.cancel()
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if self._connected:
                with anyio.move_on_after(1.0):  # tidying only: a slow Redis does not hold up shutdown
                    prune = client.register_script(_PRUNE)
                    await prune(keys=[self.name], args=[self.group, _PRUNE_IDLE_MS, self.consumer])
        except (RedisError, OSError):
            pass  # left for the next connect's pruning
        finally:
            await client.aclose()

    # --- producing --------------------------------------------------------------------------------------------

    async def enqueue(self, job: Job) -> None:
        """Append `job` to the stream; returns once Redis has it (durable as far as Redis persists: see the module).

        Retries while Redis cannot be reached, for up to `publish_timeout_s`. A retry after a lost reply may append
        the job twice; the run's idempotency makes the second delivery harmless.

        Raises:
            QueueUnavailable: Redis could not be reached within `publish_timeout_s`, or refused the write (out of
                memory, a read-only replica).
            UserError: the queue was closed.
        """
        await self._enqueue_raw(job.to_bytes())

    async def _enqueue_raw(self, body: bytes) -> None:
        """Append any `body` (tests use it for bodies that are not jobs)."""
        client = self._redis()
        deadline = time.monotonic() + self.publish_timeout_s
        backoff = _FIRST_BACKOFF_S
        while True:
            try:
                await _command(client, "XADD", self.name, "*", "body", body)
                return
            except _DOWN as exc:
                if time.monotonic() + backoff > deadline or self._closed:
                    raise unavailable(
                        "Redis",
                        self.url,
                        exc,
                        f"Nothing was enqueued (retried for {self.publish_timeout_s:g} s). {_HINT}",
                    ) from exc
            except RedisError as exc:
                raise unavailable("Redis", self.url, exc, f"Nothing was enqueued. {_HINT}") from exc
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def depth(self) -> int:
        """Jobs waiting: entries never delivered to the group, plus delayed releases already due.

        Not counted: deliveries not settled yet (pending on a consumer) and delayed releases not due yet.

        Raises:
            QueueUnavailable: Redis cannot be reached.
        """
        try:
            count = await self._script(_DEPTH)(keys=[self.name, self._delayed], args=[self.group, self._now_arg()])
        except (RedisError, OSError) as exc:
            raise unavailable("Redis", self.url, exc, _HINT) from exc
        return int(count)

    async def dead_count(self) -> int:
        """How many rejected messages the `<name>.dead` stream holds (at most `dead_max`).

        Raises:
            QueueUnavailable: Redis cannot be reached.
        """
        try:
            return int(await _command(self._redis(), "XLEN", self._dead))
        except (RedisError, OSError) as exc:
            raise unavailable("Redis", self.url, exc, _HINT) from exc

    def _now_arg(self) -> str:
        return "" if self._clock is None else repr(float(self._clock()))

    # --- consuming --------------------------------------------------------------------------------------------

    async def consume(self, *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        """Deliveries for this consumer, at most `prefetch` unsettled at a time, until `close()` or cancellation.

        Each poll moves due delayed jobs into the stream, takes over entries idle for `lease_s` on other (dead)
        consumers, then reads new entries. While Redis is unreachable it waits and retries with backoff, logging
        one warning per outage; it never raises for that.

        Raises:
            UserError: `prefetch` is not an integer >= 1, or the queue was closed.
            QueueUnavailable: Redis cannot be reached when consuming starts (it connects first when needed).
        """
        _count("prefetch", prefetch)
        self._redis()  # a closed queue stays closed until `connect()`
        await self.connect()
        self._start_renewer()
        backoff = 0.0
        while not self._closed:
            if len(self._unsettled) >= prefetch:
                await self._wait(None)
                continue
            try:
                batch = await self._poll(prefetch - len(self._unsettled))
            except (RedisError, OSError) as exc:
                if "NOGROUP" in str(exc):  # Redis lost the group (restarted without persistence, key deleted)
                    backoff = await self._recreate_group(backoff)
                    continue
                if not backoff:
                    log.warning("queue_unavailable", kind="redis", url=safe_url(self.url), error=repr(exc))
                backoff = min(backoff * 2, _MAX_BACKOFF_S) if backoff else _FIRST_BACKOFF_S
                await self._wait(backoff)
                continue
            if backoff:
                log.info("queue_reconnected", kind="redis", url=safe_url(self.url))
                backoff = 0.0
            try:
                while batch and not self._closed:
                    yield batch.pop(0)
            finally:
                for delivery in batch:  # handed to no one: left pending, taken over after `lease_s`
                    self._forget(delivery)

    async def _recreate_group(self, backoff: float) -> float:
        try:
            await self._create_group()
        except (RedisError, OSError) as exc:
            if not backoff:
                log.warning("queue_unavailable", kind="redis", url=safe_url(self.url), error=repr(exc))
            backoff = min(backoff * 2, _MAX_BACKOFF_S) if backoff else _FIRST_BACKOFF_S
            await self._wait(backoff)
        return backoff

    async def _poll(self, room: int) -> list[Delivery]:
        """Up to `room` deliveries (`[]` when none came within `block_ms`, or `close()` interrupted the wait)."""
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            if self._closed:
                scope.cancel()
            try:
                self._polls += 1
                next_due_ms = int(
                    await self._script(_MOVE_DUE)(keys=[self.name, self._delayed], args=[self._now_arg(), _MOVE_BATCH])
                )
                deliveries = await self._claim(room)
                if not deliveries:
                    block_ms = self.block_ms if next_due_ms < 0 else max(1, min(self.block_ms, next_due_ms))
                    deliveries = await self._read(room, block_ms)
                for delivery in deliveries:
                    assert isinstance(delivery.token, _Entry)
                    self._unsettled[delivery.token.entry_id] = delivery
                return deliveries
            finally:
                self._scopes.discard(scope)
        return []

    async def _claim(self, room: int) -> list[Delivery]:
        """Entries idle for `lease_s` on any consumer, taken over by this one."""
        min_idle_ms = max(1, math.ceil(self.lease_s * 1000))
        reply = await self._script(_CLAIM)(
            keys=[self.name], args=[self.group, self.consumer, min_idle_ms, self._cursor, room]
        )
        self._cursor = reply[0] if isinstance(reply[0], bytes) else str(reply[0]).encode()
        deliveries = []
        for entry_id, raw, times in reply[1:]:
            if entry_id in self._unsettled:  # ours already (renewal ran late): the claim renewed it
                continue
            deliveries.append(self._delivery(entry_id, _fields(raw), int(times)))
        return deliveries

    async def _read(self, room: int, block_ms: int) -> list[Delivery]:
        """New entries (never delivered to the group), waiting up to `block_ms` for some."""
        reply = await _command(
            self._redis(),
            "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", room, "BLOCK", block_ms,
            "STREAMS", self.name, ">",
        )  # fmt: skip
        return [self._delivery(entry_id, fields, 1) for entry_id, fields in _read_entries(reply)]

    def _delivery(self, entry_id: bytes, fields: dict[bytes, bytes], times: int) -> Delivery:
        try:
            before = max(0, int(fields.get(b"deliveries", b"0")))
        except ValueError:
            before = 0
        body = fields.get(b"body")
        token = _Entry(self, entry_id)
        if body is None:
            return Delivery(None, b"", before + times, error="the stream entry has no `body` field", token=token)
        try:
            job: Job | None = decode_job(body)
            error = None
        except ValueError as exc:
            job, error = None, str(exc)
        return Delivery(job, body, before + times, error=error, token=token)

    async def _wait(self, timeout: float | None) -> None:
        """Wait until a delivery is settled, the queue closes, or `timeout` passes."""
        event = anyio.Event()
        self._waiters.add(event)
        try:
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                await event.wait()
        finally:
            self._waiters.discard(event)

    def _wake(self) -> None:
        for event in self._waiters:
            event.set()

    def _forget(self, delivery: Delivery) -> None:
        assert isinstance(delivery.token, _Entry)
        if self._unsettled.pop(delivery.token.entry_id, None) is not None:
            self._wake()

    # --- leases -----------------------------------------------------------------------------------------------

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_forever(), name=f"miniagent-queue-renew-{self.consumer}"
            )

    async def _renew_forever(self) -> None:
        """Every `lease_s / 3`, renew the leases of the unsettled deliveries (until `close()`)."""
        assert self._closing is not None
        while True:
            with anyio.move_on_after(self.lease_s / 3):
                await self._closing.wait()
            if self._closed:
                return
            try:
                await self._renew()
            except (RedisError, OSError) as exc:  # the consume loop logs the outage
                log.debug("queue_renew_failed", kind="redis", error=repr(exc))

    async def _renew(self) -> None:
        held = [entry_id for entry_id, d in self._unsettled.items() if not d.token.lost]
        if not held:
            return
        kept = set(await self._script(_RENEW)(keys=[self.name], args=[self.group, self.consumer, *held]))
        self._renewals += 1
        for entry_id in held:
            delivery = self._unsettled.get(entry_id)
            if entry_id not in kept and delivery is not None and not delivery.token.lost:
                delivery.token.lost = True  # its settlement will be a no-op
                log.warning(
                    "queue_lease_lost",
                    kind="redis",
                    entry=_text(entry_id),
                    hint="another consumer took this job over: the event loop was blocked for longer than lease_s?",
                )

    # --- settling ---------------------------------------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        """The job is done: remove its entry from the stream (`XACK` + `XDEL`, atomically).

        Raises:
            UserError: `delivery` was settled already or did not come from this queue, or the queue was closed.
        """
        await self._settle(delivery, "ack")

    async def release(self, delivery: Delivery, *, delay_s: float = 0.0) -> None:
        """Put the job back as a new entry carrying its delivery count (after `delay_s`, via `<name>.delayed`).

        Raises:
            UserError: `delivery` was settled already or did not come from this queue, the queue was closed, or
                `delay_s` is not a finite number >= 0.
        """
        await self._settle(delivery, "release", delay_s=_seconds("delay_s", delay_s, zero=True))

    async def reject(self, delivery: Delivery, *, reason: str) -> None:
        """Remove a job that failed for good, keeping its body and `reason` in the `<name>.dead` stream.

        Raises:
            UserError: `delivery` was settled already or did not come from this queue, or the queue was closed.
        """
        await self._settle(delivery, "reject", reason=str(reason)[:_MAX_REASON])

    async def _settle(
        self, delivery: Delivery, mode: Literal["ack", "release", "reject"], *, delay_s: float = 0.0, reason: str = ""
    ) -> None:
        token = delivery.token
        if not isinstance(token, _Entry) or token.queue is not self:
            raise UserError(
                f"This delivery did not come from the Redis job queue {self.name!r} (consumer {self.consumer!r}); "
                "settle a delivery on the queue that consumed it."
            )
        if delivery.settled:
            raise UserError(
                f"This delivery (entry {_text(token.entry_id)}) was already acked, released or rejected; settle each "
                "delivery exactly once."
            )
        script = self._script(_SETTLE)  # raises when the queue was closed: the delivery stays unsettled
        delivery.settled = True
        self._forget(delivery)
        args: Sequence[Any] = (
            self.group, self.consumer, token.entry_id, mode, delivery.body, delivery.deliveries,
            repr(delay_s), self._now_arg(), reason, self.dead_max,
        )  # fmt: skip
        try:
            done = await script(keys=[self.name, self._delayed, self._dead], args=args)
        except (RedisError, OSError) as exc:
            log.warning(
                "queue_settle_failed",
                kind="redis",
                action=mode,
                entry=_text(token.entry_id),
                error=repr(exc),
                hint=f"the job stays pending and is delivered again after lease_s ({self.lease_s:g} s)",
            )
            return
        if not done:
            log.debug("queue_settle_skipped", kind="redis", action=mode, entry=_text(token.entry_id))
