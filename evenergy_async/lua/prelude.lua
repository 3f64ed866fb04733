-- The window rules of evenergy_async._ratelimit.WindowState, over Redis keys: every script
-- of RedisRateLimiter is this prelude followed by one of acquire/record/release/leave/
-- snapshot.lua.  Each function names the WindowState method it mirrors; keep them in step
-- (tests/test_redis_limiter.py drives both with the same sequences and compares them).
--
-- KEYS: 1 hash, 2 inflight, 3 expiry, 4 done, 5 waitq, 6 waitdl, 7 waitn
-- ARGV: 1 window, 2 channel, 3 reservation_ttl, 4 this process's id, 5 now ('' for Redis
--       TIME; tests pass their own clock), then per script from 6.

-- Redis < 5 needs this to write after TIME; later versions always replicate effects.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local H, INF, EXP, DONE, WQ, WD, WN = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local window = tonumber(ARGV[1])
local channel = ARGV[2]
local res_ttl = tonumber(ARGV[3])
local me = ARGV[4]
local probe_every = window / 20
local clock = redis.call('TIME')
local now = tonumber(ARGV[5])
if now == nil then now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 end

-- _ratelimit.PAUSE_MIN, PAUSE_MAX_BACKOFF, MAX_LIMIT
local PAUSE_MIN, PAUSE_MAX_BACKOFF, MAX_LIMIT = 1.0, 60.0, 1000000000

local function fmt(x) return string.format('%.6f', x) end
local function opt(s) if s == nil or s == '' then return nil end return tonumber(s) end

local st = {}
do
  local v = redis.call('HMGET', H, 'limit', 'need_probe', 'blocked_until', 'others',
                       'others_until', 'observed', 'observed_at', 'throttled', 'probe',
                       'fresh_from', 'fail_seq')
  st.limit = tonumber(v[1])
  st.need_probe = v[2] ~= '0'  -- no fresh view of the server's window (a new budget, a 429)
  st.blocked_until = tonumber(v[3]) or 0
  st.others = tonumber(v[4]) or 0
  st.others_until = tonumber(v[5]) or 0
  st.observed = tonumber(v[6]) or -1
  st.observed_at = tonumber(v[7]) or -math.huge
  st.throttled = tonumber(v[8]) or 0  -- consecutive 429s
  st.probe = tonumber(v[9]) or -1  -- the request let through alone, while in flight
  st.fresh_from = tonumber(v[10]) or 0  -- tickets below were sent before the latest 429
  st.fail_seq = tonumber(v[11]) or 0  -- probes that got no response, ever
end

local function save()
  local f = {'need_probe', st.need_probe and '1' or '0', 'blocked_until', fmt(st.blocked_until),
             'others', st.others, 'others_until', fmt(st.others_until),
             'observed', string.format('%d', st.observed), 'window', ARGV[1],
             'throttled', st.throttled, 'probe', string.format('%d', st.probe),
             'fresh_from', string.format('%d', st.fresh_from), 'fail_seq', st.fail_seq}
  if st.observed_at > -math.huge then
    f[#f + 1] = 'observed_at'; f[#f + 1] = fmt(st.observed_at)
  end
  if st.limit ~= nil then f[#f + 1] = 'limit'; f[#f + 1] = string.format('%d', st.limit) end
  redis.call('HSET', H, unpack(f))
end

-- Abandoned budgets vanish: everything expires a window (plus a reservation's life, or
-- the rest of a 429 pause) after the last use.
local function touch()
  local keep = window + res_ttl
  if st.blocked_until - now > keep then keep = st.blocked_until - now end
  local ms = math.ceil(keep * 1000) + 1000
  redis.call('HSET', H, 'window', ARGV[1])
  for i = 1, 7 do redis.call('PEXPIRE', KEYS[i], ms) end
end

-- WindowState._expire.  Also: a reservation past its expiry (its worker died, or never
-- reported) counts as a request answered at its expiry.
local function expire()
  local due = redis.call('ZRANGEBYSCORE', EXP, '-inf', fmt(now), 'WITHSCORES')
  for i = 1, #due, 2 do
    redis.call('ZREM', INF, due[i])
    redis.call('ZADD', DONE, due[i + 1], due[i])
    if tonumber(due[i]) == st.probe then st.probe = -1 end
  end
  if #due > 0 then redis.call('ZREMRANGEBYSCORE', EXP, '-inf', fmt(now)) end
  redis.call('ZREMRANGEBYSCORE', DONE, '-inf', fmt(now - window))
end

-- WindowState.others
local function others_now()
  if st.others > 0 and now < st.others_until then return st.others end
  return 0
end

-- WindowState.own: the fleet's own requests the server may hold in its window.
local function own()
  return redis.call('ZCARD', INF) + redis.call('ZCARD', DONE)
end

-- WindowState.used
local function used()
  return own() + others_now()
end

-- WindowState._may_probe
local function may_probe()
  if st.need_probe then return true end
  return own() < st.limit and now >= st.observed_at + probe_every
end

-- WindowState.try_acquire, counted: how many requests may be sent now, and whether the one
-- that may is a probe (let through alone).
local function capacity()
  if now < st.blocked_until then return 0, false end
  if st.need_probe or (st.limit ~= nil and used() >= st.limit) then
    if redis.call('ZCARD', INF) > 0 or not may_probe() then return 0, false end
    return 1, true
  end
  if st.limit == nil then return math.huge, false end
  return st.limit - used(), false
end

local function first_score(key)
  local r = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if r[2] then return tonumber(r[2]) end
  return nil
end

local function score_at(key, i)  -- from 0
  return tonumber(redis.call('ZRANGE', key, i, i, 'WITHSCORES')[2])
end

-- WindowState.next_change, plus the expiry of reservations: a dead worker's request stops
-- being in flight then (which may allow a probe).
local function next_change()
  if now < st.blocked_until then return st.blocked_until end
  local first_exp = first_score(EXP)
  if st.need_probe or st.limit == nil then return first_exp end
  local c = first_exp
  local function consider(t)
    if c == nil or t < c then c = t end
  end
  local d = first_score(DONE)
  if d ~= nil then consider(d + window) end
  if others_now() > 0 then
    consider(st.others_until)
    if redis.call('ZCARD', INF) == 0 and own() < st.limit then
      consider(st.observed_at + probe_every)
    end
  end
  return c
end

-- WindowState._kth_expiry
local function kth_expiry(k)
  local oth = others_now()
  if oth > 0 then
    local before = redis.call('ZCOUNT', DONE, '-inf', '(' .. fmt(st.others_until - window))
    if k <= before then return score_at(DONE, k - 1) + window end
    if k <= before + oth then return st.others_until end
    k = k - oth
  end
  if k <= redis.call('ZCARD', DONE) then return score_at(DONE, k - 1) + window end
  return now + window
end

-- WindowState.estimate_wait
local function estimate_wait(ahead)
  local blocked = math.max(0, st.blocked_until - now)
  if st.limit == nil then return blocked end
  local turns = math.floor(ahead / st.limit)
  local index = ahead - turns * st.limit
  local rank = index + 1 + used() - st.limit
  local at = now
  if rank > 0 then at = kth_expiry(rank) end
  return math.max(blocked, at + turns * window - now)
end

-- WindowState._pause (Retry-After arrives cleaned: absent, or a finite number >= 0)
local function pause(retry_after)
  local wait = retry_after
  if wait == nil then
    local d = first_score(DONE)
    if d ~= nil then wait = d + window - now else wait = probe_every end
  end
  local backoff = PAUSE_MIN * 2 ^ math.min(math.max(st.throttled - 1, 0), 30)
  return math.min(math.max(wait, math.min(backoff, PAUSE_MAX_BACKOFF)), window)
end

-- The ticket the next grant will get (WindowState._next_ticket).
local function next_ticket()
  return (tonumber(redis.call('HGET', H, 'seq')) or -1) + 1
end

-- WindowState._finish: 1 if `tks` was in flight, 0 if not (already finished, or its
-- reservation expired: then it is in DONE since its expiry).
local function finish(tks)
  if tonumber(tks) == st.probe then st.probe = -1 end
  if redis.call('ZREM', INF, tks) == 1 then
    redis.call('ZREM', EXP, tks)
    return 1
  end
  return 0
end

local function notify()
  if redis.call('ZCARD', WQ) > 0 then redis.call('PUBLISH', channel, me) end
end

local function purge_waiters()
  local gone = redis.call('ZRANGEBYSCORE', WD, '-inf', fmt(now))
  for _, m in ipairs(gone) do
    redis.call('ZREM', WQ, m)
    redis.call('HDEL', WN, m)
    redis.call('ZREM', WD, m)
  end
  return #gone > 0
end

local function leave()
  local removed = redis.call('ZREM', WQ, me)
  redis.call('HDEL', WN, me)
  redis.call('ZREM', WD, me)
  return removed == 1
end

-- After a change: tell waiters if a token came free, or may come free sooner than they were
-- told (capacity and next change as they were before it), or if `always`.  1 if told.
local function wake_if_freed(cap0, nc0, always)
  local cap1, nc1 = capacity(), next_change()
  if always or cap1 > cap0 or (cap1 == 0 and nc1 ~= nil and (nc0 == nil or nc1 < nc0)) then
    notify()
    return 1
  end
  return 0
end
