"""A Flight SQL client of a running `exchange serve`, in Python with the ADBC driver.

    pip install adbc-driver-flightsql pyarrow
    exchange serve --listen 127.0.0.1:50051 &
    python examples/flight_client.py grpc://127.0.0.1:50051 hrss_analyst 'a long passphrase' \
        new_employment_services "SELECT district, count(*) FROM police.residents GROUP BY district"
"""

import sys

import adbc_driver_flightsql.dbapi as flightsql


def main() -> None:
    url, user, password, purpose, sql = sys.argv[1:6]
    conn = flightsql.connect(
        url,
        db_kwargs={
            "username": user,
            "password": password,
            # Every call states why it is asked.
            "adbc.flight.sql.rpc.call_header.x-exchange-purpose": purpose,
        },
    )
    cur = conn.cursor()
    cur.execute(sql)
    print(cur.fetch_arrow_table())
    conn.close()


if __name__ == "__main__":
    main()
