-- The hostile corpus of the leak suite (tests/leaks.rs): each query runs as every principal,
-- and no protected raw value may appear in any result or error. `{ID}`, `{PHONE}` and
-- `{PATH}` are replaced by a real resident id, phone and file path. One query per
-- `-- kind:` header, up to the next one.

-- kind: subquery
SELECT (SELECT max(person_id) FROM police.residents) AS x

-- kind: subquery
SELECT * FROM (SELECT person_id, name, phone, address FROM police.residents) t

-- kind: subquery
SELECT count(*) FROM police.residents WHERE person_id IN (SELECT person_id FROM police.residents WHERE name LIKE '张%')

-- kind: exists
SELECT count(*) FROM police.residents r WHERE EXISTS (SELECT 1 FROM health.visits v WHERE v.person_id = r.person_id AND v.cost > 1000)

-- kind: exists
SELECT r.district FROM police.residents r WHERE EXISTS (SELECT 1 FROM health.visits v WHERE v.diagnosis_code = 'I10')

-- kind: cte
WITH x AS (SELECT * FROM police.residents) SELECT * FROM x

-- kind: cte
WITH x AS (SELECT person_id AS p, phone AS q FROM police.residents) SELECT p, q FROM x

-- kind: cte
WITH x AS (SELECT person_id FROM police.residents), y AS (SELECT * FROM x) SELECT a.person_id FROM x a JOIN y b ON a.person_id = b.person_id

-- kind: union
SELECT person_id FROM police.residents UNION ALL SELECT name FROM police.residents

-- kind: union
SELECT name AS v FROM police.residents UNION SELECT person_id FROM health.visits

-- kind: union
SELECT phone FROM police.residents UNION SELECT caller_phone FROM hotline.tickets

-- kind: self_join
SELECT a.name, b.person_id FROM police.residents a JOIN police.residents b ON a.person_id = b.person_id

-- kind: self_join
SELECT a.person_id, b.phone FROM police.residents a, police.residents b WHERE a.person_id = b.person_id LIMIT 5

-- kind: window
SELECT person_id, row_number() OVER (ORDER BY person_id) FROM police.residents

-- kind: window
SELECT sum(cost) OVER (PARTITION BY person_id) AS s FROM health.visits

-- kind: window
SELECT first_value(cost) OVER (ORDER BY visit_id) AS f, lag(diagnosis_code) OVER (ORDER BY visit_id) AS d FROM health.visits

-- kind: string_fn
SELECT substr(person_id, 1, 18) AS s FROM police.residents

-- kind: string_fn
SELECT upper(person_id), length(phone), concat(phone, '') FROM police.residents

-- kind: string_fn
SELECT name || phone AS x, reverse(address) AS y FROM police.residents

-- kind: cast
SELECT CAST(person_id AS VARCHAR) AS c FROM police.residents

-- kind: cast
SELECT sum(CAST(diagnosis_code AS INT)) FROM health.visits

-- kind: cast
SELECT CAST(phone AS BIGINT) AS c FROM police.residents

-- kind: cast
SELECT avg(CAST(diagnosis_code AS DOUBLE)) FROM health.visits

-- kind: order_limit
SELECT name FROM police.residents ORDER BY person_id LIMIT 1

-- kind: order_limit
SELECT district FROM police.residents ORDER BY phone DESC LIMIT 1

-- kind: order_limit
SELECT hospital FROM health.visits ORDER BY cost DESC LIMIT 1

-- kind: literal_join_key
SELECT count(*) FROM police.residents WHERE person_id = '{ID}'

-- kind: literal_join_key
SELECT count(*) FROM police.residents WHERE person_id LIKE '1201%'

-- kind: literal_join_key
SELECT count(*) FROM police.residents WHERE phone IN ('{PHONE}')

-- kind: literal_join_key
SELECT district FROM police.residents WHERE person_id > '5'

-- kind: explain
EXPLAIN SELECT * FROM police.residents

-- kind: explain
EXPLAIN VERBOSE SELECT r.name FROM police.residents r JOIN health.visits v ON r.person_id = v.person_id

-- kind: explain
EXPLAIN ANALYZE SELECT count(*) FROM police.residents

-- kind: explain
EXPLAIN FORMAT INDENT SELECT * FROM health.visits WHERE cost > 10

-- kind: describe
DESCRIBE police.residents

-- kind: describe
SHOW TABLES

-- kind: describe
SHOW COLUMNS FROM police.residents

-- kind: describe
SELECT * FROM information_schema.tables

-- kind: describe
SELECT * FROM information_schema.columns

-- kind: describe
SHOW ALL

-- kind: path_as_table
SELECT * FROM '{PATH}'

-- kind: path_as_table
SELECT * FROM 'file://{PATH}'

-- kind: path_as_table
SELECT * FROM read_parquet('{PATH}')

-- kind: external_table
CREATE EXTERNAL TABLE leak STORED AS PARQUET LOCATION '{PATH}'

-- kind: external_table
CREATE TABLE leak AS SELECT * FROM police.residents

-- kind: external_table
CREATE VIEW v AS SELECT * FROM police.residents

-- kind: copy
COPY (SELECT * FROM police.residents) TO '/tmp/exchange-leak.parquet'

-- kind: copy
COPY police.residents TO '/tmp/exchange-leak.csv'

-- kind: set
SET datafusion.execution.collect_statistics = true

-- kind: set
SET datafusion.catalog.information_schema = true

-- kind: dml
INSERT INTO police.residents (person_id) VALUES ('x')

-- kind: dml
DELETE FROM police.residents

-- kind: dml
DROP TABLE police.residents

-- kind: quoting
SELECT "PERSON_ID", "Name" FROM "POLICE"."RESIDENTS"

-- kind: quoting
SELECT PERSON_ID, NAME, PHONE FROM POLICE.RESIDENTS

-- kind: quoting
SELECT * FROM exchange.police.residents

-- kind: quoting
SELECT * FROM datafusion.public.residents

-- kind: threshold
SELECT person_id, avg(cost) FROM health.visits GROUP BY person_id

-- kind: threshold
SELECT visit_id, sum(cost) AS s FROM health.visits GROUP BY visit_id

-- kind: threshold
SELECT r.name, r.birth_date, max(v.cost) AS m, min(v.diagnosis_code) AS d FROM health.visits v JOIN police.residents r ON v.person_id = r.person_id GROUP BY r.name, r.birth_date

-- kind: threshold
SELECT hospital, max(cost) FROM health.visits GROUP BY hospital HAVING count(*) = 1

-- kind: aggregate_abuse
SELECT array_agg(cost) AS a, string_agg(diagnosis_code, ',') AS b FROM health.visits

-- kind: aggregate_abuse
SELECT min(person_id), max(phone) FROM police.residents

-- kind: aggregate_abuse
SELECT count(DISTINCT person_id) FROM police.residents

-- kind: multi_statement
SELECT 1; SELECT * FROM police.residents

-- kind: table_function
SELECT * FROM generate_series(1, 3)

-- kind: statistics
SELECT count(*), min(person_id), max(birth_date) FROM police.residents
