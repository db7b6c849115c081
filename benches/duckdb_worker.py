"""DuckDB worker of `cargo bench --bench governed`: the same protocol as the Rust workers.

Usage: duckdb_worker.py THREADS TABLES_JSON SQL
TABLES_JSON maps "schema.table" to a Parquet file; each becomes a view over read_parquet.
On stdin, `run` executes SQL and collects the whole result as an Arrow table, answering
`ok SECONDS ROWS -`; `quit` answers `rss KIB` (peak resident set size) and exits.
"""

import json
import resource
import sys
import time

import duckdb


def peak_rss_kib() -> int:
    # VmHWM belongs to this process image; getrusage's ru_maxrss on Linux also counts the
    # parent's resident set at fork, so it would report the driver's peak instead.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    threads, tables, sql = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    for name, path in tables.items():
        schema, table = name.split(".", 1)
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        quoted = path.replace("'", "''")
        con.execute(f'CREATE VIEW "{schema}"."{table}" AS SELECT * FROM read_parquet(\'{quoted}\')')
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            try:
                start = time.perf_counter()
                result = con.sql(sql).to_arrow_table()
                elapsed = time.perf_counter() - start
                print(f"ok {elapsed} {result.num_rows} -", flush=True)
            except Exception as e:  # reported to the driver, which marks the engine failed
                print("err " + str(e).replace("\n", " "), flush=True)
        elif command == "quit":
            print(f"rss {peak_rss_kib()}", flush=True)
            return


if __name__ == "__main__":
    main()
