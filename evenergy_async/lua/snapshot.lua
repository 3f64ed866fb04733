-- Returns {window, limit or '', need_probe, used, in flight, done, others, blocked_for,
-- waiting processes, waiting tasks, throttled, blocked_until, fail_seq}.
local stored = tonumber(redis.call('HGET', H, 'window'))
if stored ~= nil then window = stored end
expire()
purge_waiters()
local tasks = 0
for _, w in ipairs(redis.call('HVALS', WN)) do tasks = tasks + (tonumber(w) or 0) end
return {fmt(window), st.limit and string.format('%d', st.limit) or '', st.need_probe and 1 or 0,
        used(), redis.call('ZCARD', INF), redis.call('ZCARD', DONE), others_now(),
        fmt(math.max(0, st.blocked_until - now)), redis.call('ZCARD', WQ), tasks,
        st.throttled, fmt(st.blocked_until), st.fail_seq}
