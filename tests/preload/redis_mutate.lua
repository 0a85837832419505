-- The redis_server test's churn over redis_dataset.lua's keys: ARGV[1] seeds,
-- ARGV[2] steps over ARGV[3] keys: appends, trims, deletes (UNLINK frees
-- large values in redis's lazy-free thread), re-creations.
local s = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local keys = tonumber(ARGV[3])
local function r(m)
  -- MINSTD: every product is exact in a double.
  s = (s * 48271) % 2147483647
  return math.floor(s / 256) % m
end
for step = 1, n do
  local k = 'k' .. (1 + r(keys))
  local ty = redis.call('TYPE', k)['ok']
  if ty == 'string' then
    if r(2) == 0 then redis.call('APPEND', k, string.rep('b', 1 + r(2000)))
    else redis.call('SETRANGE', k, r(5000), 'xyz') end
  elseif ty == 'list' then
    redis.call('LPUSH', k, 'p' .. step)
    redis.call('LTRIM', k, 0, r(60))
  elseif ty == 'hash' then
    redis.call('HDEL', k, 'f' .. (1 + r(40)))
    redis.call('HSET', k, 'g' .. step, string.rep('q', r(600)))
  elseif ty == 'zset' then
    redis.call('ZREMRANGEBYRANK', k, 0, r(5))
    redis.call('ZADD', k, step, 'n' .. step)
  elseif ty == 'set' then
    redis.call('SREM', k, 's' .. r(100000))
    redis.call('SADD', k, 't' .. step)
  elseif ty == 'stream' then
    redis.call('XTRIM', k, 'MAXLEN', r(20))
  else
    redis.call('SET', k, 'reborn' .. step)
  end
  if r(8) == 0 then redis.call('UNLINK', k) end
end
return redis.call('DBSIZE')
