-- sqlite_workload.sql: the sqlite3 row of `heapkit-bench preload`
-- (run as `sqlite3 :memory: < sqlite_workload.sql`): 200k rows, two
-- indexes, updates, deletes, sorts, aggregates, VACUUM, integrity check.
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, n INTEGER, pad TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<200000)
INSERT INTO t SELECT x, printf('key%08d', (x*7919)%200000), x%97, printf('%.*c', x%300, 'p') FROM c;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_n ON t(n, id);
UPDATE t SET pad = pad || 'q' WHERE n % 3 = 0;
DELETE FROM t WHERE id % 10 = 0;
SELECT 'count', count(*), sum(id) FROM t;
SELECT n, count(*), max(k) FROM t GROUP BY n ORDER BY n LIMIT 5;
SELECT group_concat(k, ',') FROM (SELECT k FROM t ORDER BY pad DESC, k LIMIT 20);
CREATE TABLE u AS SELECT k, upper(pad) AS p FROM t ORDER BY random();
SELECT count(DISTINCT p) FROM u;
VACUUM;
PRAGMA integrity_check;
