#!/bin/bash
# redis-server under whatever LD_PRELOAD is set (heapkit-bench preload sets
# it), its clients without it: the dataset of the redis_server test (built
# and churned by tests/preload/redis_workload.lua), then redis-benchmark, 50
# clients, 100,000 requests of each of nine commands, 300-byte values.
set -e
d=$(mktemp -d)
w=$(cd "$(dirname "$0")/../.." && pwd)/tests/preload/redis_workload.lua
redis-server --port 0 --unixsocket $d/s --save "" --appendonly no --daemonize no --logfile $d/log &
pid=$!
c() { env -u LD_PRELOAD "$@"; }
until c redis-cli -s $d/s ping >/dev/null 2>&1; do sleep 0.02; done
c redis-cli -s $d/s EVAL "$(cat $w)" 0 build 42 3000 >/dev/null
c redis-cli -s $d/s EVAL "$(cat $w)" 0 churn 7 20000 3000 >/dev/null
c redis-benchmark -s $d/s -q -n 100000 -r 100000 -c 50 -P 16 -d 300 -t set,get,lpush,lpop,sadd,hset,zadd,lrange_100,mset >/dev/null
c redis-cli -s $d/s FLUSHALL ASYNC >/dev/null
c redis-cli -s $d/s shutdown nosave >/dev/null || true
wait $pid || true
rm -rf $d
