-- The redis_server test's workload (allocators/shim/tests/preload/data_stores.rs), run
-- with EVAL. ARGV[1] 'build': ARGV[3] keys of every type, small to 1.6 MB
-- values; 'churn': ARGV[3] steps over ARGV[4] such keys: appends, trims,
-- deletes (UNLINK frees large collections on redis's lazy-free thread),
-- re-creations. ARGV[2] seeds the generator: the same arguments give the
-- same dataset (DEBUG DIGEST) anywhere.
local mode = ARGV[1]
local s = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local function r(m)
  -- MINSTD: every product is exact in a double.
  s = (s * 48271) % 2147483647
  return math.floor(s / 256) % m
end
if mode == 'build' then
  for i = 1, n do
    local k = 'k' .. i
    local t = r(8)
    local m = 1 + r(40)
    if r(10) == 0 then m = m * 20 end
    if t == 0 then
      redis.call('SET', k, string.rep(string.char(97 + r(26)), 1 + r(3000)))
    elseif t == 1 then
      for j = 1, m do redis.call('RPUSH', k, string.rep('v', r(200)) .. j) end
    elseif t == 2 then
      for j = 1, m do redis.call('HSET', k, 'f' .. j, string.rep('h', r(300))) end
    elseif t == 3 then
      for j = 1, m do redis.call('ZADD', k, r(100000), 'm' .. j .. string.rep('z', r(100))) end
    elseif t == 4 then
      for j = 1, m do redis.call('SADD', k, 's' .. r(100000)) end
    elseif t == 5 then
      for j = 1, m do redis.call('APPEND', k, string.rep('a', 1 + r(500))) end
    elseif t == 6 then
      if r(4) == 0 then
        redis.call('SET', k, string.rep('L', 100000 + r(1500000)))
      else
        redis.call('SET', k, string.rep('M', 4000 + r(100000)))
      end
    else
      for j = 1, m do redis.call('XADD', k, i .. '-' .. j, 'f', string.rep('x', r(100))) end
    end
  end
  return n
end
local keys = tonumber(ARGV[4])
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
