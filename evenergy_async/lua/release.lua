-- WindowState.on_no_response.  ARGV 6 ticket, 7 sent (1/0), 8 failed (1/0; 0: abandoned
-- by its caller, which says nothing about the server).
-- Returns {woke, probe_failed, fail_seq}: woke 1 if waiters were told of a change;
-- probe_failed 1 if the request was the probe and may have been sent (then fail_seq grows:
-- every process fails the callers that were waiting behind it).
expire()
local cap0, nc0 = capacity(), next_change()
local tks = ARGV[6]
local sent = ARGV[7] == '1'
local was_probe = tonumber(tks) == st.probe
local failed = 0
if finish(tks) == 1 then
  if sent then redis.call('ZADD', DONE, fmt(now), tks) end
  if sent and was_probe and ARGV[8] ~= '0' then failed = 1 end
elseif redis.call('ZSCORE', DONE, tks) then
  -- its reservation had expired: it counts from now if it may have been sent, else not at all
  if sent then redis.call('ZADD', DONE, fmt(now), tks) else redis.call('ZREM', DONE, tks) end
end
if failed == 1 then st.fail_seq = st.fail_seq + 1 end
save()
touch()
return {wake_if_freed(cap0, nc0, failed == 1), failed, st.fail_seq}
