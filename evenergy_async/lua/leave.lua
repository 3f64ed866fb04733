-- This process no longer waits: leave the fleet's queue.
local changed = purge_waiters()
if leave() then changed = true end
if changed then notify() end
touch()
return 0
