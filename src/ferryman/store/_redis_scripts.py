"""The Lua scripts behind the Redis backend: each check-and-change is one script, so it is atomic.

Redis runs a script to completion before any other command, so a check and the change that follows it
cannot be interleaved by another replica. Every script reads the time from `redis.call('TIME')`, never
from its caller, so replicas with skewed clocks agree; times are microseconds since the epoch, scores
and durations alike. The semantics copy `store/memory.py` step for step (its docstrings are the
reference), so the same contract tests pass against both.

Conventions shared by every script:
- Key names come from `KEYS` (built in Python by `redis_state._Keys`) or from a hold's record, which
  stores the names it was given; a script never invents a key name, so the naming lives in one place.
- Numbers travel as strings: `ARGV` values are Python `repr(float)`s, which `tonumber` reads back to the
  same double, and replies carry floats as `%.17g` strings, because Redis truncates a Lua number in a
  reply to an integer, and `redis.call` would format a number argument with only 14 digits. `fmt` writes
  a whole number below 1e16 with `%d`: the same text, at a third of the cost (most values are whole:
  times in microseconds, requests, tokens). A value read and left unchanged is written back as its text.
- Every key has a TTL at least as long as its data must live (each chunk states how long), so idle state
  vanishes by itself. A script renews a TTL only when what it changed asks for more than the key's TTL,
  read with PTTL, covers (scripts of an older release, sharing the Redis during a rolling deploy, set
  TTLs without any record of it), and then with slack (`expire`: a tenth of the time left, at most a
  minute), so the calls that follow skip it. Keys may outlive their data by that slack: units and holds
  go by their scores anyway, and a level whose period is over with nothing held counts as absent.
- A sorted-set member starts with its amount (`<amount>:<unique part>`), so the amount of an entry
  that slides out or a hold that lapses is known without another lookup.
- An admission reply is `{allowed (1/0), retry_after seconds, refused index (1-based, 0 = none),
  remaining...}`, the fields of `Admission` in order.
- Scripts are assembled from shared chunks: `_PRELUDE` (time, numbers, TTLs), `_JUDGE` (the all-or-nothing
  answer over windows and ceilings alike), `_SERIES` (windows), `_LEVELS` and `_HOLDS` (ceilings and
  holds), `_CLOSE` (settling or releasing a hold). ADMIT is WINDOWS' check and RESERVE run as one script
  from the same chunks, so an admitted hold is a reserved hold, key for key; FINISH is WINDOWS' add and
  CLOSE_HOLD's release as one, the rate-limit stage's exit; the logic each relies on exists once.
"""

from __future__ import annotations

_PRELUDE = """
local function fmt(x)  -- the exact text of a double ('%.17g'); for a whole number below 1e16 that is '%d'
  if x % 1 == 0 and x > -1e16 and x < 1e16 then return string.format('%d', x) end
  return string.format('%.17g', x)
end
local function amount_of(member) return tonumber(string.match(member, '^([^:]*)')) end
local function within(total, limit) return total <= limit + 1e-9 * math.max(1, math.abs(limit)) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now_text = fmt(now)  -- formatted once: it is several scores and bounds
local function ms_until(at)  -- a PEXPIRE argument: whole milliseconds, at least 1, never overflowing
  local ms = math.ceil((at - now) / 1000)
  if ms < 1 then ms = 1 elseif ms > 1e15 then ms = 1e15 end
  return string.format('%d', ms)
end
local function expire(key, at)  -- live until `at`, and a tenth of the way there (at most a minute) beyond
  redis.call('PEXPIRE', key, ms_until(at + math.min((at - now) / 10, 60000000)))
end
local function outlives(key, at)  -- whether `key`'s TTL, whoever set it, already reaches `at` (2 ms spare)
  local ttl = redis.call('PTTL', key)
  return ttl > 0 and now + (ttl - 2) * 1000 >= at
end
"""

_JUDGE = """
-- A bound is a window or a ceiling as an admission sees it: {limit, used, amount, wait = function(bound)},
-- `used` before this call, `amount` what it would add, `wait` its microseconds until `amount` fits.
local function judge(bounds)  -- all or nothing: the first refusing index (0 = none), the longest wait
  local refused, retry = 0, 0
  for i, b in ipairs(bounds) do
    if not within(b.used + b.amount, b.limit) then
      if refused == 0 then refused = i end
      retry = math.max(retry, b.wait(b))
    end
  end
  return refused, retry
end

local function admission(bounds, refused, retry)  -- the reply, with each bound's remaining in order
  local reply = {refused == 0 and 1 or 0, retry == 0 and '0' or fmt(retry / 1000000), refused}
  for i, b in ipairs(bounds) do
    local left = b.limit - b.used
    if refused == 0 then left = left - b.amount end
    reply[3 + i] = fmt(left)
  end
  return reply
end
"""

_SERIES = """
-- A window counts in a series: a hash (total of live units, span = its longest window, seq) and a sorted
-- set of units '<amount>:<seq>' scored by when they were counted. Windows sharing a key share one series,
-- kept for the longest of them, and add their (one) amount to it once.
local series, series_order = {}, {}

local function prune_series()  -- drop the units that slid out of each longest window, and their total
  for _, s in ipairs(series_order) do
    if s.span ~= nil then
      s.span = math.max(s.span, s.longest)
      local cutoff = fmt(now - s.span)
      local gone = redis.call('ZRANGEBYSCORE', s.entries, '-inf', cutoff)
      for _, member in ipairs(gone) do s.total = s.total - amount_of(member) end
      if #gone > 0 then redis.call('ZREMRANGEBYSCORE', s.entries, '-inf', cutoff) end
      s.live = redis.call('ZCARD', s.entries)
      if s.live == 0 then s.total = 0 end  -- drop the rounding residue of the adds and removals
    end
  end
end

local function used(w)  -- the running total, unless a shorter window shares the series
  local s = w.series
  if s.span == nil then return 0 end
  if w.seconds >= s.span then return s.total end
  local sum = 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', s.entries, '(' .. fmt(now - w.seconds), '+inf')) do
    sum = sum + amount_of(member)
  end
  return sum
end

local function window_wait(w)  -- until enough of the oldest units slide out for the amount to fit
  local s, u = w.series, w.used
  if s.span ~= nil then
    local rank = redis.call('ZCOUNT', s.entries, '-inf', fmt(now - w.seconds))
    while rank < s.live do  -- by rank, a page at a time: most refusals stop at the first page
      local page = redis.call('ZRANGE', s.entries, rank, rank + 127, 'WITHSCORES')
      for j = 1, #page, 2 do
        u = u - amount_of(page[j])
        if within(u + w.amount, w.limit) then return tonumber(page[j + 1]) + w.seconds - now end
      end
      rank = rank + 128
    end
  end
  return w.seconds  -- more than the limit itself: it never fits, try a window later
end

local function window(hash, entries, limit, seconds, amount)  -- a bound; its series loaded once per script
  local s = series[hash]
  if s == nil then
    s = {hash = hash, entries = entries, longest = seconds, amount = amount}
    local stored = redis.call('HMGET', hash, 'total', 'span', 'seq')
    s.total, s.span = tonumber(stored[1]) or 0, tonumber(stored[2])  -- span nil: no such series
    s.seq, s.stored_span, s.span_text = tonumber(stored[3]) or 0, s.span, stored[2]
    series[hash] = s
    series_order[#series_order + 1] = s
  elseif seconds > s.longest then
    s.longest = seconds
  end
  return {series = s, limit = limit, seconds = seconds, amount = amount, wait = window_wait}
end

local function record_series()  -- count each series' amount once, now
  for _, s in ipairs(series_order) do
    if s.amount ~= 0 then
      s.span, s.seq, s.added = math.max(s.span or 0, s.longest), s.seq + 1, true
      s.created = (s.live or 0) == 0  -- the entries set did not exist: it has no TTL yet
      redis.call('ZADD', s.entries, now_text, fmt(s.amount) .. ':' .. string.format('%d', s.seq))
      s.total, s.live = s.total + s.amount, (s.live or 0) + 1
    end
  end
end

-- A series lives as long as its newest unit counts in its longest window. Every script keeps both keys'
-- TTLs at least that long, and sets them together, the hash first, so the hash's TTL speaks for both:
-- a script that neither adds a unit nor lengthens the span needs no expiry at all, one that does renews
-- them (with slack) only when the hash's TTL falls short, or when either key is new (it has none yet).
local function save_series()
  for _, s in ipairs(series_order) do
    if s.span ~= nil then
      if s.live == 0 then
        redis.call('DEL', s.hash, s.entries)
      else
        local span = s.span_text
        if s.span ~= s.stored_span or not span then span = fmt(s.span) end
        redis.call('HSET', s.hash, 'total', fmt(s.total), 'span', span, 'seq', string.format('%d', s.seq))
        local made = s.stored_span == nil or s.created  -- a key made by this script has no TTL yet
        if made or s.added or s.span > s.stored_span then
          local newest = now  -- a unit added by this script is the newest; else ask the set
          if not s.added then newest = tonumber(redis.call('ZRANGE', s.entries, -1, -1, 'WITHSCORES')[2]) end
          if made or not outlives(s.hash, newest + s.span) then
            expire(s.hash, newest + s.span)
            expire(s.entries, newest + s.span)
          end
        end
      end
    end
  end
end
"""

WINDOWS = (
    _PRELUDE
    + _JUDGE
    + _SERIES
    + """
-- KEYS: per window, its series hash and its entries sorted set.
-- ARGV: mode ('check' | 'add' | 'count'), amount, then per window: limit, seconds (microseconds).
local mode, amount = ARGV[1], tonumber(ARGV[2])
if mode == 'add' and amount == 0 then return {1} end
local windows = {}
for i = 1, #KEYS / 2 do
  local limit, seconds = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  windows[i] = window(KEYS[2 * i - 1], KEYS[2 * i], limit, seconds, amount)
end
prune_series()
if mode == 'add' then
  record_series()
  save_series()
  return {1}
end
for _, w in ipairs(windows) do w.used = used(w) end
if mode == 'count' then
  save_series()
  return {fmt(windows[1].used)}
end
local refused, retry = judge(windows)
if refused == 0 then record_series() end
save_series()
return admission(windows, refused, retry)
"""
)

_LEVELS = """
-- A ceiling's level is a hash (committed, until, held, and kept = '1' once restored) and a sorted set of
-- its open holds (member '<amount>:<reservation id>', score = when the hold lapses). `exists` says the
-- hash was there: for a restorable ceiling an absent level is unknown, not zero (see RESERVE).
local levels, level_order = {}, {}
local function level(hash, holds)  -- loaded once per script, lapsed holds dropped, ended period zeroed
  local L = levels[hash]
  if L ~= nil then return L end
  local v = redis.call('HMGET', hash, 'committed', 'until', 'held', 'kept')
  L = {hash = hash, holds = holds, committed = tonumber(v[1]) or 0, ends = tonumber(v[2]) or 0, stored = v}
  L.held, L.exists, L.kept = tonumber(v[3]) or 0, v[2] ~= false, v[4] ~= false
  L.stored_committed, L.stored_ends = L.committed, L.ends
  local lapsed = redis.call('ZRANGEBYSCORE', holds, '-inf', now_text)
  for _, member in ipairs(lapsed) do L.held = L.held - amount_of(member) end
  if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', holds, '-inf', now_text) end
  L.count = redis.call('ZCARD', holds)
  if L.count == 0 then L.held = 0 end
  if not L.exists and L.count > 0 then  -- the hash was lost (evicted) but not its holds: sum them again
    L.held = 0
    for _, member in ipairs(redis.call('ZRANGE', holds, 0, -1)) do L.held = L.held + amount_of(member) end
  end
  if L.ends <= now then  -- the period ended: its spend has nothing to protect
    L.committed = 0
    if L.count == 0 then L.exists = false end  -- nor has the level, though its key may outlive it a while
  end
  levels[hash] = L
  level_order[#level_order + 1] = L
  return L
end

local function unhold(L, member, amount)
  if redis.call('ZREM', L.holds, member) == 1 then  -- 0: it lapsed, and level() already dropped it
    L.count, L.held = L.count - 1, L.held - amount
    if L.count == 0 then L.held = 0 end
  end
end

-- Every script keeps the holds set's TTL at least as long as its latest hold lasts, and the hash's at least
-- as long as that, as its period end (`until`), and as the holds set's own TTL (it is set after the set's,
-- never shorter). Only a new hold (`L.added`: the latest expiry this script added) or a later period end
-- asks for more: a key is renewed (with slack) when its TTL falls short, and given one when it is new.
local function save_levels()  -- nothing held, nothing spent, nothing known: the same as no level at all
  for _, L in ipairs(level_order) do
    if L.skip then  -- a restorable level found lost: left for RESTORE to create
    elseif L.count == 0 and L.committed == 0 and not (L.kept and L.ends > now) then
      redis.call('DEL', L.hash, L.holds)
    else
      local committed, ends = L.stored[1], L.stored[2]  -- unchanged values keep their stored text
      if L.committed ~= L.stored_committed or not committed then committed = fmt(L.committed) end
      if L.ends ~= L.stored_ends or not ends then ends = fmt(L.ends) end
      if L.kept then
        redis.call('HSET', L.hash, 'committed', committed, 'until', ends, 'held', fmt(L.held), 'kept', '1')
      else
        redis.call('HSET', L.hash, 'committed', committed, 'until', ends, 'held', fmt(L.held))
      end
      local keep, renew = math.max(L.ends, L.added or 0), L.stored[2] == false  -- no `until`: a new hash
      if renew and L.count > 0 and not L.holds_made then  -- the hash was lost, not its holds: ask the set
        keep = math.max(keep, tonumber(redis.call('ZRANGE', L.holds, -1, -1, 'WITHSCORES')[2]))
        expire(L.holds, keep)
      elseif L.added ~= nil and (L.holds_made or not outlives(L.holds, L.added)) then
        expire(L.holds, L.added)
        renew = true
      end
      -- the hash outlives its holds, so holds that last long enough vouch for it as far as they reach
      if renew or (L.ends > math.max(L.stored_ends, L.added or 0) and not outlives(L.hash, keep)) then
        expire(L.hash, keep)
      end
    end
  end
end
"""

_HOLDS = """
local function ceiling_wait(c)  -- until the holds in the way lapse, else until the period ends
  local L = c.level
  if L.count == 0 and L.committed == 0 then return c.ttl end  -- the amount alone is over the limit
  local lifetime = c.ttl
  if L.ends > now then lifetime = L.ends - now end
  if within(L.committed + c.amount, c.limit) then
    local held, rank = L.held, 0
    while rank < L.count do
      local page = redis.call('ZRANGE', L.holds, rank, rank + 127, 'WITHSCORES')
      for j = 1, #page, 2 do
        held = held - amount_of(page[j])
        if within(L.committed + held + c.amount, c.limit) then return tonumber(page[j + 1]) - now end
      end
      rank = rank + 128
    end
  end
  return lifetime
end

local function ceiling(hash, holds, limit, ttl, amount)  -- a bound: a ceiling to hold `amount` on
  local c = {level = level(hash, holds), limit = limit, ttl = ttl, amount = amount, wait = ceiling_wait}
  c.used = c.level.committed + c.level.held
  return c
end

local function take_hold(record, id, amount, ttl, ceilings)  -- hold on each ceiling, recorded for CLOSE_HOLD
  local expires, amount_text = now + ttl, fmt(amount)
  local expires_text, member = fmt(expires), amount_text .. ':' .. id
  local by_hash, distinct = {}, {}  -- ceilings sharing a key share one level, held for the longest period
  for _, c in ipairs(ceilings) do
    local slot = by_hash[c.level.hash]
    if slot == nil then
      slot = {level = c.level, period = now + c.ttl}
      by_hash[c.level.hash] = slot
      distinct[#distinct + 1] = slot
    else
      slot.period = math.max(slot.period, now + c.ttl)
    end
    slot.restorable = slot.restorable or c.restorable
  end
  local fields, forget = {'amount', amount_text, 'expires', expires_text, 'state', 'open'}, expires
  for n, slot in ipairs(distinct) do
    local L = slot.level
    redis.call('ZADD', L.holds, expires_text, member)
    if L.count == 0 then L.holds_made = true end  -- the set did not exist: it has no TTL yet
    L.added = math.max(L.added or 0, expires)
    L.count, L.held, L.ends = L.count + 1, L.held + amount, math.max(L.ends, slot.period)
    forget = math.max(forget, slot.period)
    for _, value in ipairs({'hash' .. n, L.hash, 'holds' .. n, L.holds, 'period' .. n, fmt(slot.period)}) do
      fields[#fields + 1] = value
    end
    if slot.restorable then fields[#fields + 1], fields[#fields + 2] = 'restorable' .. n, '1' end
  end
  fields[#fields + 1], fields[#fields + 2] = 'n', tostring(#distinct)
  redis.call('HSET', record, unpack(fields))
  -- an open hold is known until it lapses, then kept while a late settle could still commit
  redis.call('PEXPIRE', record, ms_until(forget))
end
"""

RESERVE = (
    _PRELUDE
    + _JUDGE
    + _LEVELS
    + _HOLDS
    + """
-- KEYS: the hold's record, then per ceiling its level hash and holds set.
-- ARGV: reservation id, amount, hold ttl (us), then per ceiling: limit, ttl (us), restorable ('1' / '0').
-- Reply: {-1} when the id is already known; {-2, index...} (1-based) naming the restorable ceilings whose
-- level does not exist, nothing held (the caller restores them from its record and asks again); else an
-- admission.
local record = KEYS[1]
if redis.call('EXISTS', record) == 1 then return {-1} end
local id, amount, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ceilings, unknown = {}, {-2}
for i = 1, (#KEYS - 1) / 2 do
  local limit, period = tonumber(ARGV[1 + 3 * i]), tonumber(ARGV[2 + 3 * i])
  ceilings[i] = ceiling(KEYS[2 * i], KEYS[2 * i + 1], limit, period, amount)
  ceilings[i].restorable = ARGV[3 + 3 * i] == '1'
  if ceilings[i].restorable and not ceilings[i].level.exists then
    ceilings[i].level.skip = true
    unknown[#unknown + 1] = i
  end
end
if #unknown > 1 then
  save_levels()  -- the known levels keep their lapsed holds' pruning
  return unknown
end
local refused, retry = judge(ceilings)
if refused == 0 then take_hold(record, id, amount, ttl, ceilings) end
save_levels()
return admission(ceilings, refused, retry)
"""
)

ADMIT = (
    _PRELUDE
    + _JUDGE
    + _SERIES
    + _LEVELS
    + _HOLDS
    + """
-- WINDOWS' check and RESERVE in one step: every window adds its own amount and the hold is taken, or
-- nothing changes. The hold is RESERVE's, key for key, so CLOSE_HOLD settles or releases it as any other.
-- KEYS: per window its series hash and entries set; then, with a hold, the hold's record and per ceiling
-- its level hash and holds set.
-- ARGV: the number of windows, per window: amount, limit, seconds (us); then, with a hold: reservation
-- id, amount, hold ttl (us), and per ceiling: limit, ttl (us).
-- Reply: {-1} when the hold's id is already known, else an admission over the windows, then the ceilings.
local n = tonumber(ARGV[1])
local record = KEYS[2 * n + 1]  -- nil without a hold
if record ~= nil and redis.call('EXISTS', record) == 1 then return {-1} end
local bounds = {}
for i = 1, n do
  local amount, limit, seconds = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  bounds[i] = window(KEYS[2 * i - 1], KEYS[2 * i], limit, seconds, amount)
end
prune_series()  -- once every window is known: a series is pruned for the longest window using it
for i = 1, n do bounds[i].used = used(bounds[i]) end
local hold = nil
if record ~= nil then
  local at = 3 * n + 2
  hold = {id = ARGV[at], amount = tonumber(ARGV[at + 1]), ttl = tonumber(ARGV[at + 2]), ceilings = {}}
  for j = 1, (#KEYS - 2 * n - 1) / 2 do
    local key, limit, period = 2 * n + 2 * j, tonumber(ARGV[at + 1 + 2 * j]), tonumber(ARGV[at + 2 + 2 * j])
    local c = ceiling(KEYS[key], KEYS[key + 1], limit, period, hold.amount)
    hold.ceilings[j] = c
    bounds[n + j] = c
  end
end
local refused, retry = judge(bounds)
if refused == 0 then
  record_series()
  if hold ~= nil then take_hold(record, hold.id, hold.amount, hold.ttl, hold.ceilings) end
end
save_series()
save_levels()
return admission(bounds, refused, retry)
"""
)

_CLOSE = """
-- Close a hold: commit `actual_arg` (a number as text; '' commits nothing: a release) to each of its
-- ceilings' levels and drop it from their open holds. The hold's record names the keys it was given.
-- Returns 1 and {level hash, committed after, ...} for the known levels when closed now; 0 and {} when
-- the hold was unknown or already closed.
local function close_hold(record, id, actual_arg)
  local fields = redis.call('HGETALL', record)
  local hold = {}
  for j = 1, #fields, 2 do hold[fields[j]] = fields[j + 1] end
  if hold.state == nil or hold.state == 'closed' then return 0, {} end
  local actual, expires = tonumber(actual_arg), tonumber(hold.expires)
  local after, forget = {}, expires
  local member = hold.amount .. ':' .. id
  for i = 1, tonumber(hold.n) do
    local L = level(hold['hash' .. i], hold['holds' .. i])
    local period = tonumber(hold['period' .. i])
    forget = math.max(forget, period)
    -- A period that has ended has nothing left to protect. A restorable level that was lost is left lost:
    -- it is rebuilt from the ledger, which has this spend, and recreating it would hide the rest.
    local lost = not L.exists and hold['restorable' .. i] ~= nil
    if lost then L.skip = true end
    if actual ~= nil and period > now and not lost then
      L.committed = L.committed + actual
      L.ends = math.max(L.ends, period)
    end
    unhold(L, member, tonumber(hold.amount))
    if not lost then
      after[#after + 1] = L.hash
      after[#after + 1] = fmt(L.committed)
    end
  end
  save_levels()
  if expires <= now then
    redis.call('DEL', record)  -- settled after it lapsed: no longer needed to refuse a second reserve
  else
    redis.call('HSET', record, 'state', 'closed')
    -- kept until it would have lapsed; its TTL is that already unless a period outlasted the hold
    if forget > expires then redis.call('PEXPIRE', record, ms_until(expires)) end
  end
  return 1, after
end
"""

CLOSE_HOLD = (
    _PRELUDE
    + _LEVELS
    + _CLOSE
    + """
-- KEYS: the hold's record. ARGV: reservation id, the actual cost to commit ('' to release).
-- Reply: {level hash, committed after, ...} of the hold's known levels when it was closed now, {} when
-- it was unknown or already closed.
local _, after = close_hold(KEYS[1], ARGV[1], ARGV[2])
return after
"""
)

FINISH = (
    _PRELUDE
    + _SERIES
    + _LEVELS
    + _CLOSE
    + """
-- The rate-limit stage's exit in one step: each window's correction (WINDOWS' add, one amount per
-- window) and the release of the hold ADMIT took (CLOSE_HOLD with nothing to commit).
-- KEYS: per window its series hash and entries set; then, with a hold to release, its record.
-- ARGV: the number of windows, per window: amount, seconds (us); then the reservation id, if any.
-- Reply: 1.
local n = tonumber(ARGV[1])
for i = 1, n do
  window(KEYS[2 * i - 1], KEYS[2 * i], 0, tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i]))
end
if n > 0 then
  prune_series()
  record_series()
  save_series()
end
local record = KEYS[2 * n + 1]
if record ~= nil then close_hold(record, ARGV[2 * n + 2], '') end
return 1
"""
)

LEVEL = (
    _PRELUDE
    + _LEVELS
    + """
-- KEYS: the level hash and holds set. Reply: {committed, held}.
local L = level(KEYS[1], KEYS[2])
save_levels()
return {fmt(L.committed), fmt(L.held)}
"""
)

RESTORE = (
    _PRELUDE
    + _LEVELS
    + """
-- KEYS: the level hash and holds set. ARGV: committed, ttl (us), if_absent ('1' / '0').
-- Holds are left as they are. Reply: 1 when the level was set, 0 when if_absent found one.
local L = level(KEYS[1], KEYS[2])
if ARGV[3] == '1' and L.exists then
  save_levels()
  return 0
end
L.committed, L.ends, L.kept = tonumber(ARGV[1]), now + tonumber(ARGV[2]), true
save_levels()
return 1
"""
)

LEDGER_APPEND = """
-- KEYS: the request's seen-marker, the ledger stream. ARGV: request id, entry JSON, marker ttl (ms).
-- Reply: 1 when appended, 0 for a request id already recorded.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then return 0 end
redis.call('XADD', KEYS[2], '*', 'request_id', ARGV[1], 'entry', ARGV[2])
return 1
"""

# The response cache's two commands as scripts, only so they take the EVALSHA fast path
# (`store/_evalsha.py`): a cache hit's one Redis call costs what a limiter's does, not redis-py's client
# layer (about half of a hit's Redis CPU).
CACHE_GET = """
-- KEYS: the entry. Reply: its bytes, or nil.
return redis.call('GET', KEYS[1])
"""

CACHE_SET = """
-- KEYS: the entry. ARGV: its bytes, ttl (ms).
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
