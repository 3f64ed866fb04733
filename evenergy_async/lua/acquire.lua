-- ARGV 6 want, 7 local waiters ahead (for the estimate), 8 max_wait or '', 9 poll,
-- 10 grace, 11 how many estimates to return for the local waiters left waiting.
-- Returns {granted, wait or '', estimate or '', queued (0/1), fail_seq, k, estimate x k,
-- ticket x granted}: estimate i (from 0) is that of the i-th local waiter left waiting.
expire()
local changed = purge_waiters()
local want = tonumber(ARGV[6])
local ahead_local = tonumber(ARGV[7])
local max_wait = opt(ARGV[8])
local poll = tonumber(ARGV[9])
local grace = tonumber(ARGV[10])
local nest = tonumber(ARGV[11])

-- Processes queued before this one, the tokens they want, and their earliest deadline.
local rank = redis.call('ZRANK', WQ, me)
local older_ids
if rank == false or rank == nil then
  rank = nil
  older_ids = redis.call('ZRANGE', WQ, 0, -1)
elseif rank > 0 then
  older_ids = redis.call('ZRANGE', WQ, 0, rank - 1)
else
  older_ids = {}
end
local older, older_deadline = 0, nil
for _, m in ipairs(older_ids) do
  older = older + (tonumber(redis.call('HGET', WN, m)) or 0)
  local dl = tonumber(redis.call('ZSCORE', WD, m))
  if dl ~= nil and (older_deadline == nil or dl < older_deadline) then older_deadline = dl end
end

local function reply(n, wait, est, queued, estimates, tickets)
  local out = {n, wait, est, queued, st.fail_seq, #estimates}
  for _, e in ipairs(estimates) do out[#out + 1] = fmt(e) end
  for _, t in ipairs(tickets) do out[#out + 1] = t end
  return out
end

if want == 0 then
  save()
  touch()
  return reply(0, '', fmt(estimate_wait(older + ahead_local)), rank and 1 or 0, {}, {})
end

local cap, is_probe = capacity()
local n = want
if cap - older < n then n = cap - older end
if n < 0 then n = 0 end

if n == 0 and max_wait ~= nil then
  local est = estimate_wait(older + ahead_local)
  if est > max_wait or max_wait <= 0 then
    if changed then notify() end
    save()
    touch()
    return reply(0, '', fmt(est), rank and 1 or 0, {}, {})
  end
end

local tickets = {}
if n > 0 then
  if redis.call('HEXISTS', H, 'seq') == 0 then
    -- tickets keep growing even if an idle budget expired and is started again
    redis.call('HSET', H, 'seq', clock[1] .. string.format('%06d', tonumber(clock[2])))
  end
  local expiry = fmt(now + res_ttl)
  for _ = 1, n do
    local tk = string.format('%d', redis.call('HINCRBY', H, 'seq', 1))
    redis.call('ZADD', INF, tk, tk)
    redis.call('ZADD', EXP, expiry, tk)
    tickets[#tickets + 1] = tk
  end
  if is_probe then st.probe = tonumber(tickets[1]) end
end

local wait_out, queued, estimates = '', 0, {}
local left = want - n
if left > 0 then
  local wait = nil
  if cap - n > 0 then
    -- tokens are free but older waiters come first: they publish when served
    if older_deadline ~= nil then wait = math.max(0, older_deadline - now) end
  else
    local nc = next_change()
    if nc ~= nil then wait = math.max(0, nc - now) end
  end
  local sleep = poll
  if wait ~= nil and wait < sleep then sleep = wait end
  if rank == nil or n > 0 then
    -- join the queue, or (served) go to its back
    redis.call('ZADD', WQ, fmt(now), me)
    if rank ~= nil then changed = true end
  end
  redis.call('HSET', WN, me, left)
  redis.call('ZADD', WD, fmt(now + sleep + grace), me)
  if wait ~= nil then wait_out = fmt(wait) end
  queued = 1
  for i = 0, math.min(nest, left) - 1 do estimates[#estimates + 1] = estimate_wait(older + i) end
elseif rank ~= nil then
  leave()
  changed = true
end
if changed then notify() end
save()
touch()
return reply(n, wait_out, '', queued, estimates, tickets)
