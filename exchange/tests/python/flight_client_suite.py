"""End-to-end checks of `exchange serve` with the real ADBC Flight SQL driver.

Run by exchange/tests/flight.rs, which starts the server and writes, for each showcase
query, the result the exchange returns in-process for the same principal (Arrow IPC files
listed in expected/index.json). Usage: flight_client_suite.py URI EXPECTED_DIR
Exits non-zero with a message on the first failed check.
"""

import json
import sys
import threading

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.ipc as ipc

PURPOSE = "adbc.flight.sql.rpc.call_header.x-exchange-purpose"


def connect(uri, user, password=None, purpose=None, token=None):
    kwargs = {}
    if token is not None:
        kwargs["adbc.flight.sql.authorization_header"] = "Bearer " + token
    else:
        kwargs["username"] = user
        kwargs["password"] = password
    if purpose is not None:
        kwargs[PURPOSE] = purpose
    return flightsql.connect(uri, db_kwargs=kwargs, autocommit=True)


def run(conn, sql):
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetch_arrow_table()
    finally:
        cur.close()


def expect_error(fn, *needles):
    try:
        fn()
    except Exception as e:  # the driver raises DB-API errors
        text = str(e)
        for n in needles:
            if n not in text:
                raise AssertionError(f"error {text!r} lacks {n!r}")
        return text
    raise AssertionError(f"expected an error containing {needles}")


def main():
    uri, expected_dir = sys.argv[1], sys.argv[2]
    index = json.load(open(f"{expected_dir}/index.json"))
    passwords = index["passwords"]

    # Showcase queries as each principal: the same Arrow table as in-process.
    for case in index["cases"]:
        conn = connect(uri, case["principal"], passwords[case["principal"]], case["purpose"])
        got = run(conn, case["sql"])
        with open(f"{expected_dir}/{case['file']}", "rb") as f:
            want = ipc.open_file(f).read_all()
        # Same columns and values; field nullability may differ on the wire.
        if got.column_names != want.column_names or got.to_pylist() != want.to_pylist():
            raise AssertionError(
                f"{case['principal']}: {case['sql']}\n got {got.to_pylist()[:3]}\n want {want.to_pylist()[:3]}"
            )
        conn.close()
    print(f"showcase: {len(index['cases'])} results equal the in-process results")

    # Errors, each with its reason.
    expect_error(
        lambda: run(connect(uri, "hrss_analyst", "wrong password", "new_employment_services"), "SELECT 1"),
        "UNAUTHENTICATED",
        "wrong user name or password",
    )
    expect_error(
        lambda: run(connect(uri, "hrss_analyst", passwords["hrss_analyst"]), "SELECT district FROM police.residents"),
        "no purpose declared",
    )
    expect_error(
        lambda: run(
            connect(uri, "hrss_analyst", passwords["hrss_analyst"], "new_employment_services"),
            "SELECT * FROM health.visits",
        ),
        "not found or not granted",
    )
    expect_error(
        lambda: run(
            connect(uri, "civil_analyst", passwords["civil_analyst"], "elderly_care_planning"),
            "SELECT person_id FROM police.residents",
        ),
        "join key",
    )
    expect_error(
        lambda: run(connect(uri, "market_trader", token="exk_" + "0" * 64, purpose="data_product"), "SELECT 1"),
        "unknown API token",
    )
    print("errors: wrong password, missing purpose, hidden table, refused query, bad token")

    # A service logs in with its API token.
    conn = connect(uri, "market_trader", token=index["token"], purpose="data_product")
    t = run(conn, "SELECT count(*) AS n FROM market.enterprises")
    assert t.num_rows == 1, t
    conn.close()

    # Catalog browsing shows the granted tables and visible columns only.
    conn = connect(uri, "hrss_analyst", passwords["hrss_analyst"], "new_employment_services")
    objects = conn.adbc_get_objects(depth="columns").read_all().to_pylist()
    seen = {}
    for catalog in objects:
        for schema in catalog["catalog_db_schemas"] or []:
            for table in schema["db_schema_tables"] or []:
                seen[f"{schema['db_schema_name']}.{table['table_name']}"] = [
                    c["column_name"] for c in table["table_columns"] or []
                ]
    assert set(seen) == {"police.residents", "hrss.employment"}, seen
    assert "address" not in seen["police.residents"], seen
    assert seen["police.residents"] == index["visible"]["police.residents"], seen
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "exchange", info
    assert conn.adbc_get_table_types() == ["TABLE"], conn.adbc_get_table_types()
    conn.close()
    print("catalog: granted tables and visible columns only")

    # Load: 16 clients x 20 queries, no errors.
    errors = []

    def client(i):
        try:
            c = connect(uri, "market_trader", token=index["token"], purpose="data_product")
            for j in range(20):
                t = run(c, f"SELECT industry, count(*) + {i * 100 + j} AS n FROM market.enterprises GROUP BY industry")
                assert t.num_rows > 0
            c.close()
        except Exception as e:  # collected and reported below
            errors.append(f"client {i}: {e}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError("\n".join(errors[:5]))
    print("load: 16 clients x 20 queries without an error")
    print("OK")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
