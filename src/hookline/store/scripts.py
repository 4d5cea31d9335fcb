"""Every Lua script hookline runs in Redis, and what each one makes atomic.

Each script is a :class:`Script` (its source and SHA-1); all of them run through one
runner, :meth:`hookline.store.connection.Connection.run`: by SHA on the pipelined
connection, and by source when Redis does not know the SHA (a restart, ``SCRIPT
FLUSH``). A script's comment names its KEYS and ARGV; the key families are in
:mod:`hookline.store.keys`.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple


class Script(NamedTuple):
    source: str
    sha: str


def _script(source: str) -> Script:
    return Script(source, hashlib.sha1(source.encode()).hexdigest())


# -- the queue: every change of an entry's state is one script

ENQUEUE_ONCE = _script(
    """
local prev = redis.call('GET', KEYS[1])
if prev then return prev end
redis.call('XADD', KEYS[2], '*', 'd', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""
)

# KEYS: idempotency key (the body key when none is given), body key, source stats, then
#       the stream of each pool the deliveries go to
# ARGV: event id, idempotency ttl ms ('0': no idempotency key), number of deliveries,
#       '1' when the body is shared, the body ('' when it is in the body store or in the
#       entry), then per delivery: index of its stream in KEYS, packed entry
# A source's event, all or nothing: every delivery queued, the shared body stored once
# with the count of deliveries that hold it, the source's figures counted — or, for a
# repeated Idempotency-Key, nothing but the first event's answer. Returns "ID N": the
# event's id and how many endpoints it went to.
FANOUT = _script(
    """
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  local prev = redis.call('GET', KEYS[1])
  if prev then return prev end
end
local n = tonumber(ARGV[3])
if n == 0 then
  redis.call('HINCRBY', KEYS[3], 'unmatched', 1)
else
  if ARGV[4] == '1' then
    if ARGV[5] ~= '' then
      redis.call('HSET', KEYS[2], 'n', n, 'b', ARGV[5])
    else
      redis.call('HSET', KEYS[2], 'n', n)
    end
  end
  for i = 6, #ARGV, 2 do
    redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', 'd', ARGV[i + 1])
  end
  redis.call('HINCRBY', KEYS[3], 'deliveries', n)
end
redis.call('HINCRBY', KEYS[3], 'events', 1)
local answer = ARGV[1] .. ' ' .. n
if ttl > 0 then redis.call('SET', KEYS[1], answer, 'PX', ttl) end
return answer
"""
)

# KEYS: dead stream, then the key of each shared body among the dead letters
# ARGV: per dead letter: its id, index of its shared body's key (0: none)
# Removes dead letters past retention; a shared body loses their reference, and goes with
# the last. Returns per dead letter 1 when its body is no longer referenced (removed from
# Redis here; one in the body store is the caller's to delete), else 0.
EXPIRE_DEAD = _script(
    """
local out = {}
for i = 1, #ARGV, 2 do
  local gone = 0
  local body = tonumber(ARGV[i + 1])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    gone = 1
    if body > 0 then
      if redis.call('HINCRBY', KEYS[body], 'n', -1) > 0 then
        gone = 0
      else
        redis.call('DEL', KEYS[body])
      end
    end
  end
  out[#out + 1] = gone
end
return out
"""
)

# Shared by the scripts that record a failed attempt: figures, the attempt log,
# and the endpoint's health — the streak of consecutive failures, when it
# began, and until when its circuit is open. Returns {streak, open_until, since}.
_FAILED = """
local function failed(stats, attempts, failure, now, threshold, cooldown, logsize)
  redis.call('HINCRBY', stats, 'failed', 1)
  redis.call('HSET', stats, 'last_failure', failure)
  redis.call('LPUSH', attempts, failure)
  redis.call('LTRIM', attempts, 0, logsize - 1)
  local streak = redis.call('HINCRBY', stats, 'streak', 1)
  redis.call('HSETNX', stats, 'streak_since', now)
  local open_until = tonumber(redis.call('HGET', stats, 'open_until') or '0')
  if streak >= threshold and open_until <= now then
    open_until = now + cooldown
    redis.call('HSET', stats, 'open_until', open_until)
  end
  return {streak, open_until, tonumber(redis.call('HGET', stats, 'streak_since'))}
end
"""

# KEYS: stream, sending hash
# ARGV: group, consumer, then per attempt: msgid, webhook id
# Records that an attempt of each entry is about to be sent, before any byte of it is —
# only while the entry is still pending to this consumer: one that another consumer
# settled or reclaimed meanwhile is not sent again. Returns 1 per attempt recorded (send
# it), 0 per entry no longer this consumer's. The settle scripts below take the record
# back as they record the attempt's outcome, so what stays in the hash are the attempts
# of dispatchers that died (or were reclaimed while slow): each may have reached the
# endpoint, and the webhook's next delivery counts each as a duplicate.
SENDING = _script(
    """
local out = {}
for i = 3, #ARGV, 2 do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""
)

# KEYS: stream, sending hash, then per endpoint its stats and attempts keys, and the
#       stats of each source and the key of each shared body among the entries
# ARGV: group, now, log size, then per entry: msgid, index of its stats key, attempt json,
#       delivery name (Webhook.delivery), index of its shared body's key (0: not shared),
#       index of its source's stats key (0: none)
# Returns per entry -1 when another consumer had settled it already (nothing recorded:
# that settle took this attempt into account), else {duplicates, last}: the webhook's
# other attempts started and never settled (SENDING counted this one too), and 1 when
# this delivery was the last of a shared body's, which is then gone from Redis (and, when
# it lives in the body store, is the caller's to delete there).
# A delivery ends the endpoint's failure streak and closes its circuit.
DELIVERED = _script(
    """
local acked_by, dups_by, out = {}, {}, {}
local logsize = tonumber(ARGV[3])
for i = 4, #ARGV, 6 do
  local k = tonumber(ARGV[i + 1])
  local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
  if acked == 0 then
    out[#out + 1] = -1
  else
    local dups, last = 0, 0
    local started = redis.call('HGET', KEYS[2], ARGV[i + 3])
    if started then
      dups = math.max(0, tonumber(started) - 1)
      redis.call('HDEL', KEYS[2], ARGV[i + 3])
    end
    local body = tonumber(ARGV[i + 4])
    if body > 0 and redis.call('HINCRBY', KEYS[body], 'n', -1) <= 0 then
      redis.call('DEL', KEYS[body])
      last = 1
    end
    out[#out + 1] = {dups, last}
    acked_by[k] = (acked_by[k] or 0) + 1
    if dups > 0 then dups_by[k] = (dups_by[k] or 0) + dups end
    redis.call('LPUSH', KEYS[k + 1], ARGV[i + 2])
    local src = tonumber(ARGV[i + 5])
    if src > 0 then redis.call('HINCRBY', KEYS[src], 'delivered', 1) end
  end
end
for k, n in pairs(acked_by) do
  redis.call('HINCRBY', KEYS[k], 'delivered', n)
  redis.call('HSET', KEYS[k], 'last_success', ARGV[2])
  redis.call('HDEL', KEYS[k], 'streak', 'streak_since', 'open_until')
  redis.call('LTRIM', KEYS[k + 1], 0, logsize - 1)
end
for k, n in pairs(dups_by) do redis.call('HINCRBY', KEYS[k], 'duplicates', n) end
return out
"""
)

# KEYS: stream, retry zset, retry hash, stats, attempts, sending hash, and for a
#       source's event the source's stats
# ARGV: group, msgid, uid, due_ms, packed, failure json ('' when not an attempt),
#       now, threshold, cooldown, log size, delivery name, '1' when SENDING recorded this
#       attempt ('0' for a deferral decided before it)
# The webhook's other attempts started and never settled stay recorded: its next
# delivery counts them.
RESCHEDULE = _script(
    _FAILED
    + """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if acked == 0 then return {0} end
if ARGV[12] == '1' and redis.call('HINCRBY', KEYS[6], ARGV[11], -1) <= 0 then
  redis.call('HDEL', KEYS[6], ARGV[11])
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
if ARGV[6] == '' then return {1} end
if KEYS[7] then redis.call('HINCRBY', KEYS[7], 'failed', 1) end
local h = failed(KEYS[4], KEYS[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]),
                 tonumber(ARGV[9]), tonumber(ARGV[10]))
return {1, h[1], h[2], h[3]}
"""
)

# KEYS: stream, retry zset, retry hash   ARGV: group, now_ms, then per entry: msgid, delay_ms
# Puts entries back on the schedule as they are, their data copied from the stream (a
# deferral changes nothing in the webhook). Returns how many it moved; an entry another
# consumer already settled is only acknowledged.
DEFER = _script(
    """
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local e = redis.call('XRANGE', KEYS[1], id, id)[1]
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 and e then
    local f = e[2]
    for j = 1, #f, 2 do
      if f[j] == 'd' then
        redis.call('HSET', KEYS[3], id, f[j + 1])
        redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[i + 1]), id)
        n = n + 1
      end
    end
    redis.call('XDEL', KEYS[1], id)
  end
end
return n
"""
)

# KEYS: stream, dead stream, stats, attempts, sending hash, and for a source's event the
#       source's stats
# ARGV: group, msgid, packed, reason, pool, endpoint, failure json ('' when no attempt),
#       now, threshold, cooldown, log size, delivery name
# The webhook is finished: its record of started attempts goes (a replay from the dead
# letter is the operator's choice, not counted as a duplicate). A shared body stays: the
# dead letter holds its reference until it is replayed and delivered, or expires.
DEAD = _script(
    _FAILED
    + """
if ARGV[2] ~= '' then
  local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  if acked == 0 then return {0} end
end
redis.call('HDEL', KEYS[5], ARGV[12])
redis.call('XADD', KEYS[2], '*', 'd', ARGV[3], 'reason', ARGV[4], 'pool', ARGV[5], 'ep', ARGV[6])
redis.call('HINCRBY', KEYS[3], 'dead', 1)
if KEYS[6] then redis.call('HINCRBY', KEYS[6], 'dead', 1) end
if ARGV[7] == '' then return {1} end
if KEYS[6] then redis.call('HINCRBY', KEYS[6], 'failed', 1) end
local h = failed(KEYS[3], KEYS[4], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]),
                 tonumber(ARGV[10]), tonumber(ARGV[11]))
return {1, h[1], h[2], h[3]}
"""
)

# KEYS: retry zset, retry hash, stream, reaper pass   ARGV: now_ms, limit
# Moves nothing while a reaper pass reads the body references (see hookline.store.references).
# Returns {moved, when the next retry is due (ms; '' for none, '-1' while a reaper pass reads)}.
MOVE_DUE = _script(
    """
if redis.call('EXISTS', KEYS[4]) == 1 then return {0, '-1'} end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, uid in ipairs(due) do
  local d = redis.call('HGET', KEYS[2], uid)
  if d then redis.call('XADD', KEYS[3], '*', 'd', d) end
  redis.call('HDEL', KEYS[2], uid)
  redis.call('ZREM', KEYS[1], uid)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, first[2] or ''}
"""
)

# KEYS: dead stream, target stream, reaper pass   ARGV: dead id, packed
# Returns 1 (replayed), 0 (no such dead letter) or -1 (a reaper pass is reading: try again).
REPLAY = _script(
    """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'd', ARGV[2])
return 1
"""
)


# -- the registry: an endpoint and its key index change together, then are announced

# KEYS: records hash, key index, channel
# ARGV: id, record JSON ('' to remove), announcement, then the record's key hashes
# Replaces a record (an endpoint, or a source) and its key index atomically, then
# announces it.
PUT_RECORD = _script(
    """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  for _, h in ipairs(cjson.decode(old)['key_hashes']) do redis.call('HDEL', KEYS[2], h) end
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  for i = 4, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], ARGV[1]) end
end
redis.call('PUBLISH', KEYS[3], ARGV[3])
return old and 1 or 0
"""
)

# KEYS: disabled hash, channel   ARGV: endpoint id, JSON reason ('' to enable again)
SET_DISABLED = _script(
    """
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""
)


# -- leases and locks

# KEYS: in-flight leases (zset), token bucket (hash)
# ARGV: lease id, max in flight (0: none), lease ms, rate per second (0: none), burst
# Returns 0 (admitted), -1 (at max in flight) or the milliseconds until a token.
ACQUIRE = _script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[2])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= cap then return -1 end
end
local rate = tonumber(ARGV[4])
if rate > 0 then
  local burst = tonumber(ARGV[5])
  local tokens = tonumber(redis.call('HGET', KEYS[2], 'tokens') or burst)
  local ts = tonumber(redis.call('HGET', KEYS[2], 'ts') or now)
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  if tokens < 1 then
    redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'ts', now)
    return math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'ts', now)
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
end
if cap > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return 0
"""
)


# KEYS: lease   ARGV: holder, ttl ms. Take the lease when free, extend it when ours.
HOLD_LEASE = _script(
    """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
)

# KEYS: lease   ARGV: holder, ttl ms. Extend the lease only while it is still ours: one
# that lapsed is not taken again, so its holder learns that it may have had a gap.
EXTEND_LEASE = _script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

RELEASE_LEASE = _script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)
