-- WindowState.on_response.  ARGV 6 ticket, 7 limit or '', 8 remaining or '',
-- 9 retry_after or '' (cleaned: a finite number >= 0), 10 status.
-- Returns 1 if waiters were told of a change (a token freed, or a 429), else 0.
expire()
local cap0, nc0 = capacity(), next_change()
local tks = ARGV[6]
local tk = tonumber(tks)
local limit = opt(ARGV[7])
local remaining = opt(ARGV[8])
local retry_after = opt(ARGV[9])
local status = tonumber(ARGV[10])

if finish(tks) == 1 then
  redis.call('ZADD', DONE, fmt(now), tks)
elseif redis.call('ZSCORE', DONE, tks) then
  redis.call('ZADD', DONE, fmt(now), tks)  -- answered after its reservation expired
end
-- absurd limits are ignored (0 would stop every request with no timer to end it)
if limit ~= nil and limit >= 1 and limit <= MAX_LIMIT then st.limit = math.floor(limit) end
-- answers to requests sent before the latest 429 was seen are old news about it
local fresh = tk >= st.fresh_from
local throttled = status == 429
if throttled then
  if fresh then
    st.throttled = st.throttled + 1
    st.fresh_from = next_ticket()
  end
  st.need_probe = true
  local until_ = now + pause(retry_after)
  if until_ > st.blocked_until then st.blocked_until = until_ end
else
  if fresh then
    st.need_probe = false
    st.throttled = 0
  end
  if st.limit ~= nil and remaining ~= nil and tk >= st.observed then
    st.observed = tk
    st.observed_at = now
    -- the server counted our requests sent before this one; later ones may not have arrived
    local later = redis.call('ZCOUNT', INF, '(' .. tks, '+inf')
    st.others = math.max(0, st.limit - remaining - (own() - later))
    st.others_until = now + window
  end
end
save()
touch()
-- a 429 may make waits longer than waiters allow: they look again
return wake_if_freed(cap0, nc0, throttled)
