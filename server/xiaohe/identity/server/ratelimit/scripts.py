"""Lua building blocks shared by every Redis script of the server (run by `storage.redis`).

Each check-and-update is one script, so it is atomic: Redis runs a script to the
end before serving any other command. Scripts receive the current time from the
caller's injected clock (`now`, integer milliseconds), never from Redis, so a
fake clock drives every limit and expiry in tests. Key expiry (`PEXPIRE`) is only
garbage collection, set past the logical lifetime by `GC_GRACE_MS`.

redis-py reconnects by itself once the server is back, and `register_script`
re-loads a script that the server forgot (NOSCRIPT after a restart).
"""

from __future__ import annotations

# Keys outlive their logical expiry by this much (one hour), so that Redis never
# deletes anything a caller's clock still considers alive; it is not a security bound.
GC_GRACE_MS = 3_600_000

# Sliding windows. A window set is a sorted set with one member per event,
# scored by the event's time in ms. An event at time t counts while
# now - window < t, i.e. it drops out exactly `window` ms after it happened.
SLIDING_WINDOW_LUA = r"""
local function sw_ms(x)
  return string.format('%.0f', x)
end

-- Drop events that have left the longest window of this key.
local function sw_trim(key, now, longest)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', sw_ms(now - longest))
end

-- 0 if one more event fits `limit` per `window` ms, else the ms until it would.
local function sw_retry(key, now, limit, window)
  local low = '(' .. sw_ms(now - window)
  local count = redis.call('ZCOUNT', key, low, '+inf')
  if count < limit then
    return 0
  end
  -- The event whose expiry brings the count under the limit is the
  -- (count - limit + 1)-th oldest one inside the window.
  local nth = redis.call('ZRANGEBYSCORE', key, low, '+inf', 'WITHSCORES', 'LIMIT', count - limit, 1)
  if nth[2] == nil then
    return window
  end
  local retry = tonumber(nth[2]) + window - now
  if retry < 1 then
    retry = 1
  end
  return retry
end

-- Record one event and keep the set until its longest window has passed.
local function sw_record(key, now, member, longest, grace)
  redis.call('ZADD', key, sw_ms(now), member)
  redis.call('PEXPIRE', key, sw_ms(longest + grace))
end
"""

# Constant-time equality of two strings: every byte of `a` is visited, the
# differences are OR-ed together, and there is no early exit, so the time does
# not depend on where the first difference is. A length difference is folded in.
CONSTANT_TIME_EQUAL_LUA = r"""
local function ct_equal(a, b)
  local diff = 0
  if #a ~= #b then
    diff = 1
  end
  for i = 1, #a do
    diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i) or 0))
  end
  return diff == 0
end
"""


__all__ = [
    "CONSTANT_TIME_EQUAL_LUA",
    "GC_GRACE_MS",
    "SLIDING_WINDOW_LUA",
]
