"""The Lua scripts of the Redis backend.

A script runs atomically on the server, so a row and all its index entries change
together (no reader sees a row in two status indexes, or in none), and a claim reads
and takes in one step (two claimants never both win). The keys a script touches are
derived from its arguments, so it needs a single Redis (or a primary with replicas),
not a cluster.

Layout (``p`` = the prefix):

* ``p:task:{id}``: hash of a row's columns (a None column is absent) plus ``_m``, the
  row's index member, and ``_idx``, a JSON array of the sorted sets it is in.
* ``p:idx:all``, ``p:idx:status:{status}``, ``p:idx:name:{func_name}``,
  ``p:idx:tag:{sha256 hex}``: sorted sets with every score 0, so that members sort
  by bytes: a member is ``{created_us + 2**63:020d}:{task_id}``, and byte order is
  ``(created_us, task_id)`` order. A page is one ``ZRANGE ... BYLEX REV LIMIT``.
* ``p:idx:ended``: finished rows by ``end_us`` (retention).
* ``p:idx:owner:{owner}``: the rows an instance owns; ``p:owners`` the owners that have some.
* ``p:leases``: sorted set of instance id -> lease expiry in µs (server clock).
* ``p:sched:row:{run_key}`` hash and ``p:sched:due``: members ``{fire_us + 2**63:020d}:{run_key}``.
* ``p:idem:{key}``, ``p:lock:{key}``, ``p:meta:{key}``: strings.
"""

from __future__ import annotations

from typing import Final

from .base import FINISHED

#: ``now_us()``: the server's clock in µs, so that instances with skewed clocks agree on leases.
_NOW: Final[str] = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

#: ``drop(h, ends, owners, owner_prefix)`` removes the row at hash ``h`` from every index it is
#: in, then deletes it; false when there is no row. Shared by the scripts that remove rows.
_DROP: Final[str] = """
local function drop(h, ends, owners, owner_prefix)
  local m = redis.call('HGET', h, '_m')
  if not m then return false end
  for _, k in ipairs(cjson.decode(redis.call('HGET', h, '_idx'))) do redis.call('ZREM', k, m) end
  redis.call('ZREM', ends, string.sub(m, 22))
  local owner = redis.call('HGET', h, 'owner')
  if owner then
    local owned = owner_prefix .. owner
    redis.call('ZREM', owned, m)
    if redis.call('ZCARD', owned) == 0 then redis.call('SREM', owners, owner) end
  end
  redis.call('DEL', h)
  return true
end
"""

# The task scripts share their first keys and arguments: KEYS[1] = p:idx:ended,
# KEYS[2] = p:owners, ARGV[1] = 'p:task:', ARGV[2] = 'p:idx:owner:'.

#: One row. KEYS[3..] = the indexes it belongs in; ARGV[3] = task id, ARGV[4] = its member,
#: ARGV[5] = end_us when finished else '', ARGV[6] = owner or '', ARGV[7..] = field, value, ...
UPSERT: Final[str] = (
    _DROP
    + """
local h = ARGV[1] .. ARGV[3]
drop(h, KEYS[1], KEYS[2], ARGV[2])
local indexes = {}
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[i], 0, ARGV[4])
  indexes[#indexes + 1] = KEYS[i]
end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[1], ARGV[5], ARGV[3]) end
if ARGV[6] ~= '' then
  redis.call('ZADD', ARGV[2] .. ARGV[6], 0, ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[6])
end
redis.call('HSET', h, '_m', ARGV[4], '_idx', cjson.encode(indexes), unpack(ARGV, 7))
"""
)

#: ARGV[3..] = task ids: deletes the finished ones, returns how many.
DELETE: Final[str] = (
    _DROP
    + "local FINISHED = {"
    + ", ".join(f"{status} = true" for status in FINISHED)
    + """}
local n = 0
for i = 3, #ARGV do
  local h = ARGV[1] .. ARGV[i]
  local status = redis.call('HGET', h, 'status')
  if status and FINISHED[status] and drop(h, KEYS[1], KEYS[2], ARGV[2]) then n = n + 1 end
end
return n
"""
)

#: ARGV[3] = end_us bound (exclusive), ARGV[4] = at most this many: deletes finished rows that
#: ended before the bound (only finished rows are in p:idx:ended), returns how many.
PURGE: Final[str] = (
    _DROP
    + """
local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], '-inf', '(' .. ARGV[3], 'BYSCORE', 'LIMIT', 0, ARGV[4])) do
  if drop(ARGV[1] .. id, KEYS[1], KEYS[2], ARGV[2]) then n = n + 1 end
end
return n
"""
)

#: KEYS[3] = p:leases; ARGV[3] = the claimant, ARGV[4] = limit. Moves rows of owners without a
#: live lease to the claimant; returns their HGETALL replies.
CLAIM_ORPHANS: Final[str] = (
    _NOW
    + """
local now = now_us()
local limit = tonumber(ARGV[4])
local mine = ARGV[2] .. ARGV[3]
local rows = {}
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if #rows >= limit then break end
  local lease = redis.call('ZSCORE', KEYS[3], owner)
  if owner ~= ARGV[3] and (not lease or tonumber(lease) <= now) then
    local owned = ARGV[2] .. owner
    for _, m in ipairs(redis.call('ZRANGE', owned, '-', '+', 'BYLEX', 'LIMIT', 0, limit - #rows)) do
      local h = ARGV[1] .. string.sub(m, 22)
      redis.call('HSET', h, 'owner', ARGV[3])
      redis.call('ZREM', owned, m)
      redis.call('ZADD', mine, 0, m)
      rows[#rows + 1] = redis.call('HGETALL', h)
    end
    if redis.call('ZCARD', owned) == 0 then redis.call('SREM', KEYS[2], owner) end
  end
end
if #rows > 0 then redis.call('SADD', KEYS[2], ARGV[3]) end
return rows
"""
)

#: KEYS = the indexes to intersect; ARGV[1] = 'p:task:', ARGV[2] = exclusive upper member or '+',
#: ARGV[3] = limit. Walks the smallest index down from the bound and keeps the members that are
#: in every other index too (ZSCORE, O(1)); returns HGETALL replies, newest first.
PAGE: Final[str] = """
local walk, size = 1, redis.call('ZCARD', KEYS[1])
for i = 2, #KEYS do
  local n = redis.call('ZCARD', KEYS[i])
  if n < size then walk, size = i, n end
end
local limit = tonumber(ARGV[3])
local upper = ARGV[2]
local rows = {}
while #rows < limit do
  local members = redis.call('ZRANGE', KEYS[walk], upper, '-', 'BYLEX', 'REV', 'LIMIT', 0, limit)
  for _, m in ipairs(members) do
    local everywhere = true
    for i = 1, #KEYS do
      if i ~= walk and not redis.call('ZSCORE', KEYS[i], m) then everywhere = false break end
    end
    if everywhere then
      rows[#rows + 1] = redis.call('HGETALL', ARGV[1] .. string.sub(m, 22))
      if #rows == limit then break end
    end
  end
  if #members < limit then break end
  upper = '(' .. members[#members]
end
return rows
"""

#: KEYS[1] = p:leases; ARGV[1] = instance id, ARGV[2] = lease in µs. Expired leases count as
#: absent, so dropping them here keeps the set small at no cost in meaning.
HEARTBEAT: Final[str] = (
    _NOW
    + """
local now = now_us()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""
)

#: KEYS[1] = p:idem:{key}; ARGV[1] = task id, ARGV[2] = ttl in ms or ''. Returns the holder.
#: (``SET NX GET`` would do on Redis >= 7 alone; the script also serves 6.2.)
CLAIM_KEY: Final[str] = """
local holder = redis.call('GET', KEYS[1])
if holder then return holder end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
else
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
return ARGV[1]
"""

#: KEYS[1] = p:idem:{key}; ARGV[1] = task id: deletes the key only if that task holds it.
RELEASE_KEY: Final[str] = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""

#: KEYS[1] = p:sched:row:{run_key}, KEYS[2] = p:sched:due; ARGV[1] = member, ARGV[2..] = field, value, ...
SAVE_SCHEDULED: Final[str] = """
local old = redis.call('HGET', KEYS[1], '_m')
if old then redis.call('ZREM', KEYS[2], old) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_m', ARGV[1], unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], 0, ARGV[1])
"""

#: KEYS[1] = p:sched:due; ARGV[1] = 'p:sched:row:', ARGV[2] = exclusive upper member, ARGV[3] = limit.
LOAD_DUE: Final[str] = """
local rows = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], '-', ARGV[2], 'BYLEX', 'LIMIT', 0, ARGV[3])) do
  rows[#rows + 1] = redis.call('HGETALL', ARGV[1] .. string.sub(m, 22))
end
return rows
"""

#: KEYS[1] = p:sched:row:{run_key}, KEYS[2] = p:sched:due: removes the run and returns its
#: HGETALL reply, or false when it is gone (so exactly one caller gets it).
TAKE_SCHEDULED: Final[str] = """
local m = redis.call('HGET', KEYS[1], '_m')
if not m then return false end
local row = redis.call('HGETALL', KEYS[1])
redis.call('ZREM', KEYS[2], m)
redis.call('DEL', KEYS[1])
return row
"""

#: Every script, by the name the backend calls it.
SCRIPTS: Final[dict[str, str]] = {
    "UPSERT": UPSERT,
    "DELETE": DELETE,
    "PURGE": PURGE,
    "CLAIM_ORPHANS": CLAIM_ORPHANS,
    "PAGE": PAGE,
    "HEARTBEAT": HEARTBEAT,
    "CLAIM_KEY": CLAIM_KEY,
    "RELEASE_KEY": RELEASE_KEY,
    "SAVE_SCHEDULED": SAVE_SCHEDULED,
    "LOAD_DUE": LOAD_DUE,
    "TAKE_SCHEDULED": TAKE_SCHEDULED,
}
