-- The redis_server test's dataset (allocators/shim/tests/preload.rs): ARGV[1]
-- seeds a generator, ARGV[2] keys of every type, small to 1.6 MB values.
-- The same arguments give the same dataset (DEBUG DIGEST) anywhere.
local s = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local function r(m)
  -- MINSTD: every product is exact in a double.
  s = (s * 48271) % 2147483647
  return math.floor(s / 256) % m
end
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
